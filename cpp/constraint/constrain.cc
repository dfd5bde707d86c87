#include "constraint/constrain.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <string>

#include "engine/trace.h"

namespace tvmlm {

bool ApplyBitmask(const std::vector<uint32_t>& bitmask, float* logits, int64_t vocab) {
  constexpr float kBanned = -std::numeric_limits<float>::infinity();
  bool any = false;
  const int64_t words = std::min<int64_t>(static_cast<int64_t>(bitmask.size()), (vocab + 31) / 32);
  for (int64_t w = 0; w < words; ++w) {
    const uint32_t bits = bitmask[w];
    const int64_t base = w * 32;
    const int64_t end = std::min<int64_t>(32, vocab - base);
    if (bits == 0xFFFFFFFFu && end == 32) {  // the common case in free text: nothing to do
      any = true;
      continue;
    }
    for (int64_t j = 0; j < end; ++j) {
      if ((bits >> j) & 1u) {
        any = true;
      } else {
        logits[base + j] = kBanned;
      }
    }
  }
  for (int64_t t = words * 32; t < vocab; ++t) logits[t] = kBanned;  // a short mask bans the rest
  return any;
}

bool ConstrainLogits(EngineState* s, Request* r, float* logits, int64_t vocab) {
  if (!r->constraint) return true;
  const Clock::time_point start = Clock::now();
  TokenConstraint::Next next;
  try {
    next = r->constraint->NextMask(vocab, &r->constraint_bitmask);
  } catch (const std::exception& e) {
    s->Finish(r, FinishReason::kError, std::string("token constraint failed: ") + e.what());
    return false;
  }
  TraceMaskWait(s, *r, start, Clock::now());
  if (next == TokenConstraint::Next::kTerminated) {
    s->Finish(r, FinishReason::kStop);
    return false;
  }
  if (!ApplyBitmask(r->constraint_bitmask, logits, vocab)) {
    s->Finish(r, FinishReason::kStop);  // nothing may follow: the grammar is complete
    return false;
  }
  return true;
}

}  // namespace tvmlm
