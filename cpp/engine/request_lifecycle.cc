// A request's life in the KV cache: admitted (new, forked or taken-over sequence), its choices
// forked after prefill, each sampled token committed against the stop rules, preempted, finished
// (its sequence freed or kept in the prefix cache).
#include <algorithm>

#include "engine/engine_state.h"
#include "engine/trace.h"

namespace tvmlm {

namespace {

bool Contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

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
  TraceAdmitted(this, *request);
}

Request* EngineState::ForkChoice(Request* parent, int64_t index) {
  // Each choice has its own random stream: seeded requests give choice i the seed + i.
  GenerationConfig config = parent->config;
  if (config.seed.has_value()) config.seed = *config.seed + static_cast<uint64_t>(index);
  auto child = std::make_unique<Request>(parent->id, parent->prompt, config);
  child->index = index;
  child->counts = parent->counts;
  child->unsent_prompt_logprobs = parent->unsent_prompt_logprobs;
  child->prompt_logprobs_done = parent->prompt_logprobs_done;
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
  if (static_cast<size_t>(index) < parent->choice_constraints.size()) {
    child->constraint = parent->choice_constraints[static_cast<size_t>(index)];
  }
  TraceForked(this, *child);
  running.push_back(std::move(child));
  return running.back().get();
}

void EngineState::SampleAndCommit(Request* r, const float* logits, int64_t vocab) {
  SampleInput in;
  in.config = &r->config;
  in.rng = &r->rng;
  in.counts = &r->counts;
  TokenLogprob logprob;
  int32_t token = sampler.Sample(logits, vocab, in, r->config.logprobs ? &logprob : nullptr);
  CommitToken(r, token, r->config.logprobs ? &logprob : nullptr);
}

void EngineState::CommitToken(Request* request, int32_t token, TokenLogprob* logprob) {
  Clock::time_point now = Clock::now();
  if (request->generated.empty()) {
    request->first_token_time = now;
  }
  request->last_token_time = now;
  request->generated.push_back(token);
  metrics.generated_tokens += 1;
  const GenerationConfig& cfg = request->config;
  if (cfg.has_penalties()) request->counts.AddGenerated(token);
  bool is_eos = !cfg.ignore_eos && Contains(model_->metadata().eos_token_ids, token);
  if (is_eos || Contains(cfg.stop_token_ids, token)) {
    Finish(request, FinishReason::kStop);  // the stop token itself is not streamed
    return;
  }
  request->unsent_tokens.push_back(token);
  if (logprob != nullptr) request->unsent_logprobs.push_back(std::move(*logprob));
  if (static_cast<int64_t>(request->generated.size()) >= cfg.max_tokens ||
      request->total_len() >= max_sequence_length) {
    Finish(request, FinishReason::kLength);
  }
  if (request->constraint && !request->finished()) request->constraint->Accept(token);
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
  TraceFinished(this, *request);
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
  TracePreempted(this, *victim);
  waiting.push_front(std::move(victim));
}

}  // namespace tvmlm
