#include "engine/engine_state.h"

#include <algorithm>

namespace tvmlm {

namespace {

constexpr int64_t kPageSize = 16;  // matches the page size Model passes to the KV cache

bool Contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

EngineState::EngineState(std::unique_ptr<Model> model, const EngineConfig& config)
    : kv(config.max_total_sequence_length, kPageSize), model_(std::move(model)) {
  const ModelMetadata& meta = model_->metadata();
  max_num_sequence = config.max_num_sequence;
  // The library's memory plan is sized for its compiled chunk; a prefill may not exceed it.
  prefill_chunk_size = std::min({config.prefill_chunk_size, meta.prefill_chunk_size,
                                  config.max_total_sequence_length});
  max_sequence_length = std::min(meta.context_window_size, config.max_total_sequence_length);
  model_->CreateKVCache(max_num_sequence, config.max_total_sequence_length, prefill_chunk_size);
}

std::string EngineState::Validate(const Request& request) const {
  if (request.prompt.empty()) return "prompt is empty";
  const int64_t vocab = model_->metadata().vocab_size;
  for (size_t i = 0; i < request.prompt.size(); ++i) {
    int32_t id = request.prompt[i];
    if (id < 0 || id >= vocab) {
      return "prompt token id " + std::to_string(id) + " at position " + std::to_string(i) +
             " is outside the vocabulary [0, " + std::to_string(vocab) + ")";
    }
  }
  if (request.total_len() >= max_sequence_length) {
    return "prompt has " + std::to_string(request.prompt.size()) +
           " tokens, which leaves no room to generate: prompt + completion may not exceed " +
           std::to_string(max_sequence_length) + " tokens (context window " +
           std::to_string(model_->metadata().context_window_size) + ", KV cache capacity " +
           std::to_string(kv.capacity_tokens()) + ")";
  }
  return "";
}

void EngineState::Admit(Request* request) {
  int64_t seq_id = next_seq_id_++;
  model_->AddSequence(seq_id);
  request->seq_id = seq_id;
  request->num_computed = 0;
  request->status = RequestStatus::kRunning;
  kv.SetLength(seq_id, request->total_len());
  if (!request->ever_admitted) {
    request->ever_admitted = true;
    metrics.prompt_tokens += static_cast<int64_t>(request->prompt.size());
  }
}

void EngineState::CommitToken(Request* request, int32_t token) {
  request->generated.push_back(token);
  metrics.generated_tokens += 1;
  const GenerationConfig& cfg = request->config;
  bool is_eos = !cfg.ignore_eos && Contains(model_->metadata().eos_token_ids, token);
  if (is_eos || Contains(cfg.stop_token_ids, token)) {
    Finish(request, FinishReason::kStop);  // the stop token itself is not streamed
    return;
  }
  request->unsent_tokens.push_back(token);
  if (static_cast<int64_t>(request->generated.size()) >= cfg.max_tokens ||
      request->total_len() >= max_sequence_length) {
    Finish(request, FinishReason::kLength);
  }
}

void EngineState::FreeSequence(Request* request) {
  if (request->seq_id < 0) return;
  try {
    model_->RemoveSequence(request->seq_id);
  } catch (const std::exception&) {
    // The sequence may never have reached the cache (failed admission); nothing to free then.
  }
  kv.Release(request->seq_id);
  request->seq_id = -1;
  request->num_computed = 0;
}

void EngineState::Finish(Request* request, FinishReason reason, const std::string& error) {
  if (request->finished()) return;
  FreeSequence(request);
  request->status = RequestStatus::kFinished;
  request->finish_reason = reason;
  request->error = error;
  metrics.requests_finished += 1;
  if (reason == FinishReason::kError) metrics.requests_errored += 1;
}

void EngineState::PreemptNewest() {
  RequestPtr victim = std::move(running.back());
  running.pop_back();
  FreeSequence(victim.get());
  victim->status = RequestStatus::kWaiting;
  metrics.preemptions += 1;
  waiting.push_front(std::move(victim));
}

void EngineState::CollectDeltas(std::vector<RequestDelta>* out) {
  auto collect = [out](auto* queue) {
    for (RequestPtr& r : *queue) {
      if (r->unsent_tokens.empty() && !r->finished()) continue;
      RequestDelta d;
      d.request_id = r->id;
      d.token_ids = std::move(r->unsent_tokens);
      r->unsent_tokens.clear();
      d.finish_reason = r->finish_reason;
      d.error = r->error;
      d.prompt_tokens = static_cast<int64_t>(r->prompt.size());
      d.completion_tokens = static_cast<int64_t>(r->generated.size());
      out->push_back(std::move(d));
    }
    queue->erase(std::remove_if(queue->begin(), queue->end(),
                                [](const RequestPtr& r) { return r->finished(); }),
                 queue->end());
  };
  collect(&running);
  collect(&waiting);
}

}  // namespace tvmlm
