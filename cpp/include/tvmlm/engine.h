// Public C++ API: a threaded LLM engine serving one compiled model package.
//
// Usage from a host program:
//   auto engine = tvmlm::CreateThreadedEngine();
//   engine->Init("cpu:0", [](std::vector<tvmlm::RequestDelta> deltas) { ... }, nullptr);
//   engine->Reload(R"({"model": "/path/to/pkg"})");
//   std::thread loop([&] { engine->RunBackgroundLoop(); });
//   std::thread stream([&] { engine->RunBackgroundStreamBackLoop(); });
//   engine->AddRequest("r1", prompt_tokens, R"({"max_tokens": 32})");
//   ...
//   engine->ExitBackgroundLoop(); loop.join(); stream.join();
#ifndef TVMLM_ENGINE_H_
#define TVMLM_ENGINE_H_

#include <tvmlm/config.h>
#include <tvmlm/export.h>
#include <tvmlm/delta.h>
#include <tvmlm/token_constraint.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace tvmlm {

class TVMLM_API ThreadedEngine {
 public:
  /*! \brief Called on the stream-back thread with a batch of deltas. */
  using StreamCallback = std::function<void(std::vector<RequestDelta>)>;
  /*! \brief Receives one JSON event per engine step (optional). */
  using TraceRecorder = std::function<void(const std::string& event_json)>;

  virtual ~ThreadedEngine() = default;

  /*! \brief Set the device ("cpu:0", "cuda:0", ...) and the callbacks. Call once, first. */
  virtual void Init(const std::string& device, StreamCallback stream_callback,
                    TraceRecorder trace_recorder) = 0;
  /*!
   * \brief Load a model package and allocate its KV cache (JSON: see EngineConfig). Synchronous;
   * throws std::invalid_argument / std::runtime_error and leaves the engine unloaded on failure.
   * Requests in flight are aborted.
   */
  virtual void Reload(const std::string& config_json) = 0;
  /*! \brief Abort all requests and free the model. */
  virtual void Unload() = 0;
  /*! \brief Abort all requests, clear the KV cache and the metrics; keep the model. */
  virtual void Reset() = 0;
  /*!
   * \brief Queue a request; its deltas arrive through the stream callback. `constraints`: none, or
   * one TokenConstraint per choice (n of them) limiting the tokens each may sample.
   */
  virtual void AddRequest(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                          const std::string& generation_config_json,
                          std::vector<std::shared_ptr<TokenConstraint>> constraints = {}) = 0;
  /*! \brief Finish the request with "abort" at the next step (no-op if unknown/finished). */
  virtual void AbortRequest(const std::string& request_id) = 0;
  /*! \brief Run the step loop on the calling thread until ExitBackgroundLoop(). */
  virtual void RunBackgroundLoop() = 0;
  /*! \brief Run the delta delivery loop on the calling thread until ExitBackgroundLoop(). */
  virtual void RunBackgroundStreamBackLoop() = 0;
  /*! \brief Abort pending requests (their "abort" deltas are delivered), then end both loops. */
  virtual void ExitBackgroundLoop() = 0;
  /*! \brief Counters and rates as a JSON object. */
  virtual std::string Metrics() = 0;
};

/*! \brief A new engine; call Init() next. Exported from libtvmlm.so (find_package(tvmlm)). */
TVMLM_API std::unique_ptr<ThreadedEngine> CreateThreadedEngine();

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_H_
