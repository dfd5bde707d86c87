// What the engine streams back for each request: one delta per choice per step.
#ifndef TVMLM_DELTA_H_
#define TVMLM_DELTA_H_

#include <tvmlm/export.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tvmlm {

enum class FinishReason { kNotFinished, kStop, kLength, kAbort, kError };

/*! \brief "stop", "length", "abort", "error"; "" while not finished. */
TVMLM_API const char* FinishReasonName(FinishReason reason);

/*!
 * \brief The log-probability of one token under the distribution it was drawn from (prompt
 * tokens: the model's plain softmax), and the most likely alternatives, best first.
 */
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<int32_t> top_tokens;
  std::vector<float> top_logprobs;
};

/*!
 * \brief New output of one request since its previous delta. The last delta of a request has
 * finish_reason != kNotFinished; none follows it.
 */
struct RequestDelta {
  std::string request_id;
  /*! \brief Choice index in [0, n); every choice gets its own final delta. */
  int64_t index = 0;
  /*! \brief New tokens. A token that matched eos / stop_token_ids is not included. */
  std::vector<int32_t> token_ids;
  /*! \brief With GenerationConfig::logprobs: one entry per token of token_ids, else empty. */
  std::vector<TokenLogprob> logprobs;
  /*!
   * \brief With GenerationConfig::prompt_logprobs, in each choice's first delta: one entry per
   * prompt token after the first. Empty otherwise.
   */
  std::vector<TokenLogprob> prompt_logprobs;
  FinishReason finish_reason = FinishReason::kNotFinished;
  /*! \brief Message when finish_reason == kError, else empty. */
  std::string error;
  int64_t prompt_tokens = 0;
  /*! \brief Tokens generated so far, including a stopping token. */
  int64_t completion_tokens = 0;
  /*! \brief Prompt tokens whose KV came from the prefix cache (last admission). */
  int64_t cached_prompt_tokens = 0;
  // Set on the final delta only:
  /*! \brief Seconds from add_request to the first sampled token (0 if none). */
  double time_to_first_token = 0.0;
  /*! \brief Mean seconds between later tokens (0 with fewer than two tokens). */
  double inter_token_latency = 0.0;
};

}  // namespace tvmlm

#endif  // TVMLM_DELTA_H_
