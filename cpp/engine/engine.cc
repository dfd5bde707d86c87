#include "engine/engine.h"

#include "engine/actions/actions.h"
#include "engine/trace.h"

namespace tvmlm {

Engine::Engine(const EngineConfig& config, DLDevice device, int64_t num_threads)
    : config_(config),
      state_(std::make_unique<Model>(config.model, device, num_threads), config) {}

void Engine::AddRequest(RequestPtr request, std::vector<RequestDelta>* out) {
  std::string error = request->error.empty() ? state_.Validate(*request) : request->error;
  Request* r = request.get();
  TraceQueued(&state_, *r);
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

}  // namespace tvmlm
