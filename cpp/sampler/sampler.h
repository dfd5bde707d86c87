// Turns one row of logits into one token, per request: greedy, or sampling with the request's
// temperature, top-k, top-p and min-p, after its allowed-token mask, logit bias and penalties;
// optionally with the token's log-probability and the most likely alternatives.
#ifndef TVMLM_SAMPLER_SAMPLER_H_
#define TVMLM_SAMPLER_SAMPLER_H_

#include <tvmlm/config.h>
#include <tvmlm/delta.h>

#include <cstdint>
#include <optional>
#include <random>
#include <vector>

#include "sampler/candidates.h"
#include "sampler/token_counts.h"

namespace tvmlm {

/*! \brief Per-request random stream; seeded ones replay exactly. */
class SamplerRng {
 public:
  /*! \brief No seed: draw one from std::random_device. */
  explicit SamplerRng(std::optional<uint64_t> seed);
  /*! \brief Uniform double in [0, 1), same sequence on every platform for a given seed. */
  double NextUniform();

 private:
  std::mt19937_64 engine_;
};

/*! \brief What one draw reads besides the logits. Only `config` and `rng` are required. */
struct SampleInput {
  const GenerationConfig* config = nullptr;
  SamplerRng* rng = nullptr;
  /*! \brief The request's tokens so far; required when config->has_penalties(). */
  const TokenCounts* counts = nullptr;
  /*!
   * \brief Allowed tokens as a bitmask (xgrammar's layout: token t is allowed when bit t % 32 of
   * word t / 32 is set), applied before everything else; null = every token allowed.
   */
  const uint32_t* allowed = nullptr;
};

/*!
 * \brief The sampling pipeline, with scratch buffers reused across calls (one per thread).
 *
 * Order: mask (disallowed logits -> -inf), logit_bias (added), repetition penalty (HF, over prompt
 * and output tokens), frequency and presence penalties (OpenAI, over output tokens); then
 * temperature == 0 (or top_k == 1) takes the first maximum (as torch.argmax); otherwise
 * softmax(logits / temperature), keep the top_k most likely (0 = all), then the smallest prefix
 * holding top_p of that mass, then those at least min_p times as likely as the most likely one,
 * and draw one token in proportion to its probability with `rng`.
 *
 * Logprobs are log-softmax of the distribution the token was drawn from: the kept candidates
 * after temperature, renormalised (tokens that were cut do not appear). A greedy request reports
 * log-softmax of its processed logits at temperature 1.
 */
class Sampler {
 public:
  /*! \brief Pick the next token from `logits[0, vocab)`; fill `logprob` when it is not null. */
  int32_t Sample(const float* logits, int64_t vocab, const SampleInput& in, TokenLogprob* logprob);

  /*!
   * \brief log_softmax(logits)[token] and the `top` most likely tokens, of the unprocessed
   * logits (prompt logprobs).
   */
  TokenLogprob PlainLogprob(const float* logits, int64_t vocab, int32_t token, int64_t top);

 private:
  /*! \brief `logits`, or a scratch copy with the mask, bias and penalties applied. */
  const float* Process(const float* logits, int64_t vocab, const SampleInput& in);
  /*! \brief weight_[i] = exp((x[i] - max) * inv_t); returns the sum. */
  double Weigh(const float* x, int64_t vocab, float max, float inv_t);
  void FillLogprob(const float* x, int64_t vocab, int32_t token, float max, float inv_t,
                   double log_mass, bool all_kept, int64_t top, TokenLogprob* out);

  std::vector<float> scratch_;
  std::vector<float> weight_;
  std::vector<int32_t> ids_;
  std::vector<int32_t> top_ids_;
  CandidateSelector selector_;
};

/*!
 * \brief One draw with a fresh Sampler (tests and hosts outside the engine; the engine keeps a
 * Sampler per step loop).
 */
int32_t SampleToken(const float* logits, int64_t vocab, const GenerationConfig& config,
                    SamplerRng* rng);

}  // namespace tvmlm

#endif  // TVMLM_SAMPLER_SAMPLER_H_
