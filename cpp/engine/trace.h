// Engine trace events in Chrome's trace-event format (the JSON Perfetto and chrome://tracing
// open), handed one object per event to EngineState::trace when a recorder is set.
//
//   step loop (pid 1, tid 1):  "prefill" / "decode" complete events ("X") per model call, with the
//                              requests in the batch; "token_mask_wait" when sampling waited for a
//                              grammar mask; "preempt" instants ("i").
//   each request choice:       an async slice ("b" ... "e", id = request id, "#<i>" for choices
//                              i > 0) from arrival to finish, with "admitted" / "preempted"
//                              instants ("n") on it.
// Timestamps are microseconds on the steady clock. Every function is a no-op without a recorder.
#ifndef TVMLM_ENGINE_TRACE_H_
#define TVMLM_ENGINE_TRACE_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "engine/engine_state.h"

namespace tvmlm {

void TraceQueued(EngineState* s, const Request& r);
void TraceAdmitted(EngineState* s, const Request& r);
/*! \brief A forked choice starts its own slice. */
void TraceForked(EngineState* s, const Request& r);
void TracePrefill(EngineState* s, const std::vector<std::pair<const Request*, int64_t>>& chunks,
                  Clock::time_point start, Clock::time_point end);
void TraceDecode(EngineState* s, const std::vector<Request*>& batch, Clock::time_point start,
                 Clock::time_point end);
void TracePreempted(EngineState* s, const Request& r);
void TraceFinished(EngineState* s, const Request& r);
void TraceMaskWait(EngineState* s, const Request& r, Clock::time_point start, Clock::time_point end);

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_TRACE_H_
