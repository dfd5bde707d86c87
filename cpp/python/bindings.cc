// tvmlm._core: the Python face of the C++ core (docs/contracts.md, section 2): Model,
// ThreadedEngine and the sampler's test hooks here, deltas in delta_bindings.cc, constraints and
// tracing in constraint_bindings.cc (only these files know pybind11). Rules kept in all three:
// long calls release the GIL; Python callables are only touched, called or destroyed with the GIL
// held.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tvmlm/engine.h>
#include <tvmlm/delta.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "constraint/grammar_mask.h"
#include "engine/trace_buffer.h"
#include "python/constraint_bindings.h"
#include "python/delta_router.h"
#include "python/delta_bindings.h"
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
                             std::vector<std::vector<int32_t>> token_ids,
                             std::vector<int64_t> logit_rows) {
    Logits logits;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mu_);
      logits = model_.BatchPrefill(seq_ids, token_ids, logit_rows);
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
    ThreadedEngine::StreamCallback stream;
    if (py::isinstance<DeltaRouter>(stream_callback)) {
      // Routed in C++: the stream-back loop never needs the GIL.
      auto router = stream_callback.cast<std::shared_ptr<DeltaRouter>>();
      stream = [router](std::vector<RequestDelta> deltas) { router->Route(std::move(deltas)); };
    } else if (PyCallable_Check(stream_callback.ptr())) {
      SharedCallable on_deltas = ShareCallable(std::move(stream_callback));
      stream = [on_deltas](std::vector<RequestDelta> deltas) {
        CallFromCpp(on_deltas, std::move(deltas), "tvmlm stream_callback");
      };
    } else {
      throw py::type_error("stream_callback must be callable or a tvmlm._core.DeltaRouter");
    }
    ThreadedEngine::TraceRecorder trace;
    if (py::isinstance<TraceBuffer>(trace_recorder)) {
      // Kept in C++: recording never needs the GIL.
      auto buffer = trace_recorder.cast<std::shared_ptr<TraceBuffer>>();
      trace = [buffer](const std::string& event) { buffer->Record(event); };
    } else if (!trace_recorder.is_none()) {
      if (!PyCallable_Check(trace_recorder.ptr())) {
        throw py::type_error("trace_recorder must be callable, a tvmlm._core.TraceBuffer or None");
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

}  // namespace
}  // namespace tvmlm

PYBIND11_MODULE(_core, m) {
  using namespace tvmlm;
  using release = py::call_guard<py::gil_scoped_release>;
  m.doc() = "tvmlm C++ core: compiled-model runner and threaded engine";
  // Limits the Python layer sizes and validates with (config.py, protocol.py test they agree).
  m.attr("KV_PAGE_SIZE") = Model::kPageSize;
  m.attr("MAX_TOP_LOGPROBS") = GenerationConfig::kMaxTopLogprobs;

  m.def("device_exists", &DeviceExists, py::arg("kind"), py::arg("index"), release());
  m.def("device_memory", &DeviceTotalMemory, py::arg("kind"), py::arg("index"), release());

  // Test hooks, not part of the contract: draw `num_samples` tokens from one logits row with one
  // random stream seeded from the config, exactly as the engine samples a request whose prompt is
  // `prompt_ids` and whose output so far is `generated_ids` (for the penalties), with an optional
  // allowed-token bitmask. _sample_logprobs returns (token, logprob, top_tokens, top_logprobs).
  auto draw = [](std::vector<float> logits, const std::string& config_json, int num_samples,
                 const std::vector<int32_t>& prompt_ids, const std::vector<int32_t>& generated_ids,
                 const std::optional<std::vector<uint32_t>>& allowed, bool with_logprobs) {
    GenerationConfig config = GenerationConfig::FromJSON(config_json);
    SamplerRng rng(config.seed);
    TokenCounts counts(prompt_ids);
    for (int32_t t : generated_ids) counts.AddGenerated(t);
    SampleInput in;
    in.config = &config;
    in.rng = &rng;
    in.counts = &counts;
    in.allowed = allowed ? allowed->data() : nullptr;
    Sampler sampler;
    std::vector<TokenLogprob> out(static_cast<size_t>(num_samples));
    for (TokenLogprob& lp : out) {
      lp.token = sampler.Sample(logits.data(), static_cast<int64_t>(logits.size()), in,
                                with_logprobs ? &lp : nullptr);
    }
    return out;
  };
  m.def(
      "_sample_tokens",
      [draw](std::vector<float> logits, const std::string& config_json, int num_samples,
             std::vector<int32_t> prompt_ids, std::vector<int32_t> generated_ids,
             std::optional<std::vector<uint32_t>> allowed) {
        std::vector<int32_t> tokens;
        for (const TokenLogprob& lp : draw(std::move(logits), config_json, num_samples, prompt_ids,
                                           generated_ids, allowed, false)) {
          tokens.push_back(lp.token);
        }
        return tokens;
      },
      py::arg("logits"), py::arg("generation_config_json"), py::arg("num_samples"),
      py::arg("prompt_ids") = std::vector<int32_t>{}, py::arg("generated_ids") = std::vector<int32_t>{},
      py::arg("allowed") = py::none());
  m.def(
      "_sample_logprobs",
      [draw](std::vector<float> logits, const std::string& config_json, int num_samples,
             std::vector<int32_t> prompt_ids, std::vector<int32_t> generated_ids,
             std::optional<std::vector<uint32_t>> allowed) {
        return LogprobsOrNone(draw(std::move(logits), config_json, num_samples, prompt_ids,
                                   generated_ids, allowed, true));
      },
      py::arg("logits"), py::arg("generation_config_json"), py::arg("num_samples"),
      py::arg("prompt_ids") = std::vector<int32_t>{}, py::arg("generated_ids") = std::vector<int32_t>{},
      py::arg("allowed") = py::none());
  m.def(
      "_plain_logprob",
      [](std::vector<float> logits, int32_t token, int64_t top) {
        Sampler sampler;
        return LogprobsOrNone({sampler.PlainLogprob(logits.data(), static_cast<int64_t>(logits.size()),
                                                    token, top)});
      },
      py::arg("logits"), py::arg("token"), py::arg("top"));

  RegisterDeltaBindings(m);

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
      // logit_rows: sequence i returns the logits of its last logit_rows[i] tokens (default: 1);
      // their total is bounded by the compiled max_batch_size (echo's prompt logprobs, tvmlm.eval).
      .def("prefill", &PyModel::Prefill, py::arg("seq_ids"), py::arg("token_ids"),
           py::arg("logit_rows") = std::vector<int64_t>{})
      .def("decode", &PyModel::Decode, py::arg("seq_ids"), py::arg("token_ids"));

  RegisterConstraintBindings(m);

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
              const std::string& cfg, std::vector<std::shared_ptr<GrammarMask>> masks) {
             std::vector<std::shared_ptr<TokenConstraint>> constraints(masks.begin(), masks.end());
             e->AddRequest(id, std::move(prompt), cfg, std::move(constraints));
           },
           py::arg("request_id"), py::arg("prompt_token_ids"), py::arg("generation_config_json"),
           py::arg("token_masks") = std::vector<std::shared_ptr<GrammarMask>>(), release())
      .def("abort_request", [](PyThreadedEngine& e, const std::string& id) { e->AbortRequest(id); },
           py::arg("request_id"), release())
      .def("run_background_loop", [](PyThreadedEngine& e) { e->RunBackgroundLoop(); }, release())
      .def("run_background_stream_back_loop",
           [](PyThreadedEngine& e) { e->RunBackgroundStreamBackLoop(); }, release())
      .def("exit_background_loop", [](PyThreadedEngine& e) { e->ExitBackgroundLoop(); }, release())
      .def("metrics", [](PyThreadedEngine& e) { return e->Metrics(); }, release());
}
