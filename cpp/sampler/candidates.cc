#include "sampler/candidates.h"

#include <algorithm>

#include "sampler/fast_exp.h"

namespace tvmlm {

namespace {

// The threshold pass keeps weights at least this fraction of the heaviest (which weighs 1): for
// the peaked distributions language models mostly produce, a few dozen tokens.
constexpr float kThreshold = 1e-4f;
// More candidates than this (a flat distribution) are narrowed by the histogram before ordering.
constexpr size_t kMaxToOrder = 4096;
// Histogram buckets: a non-negative float's bits >> 19 are its exponent and 4 mantissa bits, so
// bucket order is weight order and a bucket spans a factor of at most 2^(1/16).
constexpr int kBucketShift = 19;
constexpr uint32_t kBuckets = 1u << 12;

uint32_t BucketOf(float w) {
  return (static_cast<uint32_t>(FloatToBits(w)) >> kBucketShift) & (kBuckets - 1);
}

bool Reached(Until until, double amount, size_t count, double mass) {
  return until == Until::kCount ? static_cast<double>(count) >= amount : mass >= amount;
}

}  // namespace

double CollectAtLeast(const float* w, int64_t n, float t, std::vector<int32_t>* out) {
  constexpr int64_t kBlock = 64;
  out->clear();
  double mass = 0.0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    float block_max = 0.0f;
    for (int64_t i = start; i < end; ++i) block_max = w[i] > block_max ? w[i] : block_max;
    if (block_max < t) continue;
    for (int64_t i = start; i < end; ++i) {
      if (w[i] >= t) {
        out->push_back(static_cast<int32_t>(i));
        mass += w[i];
      }
    }
  }
  return mass;
}

double Mass(const float* w, const std::vector<int32_t>& ids) {
  double mass = 0.0;
  for (int32_t id : ids) mass += w[id];
  return mass;
}

size_t CandidateSelector::Collect(const float* w, int64_t n, Until until, double amount,
                                  std::vector<int32_t>* ids, double* certain_mass) {
  *certain_mass = 0.0;
  const double mass = CollectAtLeast(w, n, kThreshold, ids);
  if (Reached(until, amount, ids->size(), mass) && ids->size() <= kMaxToOrder) return 0;
  return CollectByHistogram(w, n, until, amount, ids, certain_mass);
}

size_t CandidateSelector::CollectByHistogram(const float* w, int64_t n, Until until, double amount,
                                             std::vector<int32_t>* ids, double* certain_mass) {
  // A flat distribution: find the bucket where the heaviest-first count or mass reaches the
  // goal. Heavier buckets are in for certain; only the boundary bucket's tokens need ordering.
  bucket_mass_.assign(kBuckets, 0.0);
  bucket_count_.assign(kBuckets, 0);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = BucketOf(w[i]);
    bucket_mass_[b] += w[i];
    bucket_count_[b] += 1;
  }
  uint32_t boundary = 0;
  size_t count = 0;
  double mass = 0.0;
  for (uint32_t b = kBuckets; b-- > 0;) {
    if (Reached(until, amount, count + bucket_count_[b], mass + bucket_mass_[b])) {
      boundary = b;
      break;
    }
    count += static_cast<size_t>(bucket_count_[b]);
    mass += bucket_mass_[b];
  }
  ids->clear();
  boundary_.clear();
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = BucketOf(w[i]);
    if (b > boundary) {
      ids->push_back(static_cast<int32_t>(i));
    } else if (b == boundary) {
      boundary_.push_back(static_cast<int32_t>(i));
    }
  }
  const size_t certain = ids->size();
  *certain_mass = Mass(w, *ids);
  ids->insert(ids->end(), boundary_.begin(), boundary_.end());
  return certain;
}

// The `count` heaviest of w[0, n), heaviest first (ties: lower id first), in one pass: a block
// whose (vectorized) maximum cannot beat the current count-th best is skipped, so after the first
// few blocks almost every block costs only its maximum.
static void StreamTopN(const float* w, int64_t n, size_t count, std::vector<int32_t>* ids) {
  constexpr int64_t kBlock = 64;
  ids->clear();
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = std::min(n, start + kBlock);
    if (ids->size() == count) {
      const float bar = w[ids->back()];
      float block_max = w[start];
      for (int64_t i = start; i < end; ++i) block_max = w[i] > block_max ? w[i] : block_max;
      if (!(block_max > bar)) continue;  // equal weights keep the earlier (lower) ids
    }
    for (int64_t i = start; i < end; ++i) {
      if (ids->size() == count && !(w[i] > w[ids->back()])) continue;
      auto at = std::upper_bound(ids->begin(), ids->end(), static_cast<int32_t>(i),
                                 [w](int32_t a, int32_t b) { return w[a] > w[b]; });
      ids->insert(at, static_cast<int32_t>(i));
      if (ids->size() > count) ids->pop_back();
    }
  }
}

// Up to this many, top-k and top-logprobs selections stream (StreamTopN) instead of collecting.
constexpr int64_t kStreamedTopN = 64;

void CandidateSelector::KeepTopK(const float* w, int64_t n, int64_t k, std::vector<int32_t>* ids) {
  if (k <= kStreamedTopN) {
    StreamTopN(w, n, static_cast<size_t>(std::min(k, n)), ids);
    return;
  }
  double certain_mass;
  const size_t certain = Collect(w, n, Until::kCount, static_cast<double>(k), ids, &certain_mass);
  const auto keep = static_cast<size_t>(k);
  if (ids->size() <= keep) return;
  std::nth_element(ids->begin() + static_cast<std::ptrdiff_t>(certain),
                   ids->begin() + static_cast<std::ptrdiff_t>(keep), ids->end(), Heavier{w});
  ids->resize(keep);
}

double CandidateSelector::KeepNucleus(const float* w, int64_t n, double target,
                                      std::vector<int32_t>* ids) {
  double mass;
  size_t keep = Collect(w, n, Until::kMass, target, ids, &mass);
  std::sort(ids->begin() + static_cast<std::ptrdiff_t>(keep), ids->end(), Heavier{w});
  while (keep < ids->size()) {
    mass += w[(*ids)[keep++]];
    if (mass >= target) break;
  }
  ids->resize(keep);
  return mass;
}

void CandidateSelector::KeepTopSorted(const float* w, int64_t n, int64_t count,
                                      std::vector<int32_t>* ids) {
  KeepTopK(w, n, std::min(count, n), ids);
  if (count > kStreamedTopN) std::sort(ids->begin(), ids->end(), Heavier{w});
}

}  // namespace tvmlm
