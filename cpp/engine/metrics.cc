#include "engine/metrics.h"

#include "json_util.h"

namespace tvmlm {

namespace ffi = tvm::ffi;

std::string MetricsJSON(const std::string& model, const MetricsSnapshot& snapshot) {
  const EngineMetrics& m = snapshot.counters;
  auto rate = [](double tokens, double seconds) { return seconds > 0 ? tokens / seconds : 0.0; };
  json::Object obj;
  auto set = [&obj](const char* key, ffi::Any value) { obj.Set(ffi::String(key), value); };
  set("loaded", true);
  set("model", ffi::String(model));
  set("requests_finished", m.requests_finished);
  set("requests_errored", m.requests_errored);
  set("running", snapshot.running);
  set("waiting", snapshot.waiting);
  set("prompt_tokens", m.prompt_tokens);
  set("generated_tokens", m.generated_tokens);
  set("prefill_tokens", m.prefill_tokens);
  set("prefill_seconds", m.prefill_seconds);
  set("prefill_tokens_per_second", rate(static_cast<double>(m.prefill_tokens), m.prefill_seconds));
  set("decode_tokens", m.decode_tokens);
  set("decode_seconds", m.decode_seconds);
  set("decode_tokens_per_second", rate(static_cast<double>(m.decode_tokens), m.decode_seconds));
  set("preemptions", m.preemptions);
  set("kv_tokens_used", snapshot.kv_tokens_used);
  set("kv_tokens_total", snapshot.kv_tokens_total);
  set("kv_pages_used", snapshot.kv_pages_used);
  set("kv_pages_total", snapshot.kv_pages_total);
  set("prefix_cache", snapshot.prefix_cache);
  set("prefix_cache_sequences", snapshot.prefix_cache_sequences);
  set("prefix_cache_tokens", snapshot.prefix_cache_tokens);
  set("prefix_hit_tokens", m.prefix_hit_tokens);
  set("prefix_takeovers", m.prefix_takeovers);
  // Of all KV tokens the engine needed, the share forked rather than computed.
  set("prefix_hit_rate", rate(static_cast<double>(m.prefix_hit_tokens),
                              static_cast<double>(m.prefix_hit_tokens + m.prefill_tokens)));
  set("time_to_first_token_mean", rate(m.ttft_sum, static_cast<double>(m.ttft_count)));
  set("time_to_first_token_max", m.ttft_max);
  set("inter_token_latency_mean", rate(m.itl_sum, static_cast<double>(m.itl_count)));
  set("inter_token_latency_max", m.itl_max);
  set("max_num_sequence", snapshot.max_num_sequence);
  set("prefill_chunk_size", snapshot.prefill_chunk_size);
  set("max_sequence_length", snapshot.max_sequence_length);
  return json::Stringify(obj);
}

}  // namespace tvmlm
