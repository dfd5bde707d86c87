// Scheduling actions: each is one phase of an engine step over the shared EngineState (as MLC's
// engine_actions, one per file). The policy that runs them is Engine::Step:
//   admit -> one prefill chunk -> one decode of every request past its prefill.
// One chunk per step keeps decode steps coming while a long prompt is prefilled.
#ifndef TVMLM_ENGINE_ACTIONS_ACTIONS_H_
#define TVMLM_ENGINE_ACTIONS_ACTIONS_H_

#include "engine/engine_state.h"

namespace tvmlm {

/*!
 * \brief Move waiting requests (FIFO) into the running batch while sequence slots and KV pages
 * allow, starting each from the longest cached or running prefix of its tokens.
 */
void AdmitAction(EngineState* state);

/*!
 * \brief Run one batch_prefill of at most prefill_chunk_size tokens from the running requests
 * still being prefilled (oldest first; the last one may be split). A request whose prompt is
 * done forks its other choices and samples each one's first token.
 */
void PrefillAction(EngineState* state);

/*!
 * \brief Decode every request past its prefill in one batch_decode call and sample. When the
 * KV cache cannot grow them all by a token, evict cached prefixes, then preempt the newest
 * requests.
 */
void DecodeAction(EngineState* state);

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_ACTIONS_ACTIONS_H_
