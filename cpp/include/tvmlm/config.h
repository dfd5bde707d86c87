// Engine and generation configuration: plain structs, parsed from the JSON the Python layer (or a
// C++ host) sends.
#ifndef TVMLM_CONFIG_H_
#define TVMLM_CONFIG_H_

#include <tvmlm/export.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tvmlm {

/*! \brief What `ThreadedEngine::Reload` needs: which package, and how much room to serve it. */
struct EngineConfig {
  /*! \brief Compiled model package directory (lib.so, params.safetensors, metadata.json). */
  std::string model;
  /*! \brief Most sequences decoded together; capped by the library's compiled max batch size. */
  int64_t max_num_sequence = 4;
  /*! \brief KV cache capacity in tokens, summed over all sequences. */
  int64_t max_total_sequence_length = 8192;
  /*! \brief Most tokens in one prefill call; capped by the library's compiled chunk size. */
  int64_t prefill_chunk_size = 2048;
  /*! \brief CPU threads for TVM kernels; 0 = every CPU this process may run on. */
  int64_t num_threads = 0;
  /*! \brief Keep finished requests' KV and fork it for requests that share a token prefix. */
  bool prefix_cache = true;
  /*! \brief Most finished sequences the prefix cache keeps (least recently used go first). */
  int64_t prefix_cache_max_sequences = 16;

  /*! \brief Parse and validate; throws std::invalid_argument naming the bad field. */
  TVMLM_API static EngineConfig FromJSON(const std::string& json);
};

/*!
 * \brief Per-request sampling and stopping rules. The sampler (cpp/sampler/sampler.h) applies
 * them in this order: allowed-token mask, logit_bias, repetition / frequency / presence penalties,
 * temperature, top_k, top_p, min_p.
 */
struct GenerationConfig {
  int64_t max_tokens = 16;
  /*! \brief 0 = greedy. */
  double temperature = 0.0;
  double top_p = 1.0;
  /*! \brief 0 = no top-k cut. */
  int64_t top_k = 0;
  /*! \brief Drop tokens less likely than min_p times the most likely one; 0 = off. */
  double min_p = 0.0;
  /*! \brief OpenAI: logit -= presence_penalty if the token was generated before. [-2, 2]. */
  double presence_penalty = 0.0;
  /*! \brief OpenAI: logit -= frequency_penalty * times the token was generated. [-2, 2]. */
  double frequency_penalty = 0.0;
  /*!
   * \brief HF: a token seen in the prompt or the output has its logit divided by this when
   * positive, multiplied when negative. 1 = off; > 0.
   */
  double repetition_penalty = 1.0;
  /*! \brief Added to the logits of these tokens, each in [-100, 100] (OpenAI logit_bias). */
  std::vector<std::pair<int32_t, float>> logit_bias;
  /*! \brief Report each sampled token's log-probability (RequestDelta::logprobs). */
  bool logprobs = false;
  /*! \brief Most likely alternatives reported with each logprob, [0, 20]. */
  int64_t top_logprobs = 0;
  /*! \brief Report the log-probability of every prompt token after the first (echo). */
  bool prompt_logprobs = false;
  /*! \brief Fixed seed for reproducible sampling; empty = nondeterministic. */
  std::optional<uint64_t> seed;
  std::vector<int32_t> stop_token_ids;
  /*! \brief Keep generating past the model's end-of-sequence tokens. */
  bool ignore_eos = false;
  /*! \brief Choices sampled from one prompt (its KV is forked after prefill). */
  int64_t n = 1;

  /*! \brief Parse and validate; throws std::invalid_argument naming the bad field. */
  TVMLM_API static GenerationConfig FromJSON(const std::string& json);

  /*! \brief Any of the penalties is active (the request keeps token counts). */
  bool has_penalties() const {
    return presence_penalty != 0.0 || frequency_penalty != 0.0 || repetition_penalty != 1.0;
  }
  /*! \brief Largest number of logprob alternatives a token may need. */
  static constexpr int64_t kMaxTopLogprobs = 20;
};

}  // namespace tvmlm

#endif  // TVMLM_CONFIG_H_
