// tvmlm._core's delta classes (docs/contracts.md, section 2): RequestDelta, the Delta named tuple
// that inboxes hand out, DeltaInbox and DeltaRouter, with their waits (GIL released).
#include "python/delta_bindings.h"

#include <pybind11/stl.h>

#include <tvmlm/delta.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "python/delta_router.h"

namespace py = pybind11;

namespace tvmlm {
namespace {

// What DeltaInbox.take() returns for each delta: a C-level named tuple (like os.stat_result).
// Its fields are plain attribute reads for the caller; a py::class_ would convert token_ids and go
// through pybind11's dispatcher on every read, per token, on the caller's hot path.
PyStructSequence_Field kDeltaFields[] = {
    {"index", "choice index in [0, n)"},
    {"token_ids", "new tokens (list of int)"},
    {"finish_reason", "None, or 'stop' / 'length' / 'abort' / 'error'"},
    {"error", "message when finish_reason == 'error', else ''"},
    {"prompt_tokens", nullptr},
    {"completion_tokens", "tokens generated so far, a stopping token included"},
    {"cached_prompt_tokens", "prompt tokens whose KV came from the prefix cache"},
    {"time_to_first_token", "final delta only: s from add_request to the first token (0 if none)"},
    {"inter_token_latency", "final delta only: mean s between later tokens (0 if under two)"},
    {"logprobs", "None, or one (token, logprob, top_tokens, top_logprobs) tuple per token_ids entry"},
    {"prompt_logprobs", "None, or (token, logprob, top_tokens, top_logprobs) per prompt token after the first"},
    {nullptr, nullptr}};
constexpr int kDeltaFieldCount = 11;
PyStructSequence_Desc kDeltaDesc = {"tvmlm._core.Delta", "One request's new output (DeltaInbox.take).",
                                    kDeltaFields, kDeltaFieldCount};
PyTypeObject* delta_type = nullptr;  // made at module import

// None while running, else "stop" / "length" / "abort" / "error": one str object per reason, made
// once and never freed (a static py::object would be released after the interpreter).
py::object FinishReasonOrNone(const RequestDelta& d) {
  static const py::object* reasons = [] {
    auto* r = new py::object[5];
    for (FinishReason f : {FinishReason::kStop, FinishReason::kLength, FinishReason::kAbort,
                           FinishReason::kError}) {
      r[static_cast<int>(f)] = py::str(FinishReasonName(f));
    }
    r[static_cast<int>(FinishReason::kNotFinished)] = py::none();
    return r;
  }();
  return reasons[static_cast<int>(d.finish_reason)];
}

py::object ToPythonDelta(const RequestDelta& d) {
  py::object out = py::reinterpret_steal<py::object>(PyStructSequence_New(delta_type));
  if (!out) throw py::error_already_set();
  py::object values[] = {py::int_(d.index), py::cast(d.token_ids),
                         FinishReasonOrNone(d), py::str(d.error),
                         py::int_(d.prompt_tokens), py::int_(d.completion_tokens),
                         py::int_(d.cached_prompt_tokens), py::float_(d.time_to_first_token),
                         py::float_(d.inter_token_latency), LogprobsOrNone(d.logprobs),
                         LogprobsOrNone(d.prompt_logprobs)};
  for (Py_ssize_t i = 0; i < kDeltaFieldCount; ++i) PyStructSequence_SetItem(out.ptr(), i, values[i].release().ptr());
  return out;
}

// Wait for an inbox's deltas with the GIL released, in slices so that Ctrl-C (handled between
// slices, with the GIL) interrupts a caller waiting on a long generation.
py::list TakeDeltas(DeltaInbox& inbox) {
  for (;;) {
    std::vector<RequestDelta> deltas;
    {
      py::gil_scoped_release release;
      deltas = inbox.Take(std::chrono::milliseconds(100));
    }
    if (!deltas.empty() || inbox.closed()) {
      py::list out(deltas.size());
      for (size_t i = 0; i < deltas.size(); ++i) out[i] = ToPythonDelta(deltas[i]);
      return out;
    }
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
}

// Deltas already in the inbox, without waiting: None when there are none yet, [] once the router
// closed with nothing pending (the same end marker as take()).
py::object PollDeltas(DeltaInbox& inbox) {
  std::vector<RequestDelta> deltas = inbox.Take(std::chrono::milliseconds(0));
  if (deltas.empty() && !inbox.closed()) return py::none();
  py::list out(deltas.size());
  for (size_t i = 0; i < deltas.size(); ++i) out[i] = ToPythonDelta(deltas[i]);
  return out;
}

// Request ids whose notify inboxes woke since the last call, waiting with the GIL released;
// None once the router closed and every id was handed out.
py::object WaitReady(DeltaRouter& router) {
  const std::shared_ptr<ReadySet>& ready = router.ready();
  std::vector<std::string> ids;
  bool open = true;
  {
    py::gil_scoped_release release;
    while (open && ids.empty()) open = ready->Wait(std::chrono::milliseconds(1000), &ids);
  }
  if (!open) return py::none();
  return py::cast(ids);
}

}  // namespace

py::object LogprobsOrNone(const std::vector<TokenLogprob>& entries) {
  if (entries.empty()) return py::none();
  py::list out(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const TokenLogprob& e = entries[i];
    out[i] = py::make_tuple(e.token, e.logprob, py::cast(e.top_tokens), py::cast(e.top_logprobs));
  }
  return std::move(out);
}

void RegisterDeltaBindings(py::module_& m) {
  using release = py::call_guard<py::gil_scoped_release>;
  py::class_<RequestDelta>(m, "RequestDelta")
      .def_readonly("request_id", &RequestDelta::request_id)
      .def_readonly("index", &RequestDelta::index)
      .def_readonly("token_ids", &RequestDelta::token_ids)
      .def_property_readonly("finish_reason", &FinishReasonOrNone)
      .def_readonly("error", &RequestDelta::error)
      .def_readonly("prompt_tokens", &RequestDelta::prompt_tokens)
      .def_readonly("completion_tokens", &RequestDelta::completion_tokens)
      .def_readonly("cached_prompt_tokens", &RequestDelta::cached_prompt_tokens)
      .def_readonly("time_to_first_token", &RequestDelta::time_to_first_token)
      .def_readonly("inter_token_latency", &RequestDelta::inter_token_latency)
      .def("__repr__", [](const RequestDelta& d) {
        std::string reason = d.finish_reason == FinishReason::kNotFinished
                                 ? "None"
                                 : std::string("'") + FinishReasonName(d.finish_reason) + "'";
        return "RequestDelta(request_id='" + d.request_id + "', index=" + std::to_string(d.index) + ", " +
               std::to_string(d.token_ids.size()) + " tokens, finish_reason=" + reason +
               (d.error.empty() ? "" : ", error='" + d.error + "'") + ")";
      });

  delta_type = PyStructSequence_NewType(&kDeltaDesc);
  if (delta_type == nullptr) throw py::error_already_set();
  m.add_object("Delta", py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(delta_type)));

  py::class_<DeltaInbox, std::shared_ptr<DeltaInbox>>(m, "DeltaInbox")
      .def("take", &TakeDeltas,
           "Block until deltas arrive; return them all. [] once the router closed and this inbox "
           "is drained.")
      .def("poll", &PollDeltas,
           "The pending deltas without waiting: None if there are none yet, [] once the router "
           "closed and this inbox is drained.");

  py::class_<DeltaRouter, std::shared_ptr<DeltaRouter>>(m, "DeltaRouter")
      .def(py::init<>())
      .def("open", &DeltaRouter::Open, py::arg("request_id"), py::arg("choices"), py::arg("stream") = true,
           py::arg("notify") = false,
           "An inbox for the request's deltas; call before add_request. stream=False: the inbox "
           "wakes its caller only for final deltas and merges each choice's steps into one delta. "
           "notify=True: each wake-up also hands the request id to wait_ready().")
      .def("wait_ready", &WaitReady,
           "Block (GIL released) until notify inboxes woke; their request ids (each once per "
           "wake-up, possibly repeated). None once the router closed and all were handed out.")
      .def("discard", &DeltaRouter::Discard, py::arg("request_id"))
      .def("close", &DeltaRouter::Close, release())
      .def_property_readonly("open_requests", &DeltaRouter::open_requests);
}

}  // namespace tvmlm
