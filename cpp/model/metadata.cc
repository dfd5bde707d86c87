#include "model/metadata.h"

#include <stdexcept>

#include "json_util.h"

namespace tvmlm {

ModelMetadata ModelMetadata::FromJSON(const std::string& text) {
  json::Object obj = json::ParseObject(text, "metadata.json");
  ModelMetadata m;
  m.json = text;
  m.architecture = json::GetString(obj, "architecture", "");
  m.vocab_size = json::GetInt(obj, "vocab_size");
  m.hidden_size = json::GetInt(obj, "hidden_size");
  m.context_window_size = json::GetInt(obj, "context_window_size");
  m.prefill_chunk_size = json::GetInt(obj, "prefill_chunk_size");
  m.max_batch_size = json::GetInt(obj, "max_batch_size");
  // "eos_token_ids" is the contract; HF's "eos_token_id" (an int or a list) is accepted too.
  std::vector<int64_t> eos;
  if (!json::IsNullOrMissing(obj, "eos_token_ids")) {
    eos = json::GetIntArray(obj, "eos_token_ids");
  } else if (!json::IsNullOrMissing(obj, "eos_token_id")) {
    if (auto one = json::GetOptionalIntIfScalar(obj, "eos_token_id")) {
      eos.push_back(*one);
    } else {
      eos = json::GetIntArray(obj, "eos_token_id");
    }
  }
  for (int64_t id : eos) m.eos_token_ids.push_back(static_cast<int32_t>(id));
  for (const json::Value& v : json::GetArray(obj, "params")) {
    json::Object p = json::AsObject(v, "metadata.json params entry");
    ParamInfo info;
    info.name = json::GetString(p, "name");
    info.shape = json::GetIntArray(p, "shape");
    info.dtype = json::GetString(p, "dtype");
    m.params.push_back(std::move(info));
  }
  if (m.vocab_size <= 0 || m.hidden_size <= 0 || m.context_window_size <= 0 ||
      m.prefill_chunk_size <= 0 || m.max_batch_size <= 0) {
    throw std::invalid_argument(
        "metadata.json: vocab_size, hidden_size, context_window_size, prefill_chunk_size and "
        "max_batch_size must be positive");
  }
  return m;
}

}  // namespace tvmlm
