// Turns one row of logits into one token: greedy, or temperature + top-k + top-p sampling.
#ifndef TVMLM_SAMPLER_SAMPLER_H_
#define TVMLM_SAMPLER_SAMPLER_H_

#include <tvmlm/config.h>

#include <cstdint>
#include <random>
#include <vector>

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

/*!
 * \brief Pick the next token from `logits[0, vocab)`.
 * temperature == 0 (or top_k == 1) is greedy argmax (first maximum, as torch.argmax); otherwise
 * softmax(logits / temperature), keep the top_k most likely (0 = all), keep the smallest prefix
 * whose mass reaches top_p, renormalise and draw one token with `rng`.
 */
int32_t SampleToken(const float* logits, int64_t vocab, const GenerationConfig& config,
                    SamplerRng* rng);

}  // namespace tvmlm

#endif  // TVMLM_SAMPLER_SAMPLER_H_
