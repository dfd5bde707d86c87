// The engine state's limits, resolved against the model library, and what they admit: request
// validation and the sequence slots and KV pages in use.
#include "engine/engine_state.h"

#include <algorithm>

namespace tvmlm {

EngineState::EngineState(std::unique_ptr<Model> model, const EngineConfig& config)
    : kv(model.get(), config.max_total_sequence_length, Model::kPageSize),
      prefix_cache(config.prefix_cache_max_sequences),
      model_(std::move(model)) {
  const ModelMetadata& meta = model_->metadata();
  max_num_sequence = config.max_num_sequence;
  prefix_cache_enabled = config.prefix_cache && config.prefix_cache_max_sequences > 0;
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
  for (int32_t id : request.config.stop_token_ids) {
    if (id >= vocab) {
      return "stop_token_ids holds " + std::to_string(id) + ", outside the vocabulary [0, " +
             std::to_string(vocab) + ")";
    }
  }
  for (const auto& [id, bias] : request.config.logit_bias) {
    if (id >= vocab) {
      return "logit_bias names token " + std::to_string(id) + ", outside the vocabulary [0, " +
             std::to_string(vocab) + ")";
    }
  }
  const int64_t context = model_->metadata().context_window_size;
  const auto prompt = static_cast<int64_t>(request.prompt.size());
  if (prompt >= max_sequence_length) {
    return "prompt has " + std::to_string(prompt) +
           " tokens, which leaves no room to generate: prompt + completion may not exceed " +
           std::to_string(max_sequence_length) + " tokens (context window " +
           std::to_string(context) + ", KV cache capacity " + std::to_string(kv.capacity_tokens()) +
           ")";
  }
  // The context window ends generation ("length"); the KV budget must hold the whole request,
  // or it could never finish even with every other request preempted.
  const int64_t n = request.config.n;
  const int64_t completion = std::min(request.config.max_tokens, context - prompt);
  if (prompt + completion > kv.capacity_tokens()) {
    return "prompt (" + std::to_string(prompt) + " tokens) + max_tokens (" +
           std::to_string(completion) + ") exceeds the KV cache capacity of " +
           std::to_string(kv.capacity_tokens()) +
           " tokens (max_total_sequence_length); lower max_tokens or raise it";
  }
  if (n > max_num_sequence) {
    return "n = " + std::to_string(n) + " exceeds max_num_sequence (" +
           std::to_string(max_num_sequence) + "): the choices are decoded together";
  }
  if (n > 1 && kv.PagesFor(prompt) + n * (kv.PagesFor(completion) + 1) > kv.total_pages()) {
    return "n = " + std::to_string(n) + " choices of up to " + std::to_string(completion) +
           " tokens after a " + std::to_string(prompt) + "-token prompt do not fit the KV cache (" +
           std::to_string(kv.capacity_tokens()) + " tokens); lower n or max_tokens";
  }
  return "";
}

int64_t EngineState::SlotsUsed() const {
  int64_t slots = 0;
  for (const RequestPtr& r : running) slots += r->slots();
  return slots;
}

int64_t EngineState::PrefillPages(const Request& r) const {
  int64_t pages = kv.GrowPages(r.num_computed, r.prefill_target);
  return pages + r.pending_forks * kv.ForkPages(r.prefill_target);
}

int64_t EngineState::FreePages() const {
  int64_t promised = 0;
  for (const RequestPtr& r : running) {
    if (r->prefilling()) promised += PrefillPages(*r);
  }
  return kv.free_pages() - promised;
}

}  // namespace tvmlm
