// The step loop's side of token constraints: mask a constrained request's logits row before it is
// sampled (actions/prefill.cc, actions/decode.cc call this; CommitToken reports the token back).
#ifndef TVMLM_CONSTRAINT_CONSTRAIN_H_
#define TVMLM_CONSTRAINT_CONSTRAIN_H_

#include <cstdint>
#include <vector>

#include "engine/engine_state.h"

namespace tvmlm {

/*!
 * \brief Set the logits of tokens `r`'s constraint forbids to -inf (no-op without a constraint).
 * False when `r` finished instead: its grammar terminated ("stop"), allows no token ("stop"), or
 * failed ("error"); the caller then does not sample it.
 */
bool ConstrainLogits(EngineState* s, Request* r, float* logits, int64_t vocab);

/*! \brief `logits[t] = -inf` for every token t whose bit is clear; false if no bit is set. */
bool ApplyBitmask(const std::vector<uint32_t>& bitmask, float* logits, int64_t vocab);

}  // namespace tvmlm

#endif  // TVMLM_CONSTRAINT_CONSTRAIN_H_
