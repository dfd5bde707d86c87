#include "sampler/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace tvmlm {

SamplerRng::SamplerRng(std::optional<uint64_t> seed)
    : engine_(seed.has_value() ? *seed
                               : (static_cast<uint64_t>(std::random_device{}()) << 32) ^
                                     std::random_device{}()) {}

double SamplerRng::NextUniform() {
  // 53 random mantissa bits; std::uniform_real_distribution is implementation-defined.
  return static_cast<double>(engine_() >> 11) * 0x1.0p-53;
}

namespace {

// The first index of the largest logit. Runs once per sampled token over the whole vocabulary, on
// the step loop: std::max_element's compare-and-branch chain takes ~48 us for 49k logits; keeping
// 16 independent running maxima per block (a loop the compiler vectorizes), then scanning only the
// winning block for the first index holding its maximum, takes ~13 us.
int32_t ArgMax(const float* logits, int64_t vocab) {
  constexpr int kLanes = 16;
  constexpr int64_t kBlock = 512;
  float best = logits[0];
  int64_t best_block = 0;
  for (int64_t start = 0; start < vocab; start += kBlock) {
    const int64_t end = std::min(vocab, start + kBlock);
    float lanes[kLanes];
    std::fill(lanes, lanes + kLanes, logits[start]);
    int64_t i = start;
    for (; i + kLanes <= end; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) lanes[j] = logits[i + j] > lanes[j] ? logits[i + j] : lanes[j];
    }
    float block_max = *std::max_element(lanes, lanes + kLanes);
    for (; i < end; ++i) block_max = logits[i] > block_max ? logits[i] : block_max;
    if (block_max > best) {  // strictly greater: an equal maximum in a later block is not first
      best = block_max;
      best_block = start;
    }
  }
  const int64_t end = std::min(vocab, best_block + kBlock);
  for (int64_t i = best_block; i < end; ++i) {
    if (logits[i] == best) return static_cast<int32_t>(i);
  }
  return static_cast<int32_t>(best_block);  // only if the block's maximum is NaN-poisoned
}

}  // namespace

int32_t SampleToken(const float* logits, int64_t vocab, const GenerationConfig& config,
                    SamplerRng* rng) {
  if (vocab <= 0) throw std::invalid_argument("sampler: empty logits");
  if (config.temperature <= 0.0 || config.top_k == 1) return ArgMax(logits, vocab);

  // Unnormalised softmax(logits / T); subtracting the max keeps exp() finite.
  const double inv_t = 1.0 / config.temperature;
  const double max_logit = logits[ArgMax(logits, vocab)];
  std::vector<double> weight(static_cast<size_t>(vocab));
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    weight[i] = std::exp((static_cast<double>(logits[i]) - max_logit) * inv_t);
    total += weight[i];
  }

  const bool cut_k = config.top_k > 0 && config.top_k < vocab;
  const bool cut_p = config.top_p < 1.0;
  if (!cut_k && !cut_p) {
    // Plain sampling: no ordering needed, walk the vocabulary once.
    double target = rng->NextUniform() * total;
    int64_t last_nonzero = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      if (weight[i] == 0.0) continue;
      target -= weight[i];
      if (target < 0.0) return static_cast<int32_t>(i);
      last_nonzero = i;
    }
    return static_cast<int32_t>(last_nonzero);  // rounding left a sliver of mass
  }

  // Candidates best first. top_k keeps the k most likely; top_p then keeps the smallest prefix
  // holding top_p of the remaining mass (as transformers and vLLM apply them). Without top_k only a
  // prefix is needed: the 256 best usually hold top_p of the mass; otherwise sort everything.
  std::vector<int32_t> ids(static_cast<size_t>(vocab));
  std::iota(ids.begin(), ids.end(), 0);
  auto better = [&weight](int32_t a, int32_t b) {
    return weight[a] > weight[b] || (weight[a] == weight[b] && a < b);
  };
  size_t window = cut_k ? static_cast<size_t>(config.top_k) : std::min<size_t>(ids.size(), 256);
  size_t keep = 0;
  double kept_mass = 0.0;
  for (;;) {
    if (window == ids.size()) {
      std::sort(ids.begin(), ids.end(), better);  // heap-based partial_sort is slow for big k
    } else {
      std::partial_sort(ids.begin(), ids.begin() + window, ids.end(), better);
    }
    double reference = total;
    if (cut_k) {
      reference = 0.0;
      for (size_t i = 0; i < window; ++i) reference += weight[ids[i]];
    }
    keep = 0;
    kept_mass = 0.0;
    while (keep < window) {
      kept_mass += weight[ids[keep++]];
      if (cut_p && kept_mass >= config.top_p * reference) break;
    }
    if (cut_k || keep < window || window == ids.size()) break;
    window = ids.size();  // a flat distribution: one full sort beats widening step by step
  }

  double target = rng->NextUniform() * kept_mass;
  for (size_t i = 0; i < keep; ++i) {
    target -= weight[ids[i]];
    if (target < 0.0) return ids[i];
  }
  return ids[keep - 1];
}

}  // namespace tvmlm
