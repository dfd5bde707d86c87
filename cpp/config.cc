#include <tvmlm/config.h>

#include <cmath>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>

#include "json_util.h"

namespace tvmlm {

namespace {

void Require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

// "logit_bias": [[token_id, bias], ...] with bias in [-100, 100] (OpenAI's range).
std::vector<std::pair<int32_t, float>> ParseLogitBias(const json::Object& obj) {
  std::vector<std::pair<int32_t, float>> out;
  if (json::IsNullOrMissing(obj, "logit_bias")) return out;
  const char* shape = "generation config: 'logit_bias' must be an array of [token_id, bias] pairs";
  for (const json::Value& item : json::GetArray(obj, "logit_bias")) {
    auto pair = item.try_cast<tvm::ffi::json::Array>();
    Require(pair.has_value() && pair->size() == 2, shape);
    auto id = (*pair)[0].as<int64_t>();
    std::optional<double> bias = (*pair)[1].as<double>();
    if (!bias) {
      if (auto i = (*pair)[1].as<int64_t>()) bias = static_cast<double>(*i);
    }
    Require(id.has_value() && bias.has_value(), shape);
    Require(*id >= 0 && *id <= std::numeric_limits<int32_t>::max(),
            "generation config: logit_bias token ids must be non-negative");
    Require(*bias >= -100.0 && *bias <= 100.0,
            "generation config: logit_bias values must be in [-100, 100]");
    out.emplace_back(static_cast<int32_t>(*id), static_cast<float>(*bias));
  }
  return out;
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
  g.min_p = json::GetDouble(obj, "min_p", g.min_p);
  g.presence_penalty = json::GetDouble(obj, "presence_penalty", g.presence_penalty);
  g.frequency_penalty = json::GetDouble(obj, "frequency_penalty", g.frequency_penalty);
  g.repetition_penalty = json::GetDouble(obj, "repetition_penalty", g.repetition_penalty);
  g.logit_bias = ParseLogitBias(obj);
  g.logprobs = json::GetBool(obj, "logprobs", g.logprobs);
  g.top_logprobs = json::GetInt(obj, "top_logprobs", g.top_logprobs);
  g.prompt_logprobs = json::GetBool(obj, "prompt_logprobs", g.prompt_logprobs);
  Require(g.n >= 1, "generation config: 'n' must be >= 1");
  Require(g.max_tokens >= 1, "generation config: 'max_tokens' must be >= 1");
  Require(g.temperature >= 0.0, "generation config: 'temperature' must be >= 0");
  Require(g.top_p > 0.0 && g.top_p <= 1.0, "generation config: 'top_p' must be in (0, 1]");
  Require(g.top_k >= 0, "generation config: 'top_k' must be >= 0");
  Require(g.min_p >= 0.0 && g.min_p <= 1.0, "generation config: 'min_p' must be in [0, 1]");
  Require(std::abs(g.presence_penalty) <= 2.0,
          "generation config: 'presence_penalty' must be in [-2, 2]");
  Require(std::abs(g.frequency_penalty) <= 2.0,
          "generation config: 'frequency_penalty' must be in [-2, 2]");
  Require(g.repetition_penalty > 0.0 && std::isfinite(g.repetition_penalty),
          "generation config: 'repetition_penalty' must be > 0");
  Require(g.top_logprobs >= 0 && g.top_logprobs <= kMaxTopLogprobs,
          "generation config: 'top_logprobs' must be in [0, " + std::to_string(kMaxTopLogprobs) + "]");
  return g;
}

}  // namespace tvmlm
