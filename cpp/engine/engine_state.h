// Everything one engine step reads and writes: the model, the request queues, the KV budget and
// the counters, plus the bookkeeping every scheduling action shares.
#ifndef TVMLM_ENGINE_ENGINE_STATE_H_
#define TVMLM_ENGINE_ENGINE_STATE_H_

#include <tvmlm/config.h>
#include <tvmlm/request.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/request_state.h"
#include "kv/kv_budget.h"
#include "model/model.h"

namespace tvmlm {

struct EngineMetrics {
  int64_t requests_finished = 0;
  int64_t requests_errored = 0;
  /*! \brief Prompt tokens of admitted requests, each request counted once. */
  int64_t prompt_tokens = 0;
  /*! \brief Sampled tokens. */
  int64_t generated_tokens = 0;
  /*! \brief Tokens run through prefill, recomputation after preemption included. */
  int64_t prefill_tokens = 0;
  double prefill_seconds = 0.0;
  int64_t decode_tokens = 0;
  double decode_seconds = 0.0;
  int64_t preemptions = 0;
};

using RequestPtr = std::unique_ptr<Request>;

class EngineState {
 public:
  using TraceFn = std::function<void(const std::string& event_json)>;

  EngineState(std::unique_ptr<Model> model, const EngineConfig& config);

  Model& model() { return *model_; }
  const Model& model() const { return *model_; }

  // Limits resolved against the model library.
  int64_t max_num_sequence = 0;
  int64_t prefill_chunk_size = 0;
  /*! \brief Longest prompt + completion: min(context window, KV capacity). */
  int64_t max_sequence_length = 0;

  /*! \brief Arrived, or preempted (those at the front), not yet in the KV cache. */
  std::deque<RequestPtr> waiting;
  /*! \brief In the KV cache, in admission order (the newest is preempted first). */
  std::vector<RequestPtr> running;
  KVBudget kv;
  EngineMetrics metrics;
  TraceFn trace;

  /*! \brief Why `request` can never be served ("" when it can). */
  std::string Validate(const Request& request) const;
  /*! \brief Give `request` a KV sequence holding its tokens after the coming prefill. */
  void Admit(Request* request);
  /*! \brief Record a sampled token and apply the stop rules. */
  void CommitToken(Request* request, int32_t token);
  /*! \brief Mark finished and free its KV sequence. Idempotent. */
  void Finish(Request* request, FinishReason reason, const std::string& error = "");
  /*! \brief Free the KV of the newest running request and requeue it first in line. */
  void PreemptNewest();
  /*! \brief Append deltas for requests with news, and drop finished requests. */
  void CollectDeltas(std::vector<RequestDelta>* out);

 private:
  void FreeSequence(Request* request);

  std::unique_ptr<Model> model_;
  int64_t next_seq_id_ = 0;
};

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_ENGINE_STATE_H_
