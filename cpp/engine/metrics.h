// The engine's counters (updated as requests move through a step) and the snapshot that
// metrics() turns into docs/contracts.md section 2's JSON.
#ifndef TVMLM_ENGINE_METRICS_H_
#define TVMLM_ENGINE_METRICS_H_

#include <cstdint>
#include <string>

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
  /*! \brief Tokens whose KV an admission forked (or took over) instead of computing. */
  int64_t prefix_hit_tokens = 0;
  /*! \brief Admissions that took over a cached sequence instead of forking it. */
  int64_t prefix_takeovers = 0;
  // Latencies of finished choices that produced tokens (seconds).
  int64_t ttft_count = 0;
  double ttft_sum = 0.0, ttft_max = 0.0;
  int64_t itl_count = 0;
  double itl_sum = 0.0, itl_max = 0.0;
};

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

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_METRICS_H_
