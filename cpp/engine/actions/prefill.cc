#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "constraint/constrain.h"
#include "engine/actions/actions.h"
#include "engine/trace.h"

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

// The prompt of `r` is in the KV cache: fork its other choices, then sample every choice's
// first token from the same logits, each with its own random stream.
void StartChoices(EngineState* s, Request* r, float* logits, int64_t vocab) {
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
  std::vector<float> own_row;  // choices may have different constraints: each masks a copy
  for (Request* c : choices) {
    float* row = logits;
    if (c->constraint && choices.size() > 1) {
      own_row.assign(logits, logits + vocab);
      row = own_row.data();
    }
    if (!ConstrainLogits(s, c, row, vocab)) continue;
    s->CommitToken(c, SampleToken(row, vocab, c->config, &c->rng));
  }
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

  const Clock::time_point start = Clock::now();
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
  const Clock::time_point end = Clock::now();
  double seconds = std::chrono::duration<double>(end - start).count();
  s->metrics.prefill_tokens += num_tokens;
  s->metrics.prefill_seconds += seconds;

  std::vector<std::pair<const Request*, int64_t>> traced;
  for (const Chunk& c : chunks) {
    c.request->num_computed += c.length;
    traced.emplace_back(c.request, c.length);
  }
  TracePrefill(s, traced, start, end);
  for (size_t i = 0; i < chunks.size(); ++i) {
    Request* r = chunks[i].request;
    // Only a request whose last token went in has meaningful logits.
    float* row = logits.data.data() + static_cast<int64_t>(i) * logits.vocab;
    if (r->num_computed == r->prefill_target) StartChoices(s, r, row, logits.vocab);
  }
}

}  // namespace tvmlm
