// Engine and generation configuration: plain structs, parsed from the JSON the Python layer (or a
// C++ host) sends.
#ifndef TVMLM_CONFIG_H_
#define TVMLM_CONFIG_H_

#include <tvmlm/export.h>

#include <cstdint>
#include <optional>
#include <string>
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

/*! \brief Per-request sampling and stopping rules. */
struct GenerationConfig {
  int64_t max_tokens = 16;
  /*! \brief 0 = greedy. */
  double temperature = 0.0;
  double top_p = 1.0;
  /*! \brief 0 = no top-k cut. */
  int64_t top_k = 0;
  /*! \brief Fixed seed for reproducible sampling; empty = nondeterministic. */
  std::optional<uint64_t> seed;
  std::vector<int32_t> stop_token_ids;
  /*! \brief Keep generating past the model's end-of-sequence tokens. */
  bool ignore_eos = false;
  /*! \brief Choices sampled from one prompt (its KV is forked after prefill). */
  int64_t n = 1;

  /*! \brief Parse and validate; throws std::invalid_argument naming the bad field. */
  TVMLM_API static GenerationConfig FromJSON(const std::string& json);
};

}  // namespace tvmlm

#endif  // TVMLM_CONFIG_H_
