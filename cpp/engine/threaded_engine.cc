#include "engine/threaded_engine.h"

#include <iostream>
#include <stdexcept>

#include "model/device.h"

namespace tvmlm {

std::unique_ptr<ThreadedEngine> CreateThreadedEngine() {
  return std::make_unique<ThreadedEngineImpl>();
}

namespace {

// The final deltas of a request the engine never saw: one per choice.
void FinalDeltas(const Request& r, FinishReason reason, const std::string& error,
                 std::vector<RequestDelta>* out) {
  for (int64_t i = 0; i < r.slots(); ++i) {
    RequestDelta d;
    d.request_id = r.id;
    d.index = i;
    d.finish_reason = reason;
    d.error = error;
    d.prompt_tokens = static_cast<int64_t>(r.prompt.size());
    out->push_back(std::move(d));
  }
}

}  // namespace

ThreadedEngineImpl::~ThreadedEngineImpl() = default;

void ThreadedEngineImpl::Init(const std::string& device, StreamCallback stream_callback,
                              TraceRecorder trace_recorder) {
  if (!stream_callback) throw std::invalid_argument("init: stream_callback is required");
  DLDevice parsed = ParseDevice(device);
  std::lock_guard<std::mutex> engine_lock(engine_mu_);
  if (initialized_) throw std::runtime_error("init: the engine is already initialized");
  device_ = parsed;
  stream_callback_ = std::move(stream_callback);
  trace_recorder_ = std::move(trace_recorder);
  initialized_ = true;
}

void ThreadedEngineImpl::Reload(const std::string& config_json) {
  EngineConfig config = EngineConfig::FromJSON(config_json);
  // Loading runs on the caller's thread under engine_mu_: the step loop waits, and errors reach
  // the caller directly.
  std::lock_guard<std::mutex> engine_lock(engine_mu_);
  if (!initialized_) throw std::runtime_error("reload: call init() first");
  AbortEverythingLocked();
  engine_.reset();  // free the old model before loading the new one
  PublishStateLocked();
  auto engine = std::make_unique<Engine>(config, device_, config.num_threads);
  if (trace_recorder_) {
    engine->SetTrace([this](const std::string& event) { PushTrace(event); });
  }
  engine_ = std::move(engine);
  {
    std::lock_guard<std::mutex> lock(mu_);
    model_ = config.model;
  }
  PublishStateLocked();
}

void ThreadedEngineImpl::Unload() {
  std::lock_guard<std::mutex> engine_lock(engine_mu_);
  AbortEverythingLocked();
  engine_.reset();
  PublishStateLocked();
}

void ThreadedEngineImpl::Reset() {
  std::lock_guard<std::mutex> engine_lock(engine_mu_);
  AbortEverythingLocked();
  if (engine_) {
    std::vector<RequestDelta> deltas;
    engine_->Reset(&deltas);
    PushDeltas(std::move(deltas));
  }
  PublishStateLocked();
}

void ThreadedEngineImpl::AddRequest(const std::string& request_id,
                                    std::vector<int32_t> prompt_token_ids,
                                    const std::string& generation_config_json,
                                    std::vector<std::shared_ptr<TokenConstraint>> constraints) {
  // A bad generation config is the request's problem, not the caller's: it becomes an error
  // delta like any other unservable request.
  GenerationConfig config;
  std::string error;
  try {
    config = GenerationConfig::FromJSON(generation_config_json);
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (error.empty() && !constraints.empty() && static_cast<int64_t>(constraints.size()) != config.n) {
    error = "add_request: " + std::to_string(constraints.size()) + " token constraints for n = " +
            std::to_string(config.n) + " choices (give none or one per choice)";
  }
  auto request = std::make_unique<Request>(request_id, std::move(prompt_token_ids), config);
  request->error = error;
  if (!constraints.empty() && error.empty()) {
    request->constraint = constraints.front();
    request->choice_constraints = std::move(constraints);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (exit_requested_) throw std::runtime_error("add_request: the engine has been shut down");
    if (!active_ids_.emplace(request_id, request->slots()).second) {
      throw std::invalid_argument("add_request: request id '" + request_id + "' is already active");
    }
    request_queue_.push_back(std::move(request));
  }
  loop_cv_.notify_one();
}

void ThreadedEngineImpl::AbortRequest(const std::string& request_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    abort_queue_.push_back(request_id);
  }
  loop_cv_.notify_one();
}

void ThreadedEngineImpl::RunBackgroundLoop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (loop_running_) throw std::runtime_error("run_background_loop is already running");
    loop_running_ = true;
  }
  for (;;) {
    std::deque<RequestPtr> requests;
    std::vector<std::string> aborts;
    {
      std::unique_lock<std::mutex> lock(mu_);
      loop_cv_.wait(lock, [this] {
        return exit_requested_ || !request_queue_.empty() || !abort_queue_.empty() ||
               engine_has_work_;
      });
      if (exit_requested_) break;
      requests.swap(request_queue_);
      aborts.swap(abort_queue_);
    }
    StepOnce(std::move(requests), std::move(aborts));
  }
  {
    std::lock_guard<std::mutex> engine_lock(engine_mu_);
    AbortEverythingLocked();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    loop_running_ = false;
    loop_finished_ = true;
  }
  stream_cv_.notify_all();
}

void ThreadedEngineImpl::StepOnce(std::deque<RequestPtr> requests,
                                  std::vector<std::string> aborts) {
  std::lock_guard<std::mutex> engine_lock(engine_mu_);
  std::vector<RequestDelta> deltas;
  // Adds before aborts: an abort issued right after its add must find the request.
  for (RequestPtr& r : requests) {
    if (engine_) {
      engine_->AddRequest(std::move(r), &deltas);
    } else {
      FinalDeltas(*r, FinishReason::kError, "no model loaded (call reload)", &deltas);
    }
  }
  if (engine_) {
    for (const std::string& id : aborts) engine_->AbortRequest(id, &deltas);
  }
  DeliverLocked(std::move(deltas));

  if (engine_ && engine_->HasUnfinished()) {
    try {
      engine_->Step([this](std::vector<RequestDelta> d) { DeliverLocked(std::move(d)); });
    } catch (const std::exception& e) {
      // Actions contain model errors per batch; anything reaching here is unexpected. Fail the
      // requests in flight rather than the process, and keep serving new ones.
      std::vector<RequestDelta> failed;
      engine_->FinishAll(FinishReason::kError, std::string("engine step failed: ") + e.what(),
                         &failed);
      PushDeltas(std::move(failed));
    }
  }
  PublishStateLocked();
}

void ThreadedEngineImpl::RunBackgroundStreamBackLoop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stream_loop_running_) {
      throw std::runtime_error("run_background_stream_back_loop is already running");
    }
    stream_loop_running_ = true;
  }
  for (;;) {
    std::vector<RequestDelta> deltas;
    std::vector<std::string> traces;
    {
      std::unique_lock<std::mutex> lock(mu_);
      stream_cv_.wait(lock, [this] {
        return !delta_queue_.empty() || !trace_queue_.empty() ||
               (exit_requested_ && loop_finished_);
      });
      if (delta_queue_.empty() && trace_queue_.empty()) {  // exit, everything delivered
        stream_loop_running_ = false;
        break;
      }
      deltas.swap(delta_queue_);
      traces.swap(trace_queue_);
    }
    // User code runs with no lock held; a throwing callback must not end delivery.
    for (const std::string& event : traces) {
      try {
        trace_recorder_(event);
      } catch (const std::exception& e) {
        std::cerr << "[tvmlm] trace_recorder raised: " << e.what() << "\n";
      }
    }
    if (!deltas.empty()) {
      try {
        stream_callback_(std::move(deltas));
      } catch (const std::exception& e) {
        std::cerr << "[tvmlm] stream_callback raised: " << e.what() << "\n";
      }
    }
  }
}

void ThreadedEngineImpl::ExitBackgroundLoop() {
  bool loop_running;
  {
    std::lock_guard<std::mutex> lock(mu_);
    exit_requested_ = true;
    loop_running = loop_running_;
  }
  loop_cv_.notify_all();
  if (!loop_running) {
    // No step loop to do the final aborts (never started, or already gone): do them here so the
    // stream-back loop can deliver them and return.
    {
      std::lock_guard<std::mutex> engine_lock(engine_mu_);
      AbortEverythingLocked();
    }
    std::lock_guard<std::mutex> lock(mu_);
    loop_finished_ = true;
  }
  stream_cv_.notify_all();
}

std::string ThreadedEngineImpl::Metrics() {
  std::optional<MetricsSnapshot> snapshot;
  std::string model;
  {
    std::lock_guard<std::mutex> lock(mu_);
    snapshot = metrics_;
    model = model_;
  }
  return snapshot ? MetricsJSON(model, *snapshot) : "{\"loaded\": false}";
}

void ThreadedEngineImpl::PushDeltas(std::vector<RequestDelta> deltas) {
  if (deltas.empty()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (RequestDelta& d : deltas) {
      if (d.finish_reason != FinishReason::kNotFinished) {
        auto it = active_ids_.find(d.request_id);
        if (it != active_ids_.end() && --it->second <= 0) active_ids_.erase(it);
      }
      delta_queue_.push_back(std::move(d));
    }
  }
  stream_cv_.notify_one();
}

void ThreadedEngineImpl::DeliverLocked(std::vector<RequestDelta> deltas) {
  if (deltas.empty()) return;
  PublishStateLocked();
  PushDeltas(std::move(deltas));
}

void ThreadedEngineImpl::PushTrace(std::string event_json) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    trace_queue_.push_back(std::move(event_json));
  }
  stream_cv_.notify_one();
}

void ThreadedEngineImpl::AbortEverythingLocked() {
  std::deque<RequestPtr> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued.swap(request_queue_);
    abort_queue_.clear();
  }
  std::vector<RequestDelta> deltas;
  for (const RequestPtr& r : queued) FinalDeltas(*r, FinishReason::kAbort, "", &deltas);
  if (engine_) engine_->FinishAll(FinishReason::kAbort, "", &deltas);
  PushDeltas(std::move(deltas));
}

void ThreadedEngineImpl::PublishStateLocked() {
  bool has_work = engine_ && engine_->HasUnfinished();
  std::optional<MetricsSnapshot> metrics;
  if (engine_) metrics = engine_->Metrics();
  std::lock_guard<std::mutex> lock(mu_);
  engine_has_work_ = has_work;
  metrics_ = metrics;
}

}  // namespace tvmlm
