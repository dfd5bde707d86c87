// The single-threaded engine: owns the model and the requests; one Step() = admit, one prefill
// chunk, one decode of every running request (actions/). Not thread-safe: ThreadedEngine
// serialises.
#ifndef TVMLM_ENGINE_ENGINE_H_
#define TVMLM_ENGINE_ENGINE_H_

#include <dlpack/dlpack.h>
#include <tvmlm/config.h>
#include <tvmlm/request.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine_state.h"

namespace tvmlm {

/*!
 * \brief What metrics() reports: numbers copied out of the engine after every step (cheap), turned
 * into JSON only when someone asks (MetricsJSON).
 */
struct MetricsSnapshot {
  EngineMetrics counters;
  int64_t running = 0, waiting = 0;
  int64_t kv_tokens_used = 0, kv_tokens_total = 0, kv_pages_used = 0, kv_pages_total = 0;
  bool prefix_cache = false;
  int64_t prefix_cache_sequences = 0, prefix_cache_tokens = 0;
  int64_t max_num_sequence = 0, prefill_chunk_size = 0, max_sequence_length = 0;
};

/*! \brief docs/contracts.md section 2's metrics object for the engine serving `model`. */
std::string MetricsJSON(const std::string& model, const MetricsSnapshot& m);

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
