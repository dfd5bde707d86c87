// TraceBuffer: a trace recorder that keeps the engine's events in memory (no GIL, no callback),
// for the Python Engine's enable_tracing. Bounded: past `max_events` the oldest are dropped.
#ifndef TVMLM_ENGINE_TRACE_BUFFER_H_
#define TVMLM_ENGINE_TRACE_BUFFER_H_

#include <cstdint>
#include <deque>
#include <mutex>
#include <string>

namespace tvmlm {

class TraceBuffer {
 public:
  explicit TraceBuffer(int64_t max_events = 1 << 20) : max_events_(max_events) {}

  /*! \brief The engine's trace recorder: keep one event (a JSON object). */
  void Record(const std::string& event_json);
  /*! \brief Every kept event as one JSON array; `clear`: and forget them (atomically). */
  std::string EventsJSON(bool clear = false);
  void Clear();
  /*! \brief Events dropped because the buffer was full. */
  int64_t dropped();

 private:
  std::mutex mu_;
  const int64_t max_events_;
  std::deque<std::string> events_;
  int64_t dropped_ = 0;
};

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_TRACE_BUFFER_H_
