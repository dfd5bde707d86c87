#include <algorithm>
#include <chrono>
#include <string>

#include "engine/actions/actions.h"
#include "json_util.h"

namespace tvmlm {

namespace {

struct Chunk {
  Request* request;
  int64_t length;
};

// The next batch_prefill call: uncomputed tokens of the requests being prefilled, in admission
// order, until the chunk is full; the last one may be split and continues next step.
std::vector<Chunk> NextChunks(const EngineState& s) {
  std::vector<Chunk> chunks;
  int64_t budget = s.prefill_chunk_size;
  for (const RequestPtr& r : s.running) {
    if (budget == 0) break;
    if (!r->prefilling()) continue;
    int64_t take = std::min(r->prefill_target - r->num_computed, budget);
    chunks.push_back({r.get(), take});
    budget -= take;
  }
  return chunks;
}

void TraceEvent(EngineState* s, int64_t batch, int64_t tokens, double seconds) {
  if (!s->trace) return;
  json::Object ev;
  ev.Set(tvm::ffi::String("event"), tvm::ffi::String("prefill"));
  ev.Set(tvm::ffi::String("batch_size"), batch);
  ev.Set(tvm::ffi::String("tokens"), tokens);
  ev.Set(tvm::ffi::String("seconds"), seconds);
  s->trace(json::Stringify(ev));
}

// The prompt of `r` is in the KV cache: fork its other choices, then sample every choice's
// first token from the same logits, each with its own random stream.
void StartChoices(EngineState* s, Request* r, const float* logits, int64_t vocab) {
  std::vector<Request*> choices = {r};
  try {
    for (int64_t i = 1; i <= r->pending_forks; ++i) choices.push_back(s->ForkChoice(r, r->index + i));
  } catch (const std::exception& e) {
    // Choices not yet forked finish with the parent (their final deltas come with its own).
    r->pending_forks -= static_cast<int64_t>(choices.size()) - 1;
    for (Request* c : choices) s->Finish(c, FinishReason::kError, std::string("fork failed: ") + e.what());
    return;
  }
  r->pending_forks = 0;
  for (Request* c : choices) s->CommitToken(c, SampleToken(logits, vocab, c->config, &c->rng));
}

}  // namespace

void PrefillAction(EngineState* s) {
  std::vector<Chunk> chunks = NextChunks(*s);
  if (chunks.empty()) return;
  std::vector<int64_t> seq_ids;
  std::vector<std::vector<int32_t>> inputs;
  int64_t num_tokens = 0;
  for (const Chunk& c : chunks) {
    seq_ids.push_back(c.request->seq_id);
    std::vector<int32_t> tokens;
    for (int64_t i = 0; i < c.length; ++i) tokens.push_back(c.request->token_at(c.request->num_computed + i));
    inputs.push_back(std::move(tokens));
    num_tokens += c.length;
  }

  auto start = std::chrono::steady_clock::now();
  Logits logits;
  try {
    logits = s->model().BatchPrefill(seq_ids, inputs);
  } catch (const std::exception& e) {
    // Which request broke the batch is unknown: fail them all, keep the engine serving.
    for (const Chunk& c : chunks) {
      s->Finish(c.request, FinishReason::kError, std::string("prefill failed: ") + e.what());
    }
    return;
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  s->metrics.prefill_tokens += num_tokens;
  s->metrics.prefill_seconds += seconds;
  TraceEvent(s, static_cast<int64_t>(chunks.size()), num_tokens, seconds);

  for (size_t i = 0; i < chunks.size(); ++i) {
    Request* r = chunks[i].request;
    r->num_computed += chunks[i].length;
    // Only a request whose last token went in has meaningful logits.
    if (r->num_computed == r->prefill_target) StartChoices(s, r, logits.row(i), logits.vocab);
  }
}

}  // namespace tvmlm
