// tvmlm._core's token-constraint and tracing classes (docs/contracts.md, section 2): GrammarMask
// and MaskWorkQueue (the Python grammar worker's side of TokenConstraint), TraceBuffer.
#include "python/constraint_bindings.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "constraint/grammar_mask.h"
#include "engine/trace_buffer.h"

namespace py = pybind11;

namespace tvmlm {

namespace {

// Wait for grammar work with the GIL released, in slices so that Ctrl-C interrupts the worker.
py::list TakeWork(MaskWorkQueue& queue) {
  for (;;) {
    std::vector<MaskWorkQueue::Item> items;
    {
      py::gil_scoped_release release;
      items = queue.Take(std::chrono::milliseconds(100));
    }
    if (!items.empty() || queue.closed()) {
      py::list out;
      for (MaskWorkQueue::Item& item : items) {
        out.append(py::make_tuple(item.mask ? py::cast(item.mask) : py::none(), item.mask_id, item.token));
      }
      return out;
    }
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
}

}  // namespace

void RegisterConstraintBindings(py::module_& m) {
  py::class_<MaskWorkQueue, std::shared_ptr<MaskWorkQueue>>(m, "MaskWorkQueue")
      .def(py::init<>())
      .def("take", &TakeWork,
           "Block until there is work; return [(mask or None, mask_id, token)]: a token to accept "
           "(then fill the mask and set_ready), or token -1 with no mask: mask_id was released. "
           "[] once closed.")
      .def("close", &MaskWorkQueue::Close, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("closed", &MaskWorkQueue::closed);

  py::class_<GrammarMask, std::shared_ptr<GrammarMask>>(m, "GrammarMask")
      .def(py::init<int64_t, std::shared_ptr<MaskWorkQueue>>(), py::arg("vocab"), py::arg("queue"))
      .def_property_readonly("id", &GrammarMask::id)
      .def_property_readonly("vocab", &GrammarMask::vocab)
      .def_property_readonly(
          "words",
          [](py::object self) {
            auto& mask = self.cast<GrammarMask&>();
            return py::array_t<int32_t>({mask.num_words()}, {static_cast<py::ssize_t>(sizeof(int32_t))},
                                        reinterpret_cast<int32_t*>(mask.words()), self);
          },
          "The bitmask as a writable int32 array (xgrammar's layout); fill it, then set_ready().")
      .def("set_ready", &GrammarMask::SetReady)
      .def("set_terminated", &GrammarMask::SetTerminated)
      .def("set_error", &GrammarMask::SetError, py::arg("message"))
      .def("accept", &GrammarMask::Accept, py::arg("token"), "What the engine calls after sampling (tests).")
      .def(
          "next_mask",
          [](GrammarMask& mask) -> py::object {
            std::vector<uint32_t> bits;
            TokenConstraint::Next next;
            {
              py::gil_scoped_release release;
              next = mask.NextMask(mask.vocab(), &bits);
            }
            if (next == TokenConstraint::Next::kTerminated) return py::none();
            return py::cast(std::vector<int64_t>(bits.begin(), bits.end()));
          },
          "What the engine calls before sampling (tests): the words, or None when terminated.");

  py::class_<TraceBuffer, std::shared_ptr<TraceBuffer>>(m, "TraceBuffer")
      .def(py::init<int64_t>(), py::arg("max_events") = 1 << 20)
      .def("events_json", &TraceBuffer::EventsJSON, py::arg("clear") = false,
           py::call_guard<py::gil_scoped_release>(),
           "Every kept trace event, as one JSON array; clear=True also forgets them.")
      .def("clear", &TraceBuffer::Clear)
      .def_property_readonly("dropped", &TraceBuffer::dropped);
}

}  // namespace tvmlm
