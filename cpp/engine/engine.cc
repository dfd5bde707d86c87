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

std::string Engine::MetricsJSON() const {
  const EngineMetrics& m = state_.metrics;
  auto rate = [](double tokens, double seconds) { return seconds > 0 ? tokens / seconds : 0.0; };
  json::Object obj;
  auto set = [&obj](const char* key, ffi::Any value) { obj.Set(ffi::String(key), value); };
  set("loaded", true);
  set("model", ffi::String(config_.model));
  set("requests_finished", m.requests_finished);
  set("requests_errored", m.requests_errored);
  set("running", static_cast<int64_t>(state_.running.size()));
  set("waiting", static_cast<int64_t>(state_.waiting.size()));
  set("prompt_tokens", m.prompt_tokens);
  set("generated_tokens", m.generated_tokens);
  set("prefill_tokens", m.prefill_tokens);
  set("prefill_seconds", m.prefill_seconds);
  set("prefill_tokens_per_second", rate(static_cast<double>(m.prefill_tokens), m.prefill_seconds));
  set("decode_tokens", m.decode_tokens);
  set("decode_seconds", m.decode_seconds);
  set("decode_tokens_per_second", rate(static_cast<double>(m.decode_tokens), m.decode_seconds));
  set("preemptions", m.preemptions);
  int64_t kv_tokens = 0;
  for (const RequestPtr& r : state_.running) kv_tokens += r->num_computed;
  set("kv_tokens_used", kv_tokens);
  set("kv_tokens_total", state_.kv.capacity_tokens());
  set("kv_pages_used", state_.kv.used_pages());
  set("kv_pages_total", state_.kv.total_pages());
  set("prefix_cache", state_.prefix_cache_enabled);
  set("prefix_cache_sequences", static_cast<int64_t>(state_.prefix_cache.entries().size()));
  set("prefix_cache_tokens", state_.prefix_cache.num_tokens());
  set("prefix_hit_tokens", m.prefix_hit_tokens);
  // Of all KV tokens the engine needed, the share forked rather than computed.
  set("prefix_hit_rate", rate(static_cast<double>(m.prefix_hit_tokens),
                              static_cast<double>(m.prefix_hit_tokens + m.prefill_tokens)));
  set("time_to_first_token_mean", rate(m.ttft_sum, static_cast<double>(m.ttft_count)));
  set("time_to_first_token_max", m.ttft_max);
  set("inter_token_latency_mean", rate(m.itl_sum, static_cast<double>(m.itl_count)));
  set("inter_token_latency_max", m.itl_max);
  set("max_num_sequence", state_.max_num_sequence);
  set("prefill_chunk_size", state_.prefill_chunk_size);
  set("max_sequence_length", state_.max_sequence_length);
  return json::Stringify(obj);
}

}  // namespace tvmlm
