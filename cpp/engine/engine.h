// The single-threaded engine: owns the model and the requests; one Step() = admit, one prefill
// chunk, one decode of every running request (actions/). Not thread-safe: ThreadedEngine
// serialises.
#ifndef TVMLM_ENGINE_ENGINE_H_
#define TVMLM_ENGINE_ENGINE_H_

#include <dlpack/dlpack.h>
#include <tvmlm/config.h>
#include <tvmlm/delta.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine_state.h"

namespace tvmlm {

class Engine {
 public:
  /*! \brief Receives the deltas of each action as soon as it completes. */
  using DeltaSink = std::function<void(std::vector<RequestDelta>)>;

  /*! \brief Load `config.model` on `device` and allocate the KV cache. */
  Engine(const EngineConfig& config, DLDevice device, int64_t num_threads);

  /*! \brief Queue a request, or finish it at once with an error delta when it cannot be served. */
  void AddRequest(RequestPtr request, std::vector<RequestDelta>* out);
  /*! \brief Finish every choice of the request with "abort" if it is still here. */
  void AbortRequest(const std::string& request_id, std::vector<RequestDelta>* out);
  /*! \brief Finish every request (abort on shutdown, error when a step failed unexpectedly). */
  void FinishAll(FinishReason reason, const std::string& error, std::vector<RequestDelta>* out);
  /*! \brief Abort everything, empty the KV cache and zero the counters. */
  void Reset(std::vector<RequestDelta>* out);

  void Step(const DeltaSink& sink);
  bool HasUnfinished() const { return !state_.waiting.empty() || !state_.running.empty(); }

  void SetTrace(EngineState::TraceFn trace) { state_.trace = std::move(trace); }
  MetricsSnapshot Metrics() const;

 private:
  EngineConfig config_;
  EngineState state_;
};

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_ENGINE_H_
