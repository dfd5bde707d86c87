// The model package's metadata.json (docs/contracts.md, section 1).
#ifndef TVMLM_MODEL_METADATA_H_
#define TVMLM_MODEL_METADATA_H_

#include <cstdint>
#include <string>
#include <vector>

namespace tvmlm {

struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;  // TVM spelling: "float32", "uint8", ...
};

struct ModelMetadata {
  std::string architecture;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t context_window_size = 0;
  int64_t prefill_chunk_size = 0;
  int64_t max_batch_size = 0;
  std::vector<int32_t> eos_token_ids;
  std::vector<ParamInfo> params;
  /*! \brief The file as read, handed to Python unchanged. */
  std::string json;

  /*! \brief Parse; throws std::invalid_argument naming a missing or malformed key. */
  static ModelMetadata FromJSON(const std::string& text);
};

}  // namespace tvmlm

#endif  // TVMLM_MODEL_METADATA_H_
