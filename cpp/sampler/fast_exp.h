// exp() for float written so that loops over a vocabulary vectorize: std::exp is an opaque libm
// call per element (~10-20 ns each, ~0.7 ms for 49k logits), this is branch-free arithmetic.
// Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6 polynomial, 2^n through the
// exponent bits; about 1 ulp. Inputs below -87.3 give exactly 0 (so a masked -inf logit has weight
// 0, never a denormal or NaN); inputs are clamped at 88. GCC if-converts the selects (and so
// vectorizes the loop) only under -fno-trapping-math, which CMakeLists.txt sets for the sampler.
#ifndef TVMLM_SAMPLER_FAST_EXP_H_
#define TVMLM_SAMPLER_FAST_EXP_H_

#include <cstdint>
#include <cstring>

namespace tvmlm {

inline float BitsToFloat(int32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline int32_t FloatToBits(float f) {
  int32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float FastExp(float x) {
  constexpr float kLow = -87.3f;  // 2^-126 is the smallest normal float
  constexpr float kHigh = 88.0f;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float low = x < kLow ? kLow : x;
  const float clamped = low > kHigh ? kHigh : low;
  const float shifted = clamped * kLog2e + kRound;
  const int32_t n = FloatToBits(shifted) - FloatToBits(kRound);
  const float fn = shifted - kRound;
  // r = x - n ln2, with ln2 split in two so the product is exact.
  float r = clamped - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r2 + r + 1.0f;
  const float result = er * BitsToFloat((n + 127) << 23);
  return x < kLow ? 0.0f : result;
}

}  // namespace tvmlm

#endif  // TVMLM_SAMPLER_FAST_EXP_H_
