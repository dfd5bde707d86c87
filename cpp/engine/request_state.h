// One request as the engine sees it, from arrival to its last delta.
#ifndef TVMLM_ENGINE_REQUEST_STATE_H_
#define TVMLM_ENGINE_REQUEST_STATE_H_

#include <tvmlm/config.h>
#include <tvmlm/request.h>

#include <cstdint>
#include <string>
#include <vector>

#include "sampler/sampler.h"

namespace tvmlm {

enum class RequestStatus { kWaiting, kRunning, kFinished };

struct Request {
  Request(std::string id, std::vector<int32_t> prompt, GenerationConfig config)
      : id(std::move(id)), prompt(std::move(prompt)), config(std::move(config)),
        rng(this->config.seed) {}

  std::string id;
  std::vector<int32_t> prompt;
  GenerationConfig config;
  /*! \brief Every sampled token, a final stop token included. */
  std::vector<int32_t> generated;

  RequestStatus status = RequestStatus::kWaiting;
  /*! \brief KV cache sequence while admitted, else -1. */
  int64_t seq_id = -1;
  /*!
   * \brief Tokens of prompt+generated already in the KV cache. While running, this is all of them
   * but the last sampled token, which the next decode feeds.
   */
  int64_t num_computed = 0;
  /*! \brief Admitted at least once (preempted requests are re-admitted). */
  bool ever_admitted = false;

  /*! \brief Tokens sampled since the last delta (stop tokens excluded). */
  std::vector<int32_t> unsent_tokens;
  FinishReason finish_reason = FinishReason::kNotFinished;
  std::string error;
  SamplerRng rng;

  int64_t total_len() const { return static_cast<int64_t>(prompt.size() + generated.size()); }
  int32_t token_at(int64_t i) const {
    auto p = static_cast<int64_t>(prompt.size());
    return i < p ? prompt[i] : generated[i - p];
  }
  bool finished() const { return status == RequestStatus::kFinished; }
};

}  // namespace tvmlm

#endif  // TVMLM_ENGINE_REQUEST_STATE_H_
