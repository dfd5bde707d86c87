#include "engine/engine_state.h"

#include <algorithm>

namespace tvmlm {

namespace {

constexpr int64_t kPageSize = 16;  // matches the page size Model passes to the KV cache

bool Contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Common prefix of the first `limit` tokens of `r` with `tokens`.
template <typename Tokens>
int64_t CommonPrefix(const Request& r, int64_t limit, const Tokens& tokens, int64_t size) {
  int64_t n = std::min(limit, size);
  int64_t i = 0;
  while (i < n && r.token_at(i) == tokens(i)) ++i;
  return i;
}

}  // namespace

EngineState::EngineState(std::unique_ptr<Model> model, const EngineConfig& config)
    : kv(model.get(), config.max_total_sequence_length, kPageSize),
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

bool EngineState::EvictCachedPrefix(int64_t keep) {
  int64_t seq_id = prefix_cache.EvictLRU(keep);
  if (seq_id < 0) return false;
  RemoveSequence(seq_id);
  return true;
}

PrefixMatch EngineState::FindPrefix(const Request& r) const {
  PrefixMatch best;
  if (!prefix_cache_enabled) return best;
  // At least the last token is recomputed: its logits give the next token.
  const int64_t limit = r.total_len() - 1;
  for (const PrefixCache::Entry& e : prefix_cache.entries()) {
    auto tok = [&e](int64_t i) { return e.tokens[i]; };
    int64_t len = CommonPrefix(r, limit, tok, static_cast<int64_t>(e.tokens.size()));
    if (len > best.length) {
      // An entry the request extends (the earlier turns of its chat) is taken over, not forked,
      // when at most a page of it is dropped: that much is what a fork would copy anyway.
      int64_t pop = static_cast<int64_t>(e.tokens.size()) - len;
      best = {e.seq_id, len, true, pop <= kv.page_size(), pop};
    }
  }
  for (const RequestPtr& other : running) {
    if (other->seq_id < 0) continue;
    const Request* o = other.get();
    auto tok = [o](int64_t i) { return o->token_at(i); };
    int64_t len = CommonPrefix(r, limit, tok, o->num_computed);
    if (len > best.length) best = {o->seq_id, len, false, false, 0};
  }
  // Below a page, a fork saves less than the page it copies.
  if (best.length < kv.page_size()) return PrefixMatch();
  return best;
}

void EngineState::Admit(Request* request, const PrefixMatch& match) {
  int64_t seq_id;
  if (match.take_over) {
    if (match.pop > 0) model_->PopN(match.seq_id, match.pop);
    prefix_cache.Release(match.seq_id);
    seq_id = match.seq_id;
    metrics.prefix_takeovers += 1;
  } else if (match.seq_id >= 0) {
    seq_id = next_seq_id_++;
    model_->ForkSequence(match.seq_id, seq_id, match.length);
    if (match.from_cache) prefix_cache.Touch(match.seq_id);
  } else {
    seq_id = next_seq_id_++;
    model_->AddSequence(seq_id);
  }
  request->seq_id = seq_id;
  request->num_computed = match.seq_id >= 0 ? match.length : 0;
  request->prefill_target = request->total_len();
  request->cached_prompt_tokens =
      std::min<int64_t>(request->num_computed, static_cast<int64_t>(request->prompt.size()));
  request->status = RequestStatus::kRunning;
  metrics.prefix_hit_tokens += request->num_computed;
  if (!request->ever_admitted) {
    request->ever_admitted = true;
    metrics.prompt_tokens += static_cast<int64_t>(request->prompt.size());
  }
}

Request* EngineState::ForkChoice(Request* parent, int64_t index) {
  // Each choice has its own random stream: seeded requests give choice i the seed + i.
  GenerationConfig config = parent->config;
  if (config.seed.has_value()) config.seed = *config.seed + static_cast<uint64_t>(index);
  auto child = std::make_unique<Request>(parent->id, parent->prompt, config);
  child->index = index;
  child->pending_forks = 0;
  child->generated = parent->generated;
  child->arrival = parent->arrival;
  child->ever_admitted = true;
  child->cached_prompt_tokens = parent->cached_prompt_tokens;
  child->seq_id = next_seq_id_++;
  model_->ForkSequence(parent->seq_id, child->seq_id, -1);
  child->num_computed = parent->num_computed;
  child->prefill_target = parent->prefill_target;
  child->status = RequestStatus::kRunning;
  running.push_back(std::move(child));
  return running.back().get();
}

void EngineState::CommitToken(Request* request, int32_t token) {
  Clock::time_point now = Clock::now();
  if (request->generated.empty()) {
    request->first_token_time = now;
  }
  request->last_token_time = now;
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

void EngineState::RemoveSequence(int64_t seq_id) {
  try {
    model_->RemoveSequence(seq_id);
  } catch (const std::exception&) {
    // The sequence may never have reached the cache (failed admission); nothing to free then.
  }
}

void EngineState::FreeSequence(Request* request, bool cacheable) {
  if (request->seq_id < 0) return;
  if (cacheable && prefix_cache_enabled && request->num_computed >= kv.page_size()) {
    std::vector<int32_t> tokens;
    tokens.reserve(static_cast<size_t>(request->num_computed));
    for (int64_t i = 0; i < request->num_computed; ++i) tokens.push_back(request->token_at(i));
    for (int64_t evicted : prefix_cache.Insert(request->seq_id, std::move(tokens))) {
      RemoveSequence(evicted);
    }
  } else {
    RemoveSequence(request->seq_id);
  }
  request->seq_id = -1;
  request->num_computed = 0;
  request->prefill_target = 0;
}

void EngineState::Finish(Request* request, FinishReason reason, const std::string& error) {
  if (request->finished()) return;
  // After an error the sequence's KV may be half written: never reuse it.
  FreeSequence(request, reason != FinishReason::kError);
  request->status = RequestStatus::kFinished;
  request->finish_reason = reason;
  request->error = error;
  // Choices never forked finish with their parent.
  const int64_t choices = 1 + request->pending_forks;
  metrics.requests_finished += choices;
  if (reason == FinishReason::kError) metrics.requests_errored += choices;
  if (!request->generated.empty()) {
    double ttft = Seconds(request->first_token_time - request->arrival);
    metrics.ttft_count += 1;
    metrics.ttft_sum += ttft;
    metrics.ttft_max = std::max(metrics.ttft_max, ttft);
  }
  if (request->generated.size() >= 2) {
    double itl = Seconds(request->last_token_time - request->first_token_time) /
                 static_cast<double>(request->generated.size() - 1);
    metrics.itl_count += 1;
    metrics.itl_sum += itl;
    metrics.itl_max = std::max(metrics.itl_max, itl);
  }
}

void EngineState::PreemptNewest() {
  RequestPtr victim = std::move(running.back());
  running.pop_back();
  FreeSequence(victim.get(), /*cacheable=*/false);  // freeing its pages is the point
  victim->status = RequestStatus::kWaiting;
  metrics.preemptions += 1;
  waiting.push_front(std::move(victim));
}

void EngineState::CollectDeltas(std::vector<RequestDelta>* out) {
  auto delta = [](const Request& r, int64_t index) {
    RequestDelta d;
    d.request_id = r.id;
    d.index = index;
    d.finish_reason = r.finish_reason;
    d.error = r.error;
    d.prompt_tokens = static_cast<int64_t>(r.prompt.size());
    return d;
  };
  auto collect = [&](auto* queue) {
    for (RequestPtr& r : *queue) {
      if (r->unsent_tokens.empty() && !r->finished()) continue;
      RequestDelta d = delta(*r, r->index);
      d.token_ids = std::move(r->unsent_tokens);
      r->unsent_tokens.clear();
      d.completion_tokens = static_cast<int64_t>(r->generated.size());
      d.cached_prompt_tokens = r->cached_prompt_tokens;
      if (r->finished()) {
        if (!r->generated.empty()) {
          d.time_to_first_token = Seconds(r->first_token_time - r->arrival);
        }
        if (r->generated.size() >= 2) {
          d.inter_token_latency = Seconds(r->last_token_time - r->first_token_time) /
                                  static_cast<double>(r->generated.size() - 1);
        }
      }
      out->push_back(std::move(d));
      if (r->finished()) {
        // Choices that were never forked (the request ended before its prefill did).
        for (int64_t i = 1; i <= r->pending_forks; ++i) out->push_back(delta(*r, r->index + i));
      }
    }
    queue->erase(std::remove_if(queue->begin(), queue->end(),
                                [](const RequestPtr& r) { return r->finished(); }),
                 queue->end());
  };
  collect(&running);
  collect(&waiting);
}

}  // namespace tvmlm
