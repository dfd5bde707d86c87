#include "engine/trace.h"

#include <string>

#include "json_util.h"

namespace tvmlm {

namespace ffi = tvm::ffi;
using JsonArray = tvm::ffi::json::Array;

namespace {

constexpr int64_t kPid = 1;
constexpr int64_t kStepLoopTid = 1;

double Micros(Clock::time_point t) {
  return std::chrono::duration<double, std::micro>(t.time_since_epoch()).count();
}

std::string AsyncId(const Request& r) {
  return r.index == 0 ? r.id : r.id + "#" + std::to_string(r.index);
}

json::Object Event(const char* name, const char* cat, const char* ph, Clock::time_point ts) {
  json::Object ev;
  ev.Set(ffi::String("name"), ffi::String(name));
  ev.Set(ffi::String("cat"), ffi::String(cat));
  ev.Set(ffi::String("ph"), ffi::String(ph));
  ev.Set(ffi::String("ts"), Micros(ts));
  ev.Set(ffi::String("pid"), kPid);
  ev.Set(ffi::String("tid"), kStepLoopTid);
  return ev;
}

// An event on request `r`'s async track: "b", "n" or "e".
void RequestEvent(EngineState* s, const Request& r, const char* name, const char* ph,
                  Clock::time_point ts, json::Object args) {
  json::Object ev = Event(name, "request", ph, ts);
  ev.Set(ffi::String("id"), ffi::String(AsyncId(r)));
  args.Set(ffi::String("request_id"), ffi::String(r.id));
  args.Set(ffi::String("index"), r.index);
  ev.Set(ffi::String("args"), args);
  s->trace(json::Stringify(ev));
}

void StepEvent(EngineState* s, const char* name, Clock::time_point start, Clock::time_point end,
               json::Object args) {
  json::Object ev = Event(name, "step", "X", start);
  ev.Set(ffi::String("dur"), Micros(end) - Micros(start));
  ev.Set(ffi::String("args"), args);
  s->trace(json::Stringify(ev));
}

}  // namespace

void TraceQueued(EngineState* s, const Request& r) {
  if (!s->trace) return;
  json::Object args;
  args.Set(ffi::String("prompt_tokens"), static_cast<int64_t>(r.prompt.size()));
  args.Set(ffi::String("max_tokens"), r.config.max_tokens);
  args.Set(ffi::String("n"), r.config.n);
  RequestEvent(s, r, "request", "b", r.arrival, args);
}

void TraceAdmitted(EngineState* s, const Request& r) {
  if (!s->trace) return;
  json::Object args;
  args.Set(ffi::String("cached_tokens"), r.num_computed);
  args.Set(ffi::String("prefill_tokens"), r.prefill_target - r.num_computed);
  RequestEvent(s, r, "admitted", "n", Clock::now(), args);
}

void TraceForked(EngineState* s, const Request& r) {
  if (!s->trace) return;
  RequestEvent(s, r, "request", "b", Clock::now(), json::Object());
}

void TracePrefill(EngineState* s, const std::vector<std::pair<const Request*, int64_t>>& chunks,
                  Clock::time_point start, Clock::time_point end) {
  if (!s->trace) return;
  JsonArray requests;
  int64_t tokens = 0;
  for (const auto& [r, length] : chunks) {
    json::Object chunk;
    chunk.Set(ffi::String("request_id"), ffi::String(r->id));
    chunk.Set(ffi::String("start"), r->num_computed - length);  // called after num_computed moved
    chunk.Set(ffi::String("tokens"), length);
    requests.push_back(chunk);
    tokens += length;
  }
  json::Object args;
  args.Set(ffi::String("batch_size"), static_cast<int64_t>(chunks.size()));
  args.Set(ffi::String("tokens"), tokens);
  args.Set(ffi::String("chunks"), requests);
  StepEvent(s, "prefill", start, end, args);
}

void TraceDecode(EngineState* s, const std::vector<Request*>& batch, Clock::time_point start,
                 Clock::time_point end) {
  if (!s->trace) return;
  JsonArray ids;
  for (const Request* r : batch) ids.push_back(ffi::String(AsyncId(*r)));
  json::Object args;
  args.Set(ffi::String("batch_size"), static_cast<int64_t>(batch.size()));
  args.Set(ffi::String("requests"), ids);
  StepEvent(s, "decode", start, end, args);
}

void TracePreempted(EngineState* s, const Request& r) {
  if (!s->trace) return;
  const Clock::time_point now = Clock::now();
  json::Object args;
  args.Set(ffi::String("request_id"), ffi::String(AsyncId(r)));
  args.Set(ffi::String("generated_tokens"), static_cast<int64_t>(r.generated.size()));
  json::Object ev = Event("preempt", "step", "i", now);
  ev.Set(ffi::String("s"), ffi::String("t"));
  ev.Set(ffi::String("args"), args);
  s->trace(json::Stringify(ev));
  RequestEvent(s, r, "preempted", "n", now, json::Object());
}

void TraceFinished(EngineState* s, const Request& r) {
  if (!s->trace) return;
  json::Object args;
  args.Set(ffi::String("finish_reason"), ffi::String(FinishReasonName(r.finish_reason)));
  args.Set(ffi::String("completion_tokens"), static_cast<int64_t>(r.generated.size()));
  if (!r.error.empty()) args.Set(ffi::String("error"), ffi::String(r.error));
  RequestEvent(s, r, "request", "e", Clock::now(), args);
}

void TraceMaskWait(EngineState* s, const Request& r, Clock::time_point start, Clock::time_point end) {
  if (!s->trace) return;
  json::Object args;
  args.Set(ffi::String("request_id"), ffi::String(AsyncId(r)));
  StepEvent(s, "token_mask_wait", start, end, args);
}

}  // namespace tvmlm
