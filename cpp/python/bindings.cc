// tvmlm._core: the Python face of the C++ core (docs/contracts.md, section 2). The only file that
// knows pybind11. Rules kept here: long calls release the GIL; Python callables are only touched,
// called or destroyed with the GIL held.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tvmlm/engine.h>
#include <tvmlm/request.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "model/device.h"
#include "model/model.h"
#include "sampler/sampler.h"

namespace py = pybind11;

namespace tvmlm {
namespace {

bool PythonIsFinalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing();
#else
  return _Py_IsFinalizing();
#endif
}

// A Python callable shared with C++ threads. The last reference may be dropped on any thread, so
// the deleter takes the GIL (destroying a py::object without it crashes).
using SharedCallable = std::shared_ptr<py::object>;

SharedCallable ShareCallable(py::object fn) {
  return SharedCallable(new py::object(std::move(fn)), [](py::object* p) {
    if (PythonIsFinalizing()) return;  // the interpreter is going away: leak rather than hang
    py::gil_scoped_acquire gil;
    delete p;
  });
}

// Call `fn(arg)` from a C++ thread. Exceptions are reported through sys.unraisablehook and
// swallowed: one bad callback must not stop the engine's delivery thread.
template <typename Arg>
void CallFromCpp(const SharedCallable& fn, Arg&& arg, const char* what) {
  if (PythonIsFinalizing()) return;
  py::gil_scoped_acquire gil;
  try {
    (*fn)(std::forward<Arg>(arg));
  } catch (py::error_already_set& e) {
    e.discard_as_unraisable(what);
  }
}

// Logits handed to numpy without a copy: the array owns the vector through a capsule.
py::array_t<float> ToNumpy(Logits logits) {
  auto* data = new std::vector<float>(std::move(logits.data));
  py::capsule owner(data, [](void* p) { delete static_cast<std::vector<float>*>(p); });
  return py::array_t<float>({logits.rows, logits.vocab}, data->data(), owner);
}

// Model plus a lock: the GIL is released during forwards, so Python threads sharing one Model
// are serialised here instead.
class PyModel {
 public:
  PyModel(const std::string& package_dir, const std::string& device, int64_t num_threads)
      : model_(package_dir, ParseDevice(device), num_threads) {}

  std::string metadata() const { return model_.metadata().json; }

  void CreateKVCache(int64_t max_batch_size, int64_t max_total_seq_len, int64_t prefill_chunk) {
    std::lock_guard<std::mutex> lock(mu_);
    model_.CreateKVCache(max_batch_size, max_total_seq_len, prefill_chunk);
  }
  void AddSequence(int64_t seq_id) {
    std::lock_guard<std::mutex> lock(mu_);
    model_.AddSequence(seq_id);
  }
  void RemoveSequence(int64_t seq_id) {
    std::lock_guard<std::mutex> lock(mu_);
    model_.RemoveSequence(seq_id);
  }
  void ForkSequence(int64_t parent, int64_t child, int64_t fork_pos) {
    std::lock_guard<std::mutex> lock(mu_);
    model_.ForkSequence(parent, child, fork_pos);
  }
  void PopN(int64_t seq_id, int64_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    model_.PopN(seq_id, n);
  }
  int64_t FreePages() {
    std::lock_guard<std::mutex> lock(mu_);
    return model_.FreePages();
  }

  py::array_t<float> Prefill(std::vector<int64_t> seq_ids,
                             std::vector<std::vector<int32_t>> token_ids) {
    Logits logits;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mu_);
      logits = model_.BatchPrefill(seq_ids, token_ids);
    }
    return ToNumpy(std::move(logits));
  }

  py::array_t<float> Decode(std::vector<int64_t> seq_ids, std::vector<int32_t> token_ids) {
    Logits logits;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mu_);
      logits = model_.BatchDecode(seq_ids, token_ids);
    }
    return ToNumpy(std::move(logits));
  }

 private:
  std::mutex mu_;
  Model model_;
};

// The engine as Python sees it: callables in, GIL released around everything that can wait.
class PyThreadedEngine {
 public:
  PyThreadedEngine() : engine_(CreateThreadedEngine()) {}

  void Init(const std::string& device, py::object stream_callback, py::object trace_recorder) {
    if (!PyCallable_Check(stream_callback.ptr())) {
      throw py::type_error("stream_callback must be callable");
    }
    SharedCallable on_deltas = ShareCallable(std::move(stream_callback));
    ThreadedEngine::StreamCallback stream = [on_deltas](std::vector<RequestDelta> deltas) {
      CallFromCpp(on_deltas, std::move(deltas), "tvmlm stream_callback");
    };
    ThreadedEngine::TraceRecorder trace;
    if (!trace_recorder.is_none()) {
      if (!PyCallable_Check(trace_recorder.ptr())) {
        throw py::type_error("trace_recorder must be callable or None");
      }
      SharedCallable on_trace = ShareCallable(std::move(trace_recorder));
      trace = [on_trace](const std::string& event) {
        CallFromCpp(on_trace, event, "tvmlm trace_recorder");
      };
    }
    engine_->Init(device, std::move(stream), std::move(trace));
  }

  ThreadedEngine* operator->() { return engine_.get(); }

 private:
  std::unique_ptr<ThreadedEngine> engine_;
};

py::object FinishReasonOrNone(const RequestDelta& d) {
  if (d.finish_reason == FinishReason::kNotFinished) return py::none();
  return py::str(FinishReasonName(d.finish_reason));
}

}  // namespace
}  // namespace tvmlm

PYBIND11_MODULE(_core, m) {
  using namespace tvmlm;
  using release = py::call_guard<py::gil_scoped_release>;
  m.doc() = "tvmlm C++ core: compiled-model runner and threaded engine";

  m.def("device_exists", &DeviceExists, py::arg("kind"), py::arg("index"), release());
  m.def("device_memory", &DeviceTotalMemory, py::arg("kind"), py::arg("index"), release());

  // Test hook, not part of the contract: draw `num_samples` tokens from one logits row with one
  // random stream seeded from the config, exactly as the engine samples a request.
  m.def(
      "_sample_tokens",
      [](std::vector<float> logits, const std::string& generation_config_json, int num_samples) {
        GenerationConfig config = GenerationConfig::FromJSON(generation_config_json);
        SamplerRng rng(config.seed);
        std::vector<int32_t> out;
        for (int i = 0; i < num_samples; ++i) {
          out.push_back(SampleToken(logits.data(), static_cast<int64_t>(logits.size()), config, &rng));
        }
        return out;
      },
      py::arg("logits"), py::arg("generation_config_json"), py::arg("num_samples"));

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

  py::class_<PyModel>(m, "Model")
      .def(py::init<const std::string&, const std::string&, int64_t>(), py::arg("package_dir"),
           py::arg("device") = "cpu:0", py::arg("num_threads") = 0, release())
      .def_property_readonly("metadata", &PyModel::metadata)
      .def("create_kv_cache", &PyModel::CreateKVCache, py::arg("max_batch_size"),
           py::arg("max_total_seq_len"), py::arg("prefill_chunk_size"), release())
      .def("add_sequence", &PyModel::AddSequence, py::arg("seq_id"), release())
      .def("remove_sequence", &PyModel::RemoveSequence, py::arg("seq_id"), release())
      .def("fork_sequence", &PyModel::ForkSequence, py::arg("parent"), py::arg("child"),
           py::arg("fork_pos") = -1, release())
      .def("popn", &PyModel::PopN, py::arg("seq_id"), py::arg("n"), release())
      .def_property_readonly("free_pages", &PyModel::FreePages)
      .def("prefill", &PyModel::Prefill, py::arg("seq_ids"), py::arg("token_ids"))
      .def("decode", &PyModel::Decode, py::arg("seq_ids"), py::arg("token_ids"));

  py::class_<PyThreadedEngine>(m, "ThreadedEngine")
      .def(py::init<>())
      .def("init", &PyThreadedEngine::Init, py::arg("device"), py::arg("stream_callback"),
           py::arg("trace_recorder") = py::none())
      .def("reload", [](PyThreadedEngine& e, const std::string& cfg) { e->Reload(cfg); },
           py::arg("config_json"), release())
      .def("unload", [](PyThreadedEngine& e) { e->Unload(); }, release())
      .def("reset", [](PyThreadedEngine& e) { e->Reset(); }, release())
      .def("add_request",
           [](PyThreadedEngine& e, const std::string& id, std::vector<int32_t> prompt,
              const std::string& cfg) { e->AddRequest(id, std::move(prompt), cfg); },
           py::arg("request_id"), py::arg("prompt_token_ids"), py::arg("generation_config_json"),
           release())
      .def("abort_request", [](PyThreadedEngine& e, const std::string& id) { e->AbortRequest(id); },
           py::arg("request_id"), release())
      .def("run_background_loop", [](PyThreadedEngine& e) { e->RunBackgroundLoop(); }, release())
      .def("run_background_stream_back_loop",
           [](PyThreadedEngine& e) { e->RunBackgroundStreamBackLoop(); }, release())
      .def("exit_background_loop", [](PyThreadedEngine& e) { e->ExitBackgroundLoop(); }, release())
      .def("metrics", [](PyThreadedEngine& e) { return e->Metrics(); }, release());
}
