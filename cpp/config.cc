#include <tvmlm/config.h>

#include <limits>
#include <stdexcept>

#include "json_util.h"

namespace tvmlm {

namespace {

void Require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

}  // namespace

EngineConfig EngineConfig::FromJSON(const std::string& text) {
  json::Object obj = json::ParseObject(text, "engine config");
  EngineConfig c;
  c.model = json::GetString(obj, "model");
  c.max_num_sequence = json::GetInt(obj, "max_num_sequence", c.max_num_sequence);
  c.max_total_sequence_length =
      json::GetInt(obj, "max_total_sequence_length", c.max_total_sequence_length);
  c.prefill_chunk_size = json::GetInt(obj, "prefill_chunk_size", c.prefill_chunk_size);
  c.num_threads = json::GetInt(obj, "num_threads", c.num_threads);
  c.prefix_cache = json::GetBool(obj, "prefix_cache", c.prefix_cache);
  c.prefix_cache_max_sequences =
      json::GetInt(obj, "prefix_cache_max_sequences", c.prefix_cache_max_sequences);
  Require(!c.model.empty(), "engine config: 'model' must name a model package directory");
  Require(c.max_num_sequence >= 1, "engine config: 'max_num_sequence' must be >= 1");
  Require(c.max_total_sequence_length >= 1,
          "engine config: 'max_total_sequence_length' must be >= 1");
  Require(c.prefill_chunk_size >= 1, "engine config: 'prefill_chunk_size' must be >= 1");
  Require(c.num_threads >= 0, "engine config: 'num_threads' must be >= 0");
  Require(c.prefix_cache_max_sequences >= 0,
          "engine config: 'prefix_cache_max_sequences' must be >= 0");
  return c;
}

GenerationConfig GenerationConfig::FromJSON(const std::string& text) {
  json::Object obj = json::ParseObject(text, "generation config");
  GenerationConfig g;
  g.max_tokens = json::GetInt(obj, "max_tokens", g.max_tokens);
  g.temperature = json::GetDouble(obj, "temperature", g.temperature);
  g.top_p = json::GetDouble(obj, "top_p", g.top_p);
  g.top_k = json::GetInt(obj, "top_k", g.top_k);
  if (auto seed = json::GetOptionalInt(obj, "seed")) g.seed = static_cast<uint64_t>(*seed);
  for (int64_t id : json::GetIntArray(obj, "stop_token_ids")) {
    Require(id >= 0 && id <= std::numeric_limits<int32_t>::max(),
            "generation config: stop_token_ids must be non-negative token ids");
    g.stop_token_ids.push_back(static_cast<int32_t>(id));
  }
  g.ignore_eos = json::GetBool(obj, "ignore_eos", g.ignore_eos);
  g.n = json::GetInt(obj, "n", g.n);
  Require(g.n >= 1, "generation config: 'n' must be >= 1");
  Require(g.max_tokens >= 1, "generation config: 'max_tokens' must be >= 1");
  Require(g.temperature >= 0.0, "generation config: 'temperature' must be >= 0");
  Require(g.top_p > 0.0 && g.top_p <= 1.0, "generation config: 'top_p' must be in (0, 1]");
  Require(g.top_k >= 0, "generation config: 'top_k' must be >= 0");
  return g;
}

}  // namespace tvmlm
