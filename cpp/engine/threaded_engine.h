// ThreadedEngine: the Engine behind two background loops.
//
//   caller threads ── AddRequest/AbortRequest ──> request / abort queues ─┐
//   step loop (RunBackgroundLoop):   take queues, Engine::Step, push deltas ─> delta queue
//   stream-back loop:                take delta queue, call the stream callback
//
// Both loops sleep on condition variables when there is nothing to do. The step loop never
// calls user code, so a slow or GIL-bound callback never stalls the model.
#ifndef TVMLM_ENGINE_THREADED_ENGINE_H_
#define TVMLM_ENGINE_THREADED_ENGINE_H_

#include <dlpack/dlpack.h>
#include <tvmlm/engine.h>

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"

namespace tvmlm {

class ThreadedEngineImpl final : public ThreadedEngine {
 public:
  ~ThreadedEngineImpl() override;

  void Init(const std::string& device, StreamCallback stream_callback,
            TraceRecorder trace_recorder) override;
  void Reload(const std::string& config_json) override;
  void Unload() override;
  void Reset() override;
  void AddRequest(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                  const std::string& generation_config_json,
                  std::vector<std::shared_ptr<TokenConstraint>> constraints = {}) override;
  void AbortRequest(const std::string& request_id) override;
  void RunBackgroundLoop() override;
  void RunBackgroundStreamBackLoop() override;
  void ExitBackgroundLoop() override;
  std::string Metrics() override;

 private:
  /*! \brief Hand deltas to the stream-back loop. Takes mu_. */
  void PushDeltas(std::vector<RequestDelta> deltas);
  /*!
   * \brief Refresh the metrics snapshot, then push: whoever sees a delta sees metrics at least as
   * new. Caller holds engine_mu_.
   */
  void DeliverLocked(std::vector<RequestDelta> deltas);
  void PushTrace(std::string event_json);
  /*! \brief Abort queued and in-flight requests. Caller holds engine_mu_. */
  void AbortEverythingLocked();
  /*! \brief Refresh the metrics snapshot (numbers only: JSON is made when asked) and the "has work"
   * flag. Caller holds engine_mu_. */
  void PublishStateLocked();
  /*! \brief One pass of the step loop with the queues taken from the callers. */
  void StepOnce(std::deque<RequestPtr> requests, std::vector<std::string> aborts);

  // Lock order: engine_mu_ before mu_. Neither is held while user callbacks run.

  // mu_ guards the queues, the flags and the metrics snapshot (all cheap to touch).
  std::mutex mu_;
  std::condition_variable loop_cv_;    // wakes the step loop
  std::condition_variable stream_cv_;  // wakes the stream-back loop
  std::deque<RequestPtr> request_queue_;
  std::vector<std::string> abort_queue_;
  std::vector<RequestDelta> delta_queue_;
  std::vector<std::string> trace_queue_;
  /*! \brief Requests added and not yet finished -> choices still to finish (rejects duplicates). */
  std::unordered_map<std::string, int64_t> active_ids_;
  bool exit_requested_ = false;
  bool loop_running_ = false;
  bool stream_loop_running_ = false;
  /*! \brief The step loop has exited and will push no more deltas. */
  bool loop_finished_ = false;
  /*! \brief The engine holds unfinished requests: keep stepping without new input. */
  bool engine_has_work_ = false;
  /*! \brief The loaded model's metrics as of the last step; none when no model is loaded. */
  std::optional<MetricsSnapshot> metrics_;
  std::string model_;

  // engine_mu_ guards engine_; the step loop holds it for a whole step.
  std::mutex engine_mu_;
  std::unique_ptr<Engine> engine_;

  // Set once by Init().
  bool initialized_ = false;
  DLDevice device_{kDLCPU, 0};
  StreamCallback stream_callback_;
  TraceRecorder trace_recorder_;
};

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_THREADED_ENGINE_H_
