#include "engine/trace_buffer.h"

namespace tvmlm {

void TraceBuffer::Record(const std::string& event_json) {
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back(event_json);
  while (static_cast<int64_t>(events_.size()) > max_events_) {
    events_.pop_front();
    ++dropped_;
  }
}

std::string TraceBuffer::EventsJSON(bool clear) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out = "[";
  for (size_t i = 0; i < events_.size(); ++i) {
    if (i > 0) out += ",\n";
    out += events_[i];
  }
  if (clear) events_.clear();
  return out + "]";
}

void TraceBuffer::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  events_.clear();
  dropped_ = 0;
}

int64_t TraceBuffer::dropped() {
  std::lock_guard<std::mutex> lock(mu_);
  return dropped_;
}

}  // namespace tvmlm
