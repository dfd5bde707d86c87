#include "engine/engine.h"

#include "engine/actions/actions.h"
#include "json_util.h"

namespace tvmlm {

namespace ffi = tvm::ffi;

Engine::Engine(const EngineConfig& config, DLDevice device, int64_t num_threads)
    : config_(config),
      state_(std::make_unique<Model>(config.model, device, num_threads), config) {}

void Engine::AddRequest(RequestPtr request, std::vector<RequestDelta>* out) {
  std::string error = request->error.empty() ? state_.Validate(*request) : request->error;
  Request* r = request.get();
  state_.waiting.push_back(std::move(request));
  if (!error.empty()) state_.Finish(r, FinishReason::kError, error);
  state_.CollectDeltas(out);
}

void Engine::AbortRequest(const std::string& request_id, std::vector<RequestDelta>* out) {
  // Every choice of the request, running or waiting.
  for (RequestPtr& r : state_.running) {
    if (r->id == request_id) state_.Finish(r.get(), FinishReason::kAbort);
  }
  for (RequestPtr& r : state_.waiting) {
    if (r->id == request_id) state_.Finish(r.get(), FinishReason::kAbort);
  }
  state_.CollectDeltas(out);
}

void Engine::FinishAll(FinishReason reason, const std::string& error,
                       std::vector<RequestDelta>* out) {
  for (RequestPtr& r : state_.running) state_.Finish(r.get(), reason, error);
  for (RequestPtr& r : state_.waiting) state_.Finish(r.get(), reason, error);
  state_.CollectDeltas(out);
}

void Engine::Reset(std::vector<RequestDelta>* out) {
  FinishAll(FinishReason::kAbort, "", out);
  state_.model().ClearKVCache();
  state_.ForgetPrefixCache();
  state_.metrics = EngineMetrics();
}

void Engine::Step(const DeltaSink& sink) {
  // The policy: admit what fits, one prefill chunk, one decode of everything past its prefill.
  // Deltas go out after each model call, so first tokens are not held back by the decode.
  std::vector<RequestDelta> deltas;
  AdmitAction(&state_);
  PrefillAction(&state_);
  state_.CollectDeltas(&deltas);
  if (!deltas.empty()) sink(std::move(deltas));

  deltas.clear();
  DecodeAction(&state_);
  state_.CollectDeltas(&deltas);
  if (!deltas.empty()) sink(std::move(deltas));
}

MetricsSnapshot Engine::Metrics() const {
  MetricsSnapshot m;
  m.counters = state_.metrics;
  m.running = static_cast<int64_t>(state_.running.size());
  m.waiting = static_cast<int64_t>(state_.waiting.size());
  for (const RequestPtr& r : state_.running) m.kv_tokens_used += r->num_computed;
  m.kv_tokens_total = state_.kv.capacity_tokens();
  m.kv_pages_used = state_.kv.used_pages();
  m.kv_pages_total = state_.kv.total_pages();
  m.prefix_cache = state_.prefix_cache_enabled;
  m.prefix_cache_sequences = static_cast<int64_t>(state_.prefix_cache.entries().size());
  m.prefix_cache_tokens = state_.prefix_cache.num_tokens();
  m.max_num_sequence = state_.max_num_sequence;
  m.prefill_chunk_size = state_.prefill_chunk_size;
  m.max_sequence_length = state_.max_sequence_length;
  return m;
}

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
