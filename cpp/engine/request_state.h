// One choice of one request as the engine sees it, from arrival to its last delta. A request with
// n > 1 is one Request until its prompt is prefilled, then n (the others forked from it).
#ifndef TVMLM_ENGINE_REQUEST_STATE_H_
#define TVMLM_ENGINE_REQUEST_STATE_H_

#include <tvmlm/config.h>
#include <tvmlm/delta.h>

#include <tvmlm/token_constraint.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sampler/sampler.h"

namespace tvmlm {

enum class RequestStatus { kWaiting, kRunning, kFinished };

using Clock = std::chrono::steady_clock;

struct Request {
  Request(std::string id, std::vector<int32_t> prompt, GenerationConfig config)
      : id(std::move(id)), prompt(std::move(prompt)), config(std::move(config)),
        pending_forks(this->config.n - 1), rng(this->config.seed), arrival(Clock::now()) {
    if (this->config.has_penalties()) counts = TokenCounts(this->prompt);
  }

  std::string id;
  /*! \brief Choice index in [0, n). */
  int64_t index = 0;
  std::vector<int32_t> prompt;
  GenerationConfig config;
  /*! \brief Every sampled token, a final stop token included. */
  std::vector<int32_t> generated;
  /*! \brief Choices still to fork from this one when its prompt is prefilled (n - 1, then 0). */
  int64_t pending_forks;

  RequestStatus status = RequestStatus::kWaiting;
  /*! \brief KV cache sequence while admitted, else -1. */
  int64_t seq_id = -1;
  /*!
   * \brief Tokens of prompt+generated already in the KV cache. While decoding, this is all of
   * them but the last sampled token, which the next decode feeds.
   */
  int64_t num_computed = 0;
  /*! \brief Tokens that must be in the KV cache before the next sample (set at admission). */
  int64_t prefill_target = 0;
  /*! \brief Admitted at least once (preempted requests are re-admitted). */
  bool ever_admitted = false;
  /*! \brief Prompt tokens the last admission took from the prefix cache. */
  int64_t cached_prompt_tokens = 0;

  /*! \brief Tokens sampled since the last delta (stop tokens excluded). */
  std::vector<int32_t> unsent_tokens;
  /*! \brief With config.logprobs: one per unsent token. */
  std::vector<TokenLogprob> unsent_logprobs;
  /*! \brief With config.prompt_logprobs: prompt tokens' logprobs not yet in a delta. */
  std::vector<TokenLogprob> unsent_prompt_logprobs;
  /*! \brief Every prompt token's logprob has been computed (they are computed once). */
  bool prompt_logprobs_done = false;
  FinishReason finish_reason = FinishReason::kNotFinished;
  std::string error;
  SamplerRng rng;
  /*! \brief Limits the tokens this choice may sample (structured output); null = none. */
  std::shared_ptr<TokenConstraint> constraint;
  /*! \brief One constraint per choice, handed to the choices as they are forked (else empty). */
  std::vector<std::shared_ptr<TokenConstraint>> choice_constraints;
  /*! \brief Scratch for the constraint's bitmask, reused across steps. */
  std::vector<uint32_t> constraint_bitmask;
  /*! \brief Prompt and output tokens, kept only when the request has penalties. */
  TokenCounts counts;

  Clock::time_point arrival;
  Clock::time_point first_token_time;
  Clock::time_point last_token_time;

  int64_t total_len() const { return static_cast<int64_t>(prompt.size() + generated.size()); }
  int32_t token_at(int64_t i) const {
    auto p = static_cast<int64_t>(prompt.size());
    return i < p ? prompt[i] : generated[i - p];
  }
  bool finished() const { return status == RequestStatus::kFinished; }
  bool prefilling() const { return status == RequestStatus::kRunning && num_computed < prefill_target; }
  /*! \brief The next prefill must return logits for every token (echo's prompt logprobs). */
  bool needs_prompt_logits() const { return config.prompt_logprobs && !prompt_logprobs_done; }
  /*! \brief Sequence slots this request takes once its choices are forked. */
  int64_t slots() const { return 1 + pending_forks; }
};

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_REQUEST_STATE_H_
