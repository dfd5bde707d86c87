#include "sampler/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "sampler/candidates.h"
#include "sampler/fast_exp.h"

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

// Weights of a whole row: exp((x - max) * inv_t), vectorized to the widest ISA the CPU has.
#if defined(__x86_64__) && defined(__ELF__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void ExpWeights(const float* __restrict x, float* __restrict w, int64_t n, float max, float inv_t) {
  for (int64_t i = 0; i < n; ++i) w[i] = FastExp((x[i] - max) * inv_t);
}

// Keep the smallest heaviest-first prefix of `ids` whose mass reaches `target` (the token that
// crosses it included); returns its mass.
double SortAndCut(const float* w, double target, std::vector<int32_t>* ids) {
  std::sort(ids->begin(), ids->end(), Heavier{w});
  double mass = 0.0;
  size_t keep = 0;
  while (keep < ids->size()) {
    mass += w[(*ids)[keep++]];
    if (mass >= target) break;
  }
  ids->resize(keep);
  return mass;
}

}  // namespace

const float* Sampler::Process(const float* logits, int64_t vocab, const SampleInput& in) {
  const GenerationConfig& c = *in.config;
  const bool penalties = c.has_penalties() && in.counts != nullptr;
  if (in.allowed == nullptr && c.logit_bias.empty() && !penalties) return logits;
  scratch_.assign(logits, logits + vocab);
  float* x = scratch_.data();
  if (in.allowed != nullptr) {
    const float kMasked = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < vocab; ++i) {
      if (((in.allowed[i >> 5] >> (i & 31)) & 1u) == 0) x[i] = kMasked;
    }
  }
  for (const auto& [token, bias] : c.logit_bias) {
    if (token < vocab) x[token] += bias;
  }
  if (!penalties) return x;
  if (c.repetition_penalty != 1.0) {
    const auto p = static_cast<float>(c.repetition_penalty);
    for (int32_t t : in.counts->seen()) {
      if (t >= 0 && t < vocab) x[t] = x[t] > 0.0f ? x[t] / p : x[t] * p;
    }
  }
  if (c.frequency_penalty != 0.0 || c.presence_penalty != 0.0) {
    for (const auto& [t, count] : in.counts->generated()) {
      if (t < 0 || t >= vocab) continue;
      x[t] -= static_cast<float>(count * c.frequency_penalty + c.presence_penalty);
    }
  }
  return x;
}

double Sampler::Weigh(const float* x, int64_t vocab, float max, float inv_t) {
  weight_.resize(static_cast<size_t>(vocab));
  const float* w = weight_.data();
  ExpWeights(x, weight_.data(), vocab, max, inv_t);
  // 16 running sums: one vector register's worth, so the loop vectorizes without reassociation.
  constexpr int kLanes = 16;
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= vocab; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += w[i + j];
  }
  double total = 0.0;
  for (; i < vocab; ++i) total += w[i];
  for (float lane : lanes) total += lane;
  return total;
}

void Sampler::FillLogprob(const float* x, int64_t vocab, int32_t token, float max, float inv_t,
                          double log_mass, bool all_kept, int64_t top, TokenLogprob* out) {
  auto logprob = [&](int32_t id) {
    return static_cast<float>(static_cast<double>((x[id] - max) * inv_t) - log_mass);
  };
  out->token = token;
  out->logprob = logprob(token);
  out->top_tokens.clear();
  out->top_logprobs.clear();
  if (top <= 0) return;
  const float* w = weight_.data();
  if (all_kept) {
    selector_.KeepTopSorted(w, vocab, top, &top_ids_);
  } else {
    top_ids_ = ids_;
    const auto n = std::min<size_t>(static_cast<size_t>(top), top_ids_.size());
    std::partial_sort(top_ids_.begin(), top_ids_.begin() + n, top_ids_.end(), Heavier{w});
    top_ids_.resize(n);
  }
  for (int32_t id : top_ids_) {
    out->top_tokens.push_back(id);
    out->top_logprobs.push_back(logprob(id));
  }
}

int32_t Sampler::Sample(const float* logits, int64_t vocab, const SampleInput& in,
                        TokenLogprob* logprob) {
  if (vocab <= 0) throw std::invalid_argument("sampler: empty logits");
  const GenerationConfig& c = *in.config;
  const int64_t top = c.top_logprobs;
  const float* x = Process(logits, vocab, in);
  const int32_t best = ArgMax(x, vocab);
  const float max = x[best];
  if (!(max > -std::numeric_limits<float>::infinity())) {
    // Every token masked (or NaN logits): nothing to draw from; the first is as good as any.
    if (logprob != nullptr) *logprob = TokenLogprob{best, 0.0f, {}, {}};
    return best;
  }
  if (c.temperature <= 0.0 || c.top_k == 1) {
    if (logprob != nullptr) {
      const double total = Weigh(x, vocab, max, 1.0f);
      FillLogprob(x, vocab, best, max, 1.0f, std::log(total), true, top, logprob);
    }
    return best;
  }

  const auto inv_t = static_cast<float>(1.0 / c.temperature);
  const double total = Weigh(x, vocab, max, inv_t);
  const float* w = weight_.data();
  const bool cut_k = c.top_k > 0 && c.top_k < vocab;
  const bool cut_p = c.top_p < 1.0;
  const bool cut_min = c.min_p > 0.0;
  const double u = in.rng->NextUniform();

  if (!cut_k && !cut_p && !cut_min) {
    // Plain sampling: no ordering needed, walk the vocabulary once.
    double target = u * total;
    int32_t chosen = best;
    for (int64_t i = 0; i < vocab; ++i) {
      if (w[i] == 0.0f) continue;
      chosen = static_cast<int32_t>(i);  // rounding may leave a sliver: the last one then
      target -= w[i];
      if (target < 0.0) break;
    }
    if (logprob != nullptr) FillLogprob(x, vocab, chosen, max, inv_t, std::log(total), true, top, logprob);
    return chosen;
  }

  // top_k keeps the k most likely; top_p then the smallest prefix (most likely first) holding
  // top_p of their mass; min_p then those with weight >= min_p (the most likely weighs 1). Each
  // is a prefix of the same order, so together they keep the shortest one.
  double reference = total;
  if (cut_k) {
    selector_.KeepTopK(w, vocab, c.top_k, &ids_);
    reference = Mass(w, ids_);
  }
  double mass = reference;
  const double p_target = c.top_p * reference;
  if (cut_min) {
    const auto threshold = static_cast<float>(c.min_p);
    if (cut_k) {
      auto light = [&](int32_t id) { return w[id] < threshold; };
      ids_.erase(std::remove_if(ids_.begin(), ids_.end(), light), ids_.end());
      mass = Mass(w, ids_);
    } else {
      mass = CollectAtLeast(w, vocab, threshold, &ids_);
    }
    if (cut_p && mass >= p_target) mass = SortAndCut(w, p_target, &ids_);
  } else if (cut_p) {
    mass = cut_k ? SortAndCut(w, p_target, &ids_) : selector_.KeepNucleus(w, vocab, p_target, &ids_);
  }

  double target = u * mass;
  int32_t chosen = ids_.back();  // rounding may leave a sliver of mass: the last one then
  for (int32_t id : ids_) {
    target -= w[id];
    if (target < 0.0) {
      chosen = id;
      break;
    }
  }
  if (logprob != nullptr) FillLogprob(x, vocab, chosen, max, inv_t, std::log(mass), false, top, logprob);
  return chosen;
}

TokenLogprob Sampler::PlainLogprob(const float* logits, int64_t vocab, int32_t token, int64_t top) {
  const float max = logits[ArgMax(logits, vocab)];
  const double total = Weigh(logits, vocab, max, 1.0f);
  TokenLogprob out;
  FillLogprob(logits, vocab, token, max, 1.0f, std::log(total), true, top, &out);
  return out;
}

int32_t SampleToken(const float* logits, int64_t vocab, const GenerationConfig& config,
                    SamplerRng* rng) {
  Sampler sampler;
  SampleInput in;
  in.config = &config;
  in.rng = rng;
  return sampler.Sample(logits, vocab, in, nullptr);
}

}  // namespace tvmlm
