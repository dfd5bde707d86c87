// Everything one engine step reads and writes: the model, the request queues, the KV budget, the
// prefix cache and the counters, plus the bookkeeping every scheduling action shares. The methods
// live by concern: engine_state.cc (limits, validation, capacity), prefix_match.cc,
// request_lifecycle.cc (admit, fork, commit, preempt, finish) and collect_deltas.cc.
#ifndef TVMLM_ENGINE_ENGINE_STATE_H_
#define TVMLM_ENGINE_ENGINE_STATE_H_

#include <tvmlm/config.h>
#include <tvmlm/delta.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/metrics.h"
#include "engine/request_state.h"
#include "kv/kv_budget.h"
#include "kv/prefix_cache.h"
#include "model/model.h"

namespace tvmlm {

using RequestPtr = std::unique_ptr<Request>;

/*! \brief Where an admitted request's KV can start: a sequence sharing its first `length` tokens. */
struct PrefixMatch {
  int64_t seq_id = -1;
  int64_t length = 0;
  bool from_cache = false;
  /*!
   * \brief Take over the cached sequence itself (its last `pop` tokens dropped) instead of
   * forking it: a continued chat. A forked sequence decodes with an extra attention pass per
   * layer over its parent's block; a taken-over one stays a single block.
   */
  bool take_over = false;
  int64_t pop = 0;
};

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
  bool prefix_cache_enabled = true;

  /*! \brief Arrived, or preempted (those at the front), not yet in the KV cache. */
  std::deque<RequestPtr> waiting;
  /*! \brief In the KV cache, in admission order (the newest is preempted first). */
  std::vector<RequestPtr> running;
  KVBudget kv;
  PrefixCache prefix_cache;
  EngineMetrics metrics;
  TraceFn trace;
  /*! \brief Scratch buffers of the sampling pipeline (the step loop is one thread). */
  Sampler sampler;

  /*! \brief Why `request` can never be served ("" when it can). */
  std::string Validate(const Request& request) const;

  /*! \brief Sequence slots the running requests take, choices still to be forked included. */
  int64_t SlotsUsed() const;
  /*! \brief Free KV pages less those promised to admitted requests still being prefilled. */
  int64_t FreePages() const;
  /*! \brief Pages `request` takes to finish its prefill and fork its choices. */
  int64_t PrefillPages(const Request& request) const;
  /*! \brief Drop the least recently used cached prefix other than `keep`; false if none. */
  bool EvictCachedPrefix(int64_t keep = -1);
  /*! \brief The longest prefix of `request`'s tokens held by a cached or running sequence. */
  PrefixMatch FindPrefix(const Request& request) const;

  /*! \brief Give `request` a KV sequence: new, forked from `match`, or `match`'s own. */
  void Admit(Request* request, const PrefixMatch& match);
  /*! \brief Fork choice `index` of `parent` (just prefilled) into a new running request. */
  Request* ForkChoice(Request* parent, int64_t index);
  /*!
   * \brief Draw `request`'s next token from its row of logits (its config, random stream and
   * token counts) and commit it.
   */
  void SampleAndCommit(Request* request, const float* logits, int64_t vocab);
  /*! \brief Record a sampled token (and its logprob, when asked for) and apply the stop rules. */
  void CommitToken(Request* request, int32_t token, TokenLogprob* logprob = nullptr);
  /*! \brief Mark finished and free (or cache) its KV sequence. Idempotent. */
  void Finish(Request* request, FinishReason reason, const std::string& error = "");
  /*! \brief Free the KV of the newest running request and requeue it first in line. */
  void PreemptNewest();
  /*! \brief Append deltas for requests with news, and drop finished requests. */
  void CollectDeltas(std::vector<RequestDelta>* out);
  /*! \brief Forget the prefix cache's entries (after the KV cache was cleared). */
  void ForgetPrefixCache() { prefix_cache.Clear(); }

 private:
  void FreeSequence(Request* request, bool cacheable);
  void RemoveSequence(int64_t seq_id);

  std::unique_ptr<Model> model_;
  int64_t next_seq_id_ = 0;
};

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_ENGINE_STATE_H_
