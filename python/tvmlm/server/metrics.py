"""Prometheus metrics of a server (`GET /metrics`), in a registry of its own.

Per-request histograms are observed by the app when a request ends; the engine's gauges and
counters (queues, KV pages, prefix cache, preemptions, tokens) are read from `engine.metrics()`
(docs/contracts.md section 2) at scrape time, so nothing is counted twice.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..errors import TvmlmError

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)

# engine.metrics() key -> (metric name, help, kind)
_ENGINE_METRICS = (
    ("running", "tvmlm_requests_running", "requests being prefilled or decoded", "gauge"),
    ("waiting", "tvmlm_requests_waiting", "requests queued for admission", "gauge"),
    ("kv_pages_used", "tvmlm_kv_pages_used", "KV cache pages held (cached prefixes included)", "gauge"),
    ("kv_pages_total", "tvmlm_kv_pages_total", "KV cache pages in all", "gauge"),
    ("prefix_cache_sequences", "tvmlm_prefix_cache_sequences", "finished sequences kept as prefixes", "gauge"),
    ("decode_tokens_per_second", "tvmlm_decode_tokens_per_second", "decode throughput while decoding", "gauge"),
    ("prefill_tokens_per_second", "tvmlm_prefill_tokens_per_second", "prefill throughput while prefilling", "gauge"),
    ("prefix_hit_tokens", "tvmlm_prefix_cache_hit_tokens", "prompt tokens taken from the prefix cache", "counter"),
    ("preemptions", "tvmlm_preemptions", "requests preempted for KV pages", "counter"),
    ("prompt_tokens", "tvmlm_prompt_tokens", "prompt tokens of admitted requests", "counter"),
    ("generated_tokens", "tvmlm_generated_tokens", "tokens generated (rate() = tokens/s)", "counter"),
    ("requests_finished", "tvmlm_engine_requests_finished", "requests the core finished", "counter"),
)


class _EngineCollector:
    """Reads engine.metrics() at each scrape."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine

    def collect(self):
        try:
            m = self._engine.metrics()
        except TvmlmError:  # terminated: nothing to report
            return
        for key, name, help_text, kind in _ENGINE_METRICS:
            if key not in m:
                continue
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(name, help_text, value=float(m[key]))


class ServerMetrics:
    """The histograms and counters of one server app, plus its engine's numbers."""

    def __init__(self, engine: Any) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("tvmlm_time_to_first_token_seconds", "time from request to its first token",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("tvmlm_inter_token_latency_seconds",
                             "gap between later tokens (each token observed at its request's mean gap)",
                             buckets=_TOKEN_GAP_BUCKETS, registry=r)
        self.duration = Histogram("tvmlm_request_duration_seconds", "time from request to its response's end",
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter("tvmlm_http_requests", "generation requests by outcome", ["status"], registry=r)
        self.completion_tokens = Counter("tvmlm_completion_tokens", "tokens returned to clients", registry=r)
        r.register(_EngineCollector(engine))

    def observe(self, status: str, seconds: float, completion_tokens: int,
                ttft: float | None, itl: float | None) -> None:
        self.requests.labels(status=status).inc()
        self.duration.observe(seconds)
        self.completion_tokens.inc(completion_tokens)
        if ttft is not None:
            self.ttft.observe(ttft)
        if itl is not None:
            for _ in range(max(completion_tokens - 1, 0)):
                self.itl.observe(itl)

    def render(self) -> bytes:
        return generate_latest(self.registry)
