// Scheduling actions: each is one phase of an engine step over the shared EngineState
// (as MLC's engine_actions, one per file).
#ifndef TVMLM_ENGINE_ACTIONS_ACTIONS_H_
#define TVMLM_ENGINE_ACTIONS_ACTIONS_H_

#include "engine/engine_state.h"

namespace tvmlm {

/*!
 * \brief Admit waiting requests while the batch and the KV budget allow, prefill all of them
 * (in as few batch_prefill calls as the prefill chunk allows) and sample each one's next token.
 */
void PrefillAction(EngineState* state);

/*!
 * \brief Decode every running request in one batch_decode call and sample; preempts the newest
 * requests first when the KV cache cannot grow every sequence by a token.
 */
void DecodeAction(EngineState* state);

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_ACTIONS_ACTIONS_H_
