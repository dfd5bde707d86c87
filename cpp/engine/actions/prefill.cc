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
  /*! \brief Logits of every token (prompt logprobs), not just the last one. */
  bool all_rows;
};

// The next batch_prefill call: uncomputed tokens of the requests being prefilled, in admission
// order, until the chunk is full; the last one may be split and continues next step. A request
// that wants prompt logprobs gets logits for each of its tokens: those rows are bounded by the
// compiled batch size (batch_prefill's logit positions), so its prompt goes in smaller pieces.
std::vector<Chunk> NextChunks(const EngineState& s) {
  std::vector<Chunk> chunks;
  int64_t budget = s.prefill_chunk_size;
  const int64_t max_rows = s.model().metadata().max_batch_size;
  int64_t rows = max_rows > 0 ? max_rows : 128;
  for (const RequestPtr& r : s.running) {
    if (budget == 0 || rows == 0) break;
    if (!r->prefilling()) continue;
    int64_t take = std::min(r->prefill_target - r->num_computed, budget);
    const bool all_rows = r->needs_prompt_logits();
    if (all_rows) take = std::min(take, rows);
    chunks.push_back({r.get(), take, all_rows});
    budget -= take;
    rows -= all_rows ? take : 1;
  }
  return chunks;
}

// Row `row` of a chunk starting at position `start` holds the logits after token start + row,
// i.e. the distribution of the prompt token at start + row + 1 (the last row samples instead).
// Entries are kept until the first token's delta, so a preempted request's recomputation skips
// the positions it already has.
void AddPromptLogprobs(EngineState* s, Request* r, int64_t start, int64_t length,
                       const Logits& logits, int64_t first_row) {
  const auto prompt = static_cast<int64_t>(r->prompt.size());
  for (int64_t row = 0; row < length && start + row + 1 < prompt; ++row) {
    const int64_t position = start + row + 1;
    if (position <= static_cast<int64_t>(r->unsent_prompt_logprobs.size())) continue;
    r->unsent_prompt_logprobs.push_back(s->sampler.PlainLogprob(
        logits.row(first_row + row), logits.vocab, r->prompt[position], r->config.top_logprobs));
  }
  if (start + length >= prompt) r->prompt_logprobs_done = true;
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
    s->SampleAndCommit(c, row, vocab);
  }
}

}  // namespace

void PrefillAction(EngineState* s) {
  std::vector<Chunk> chunks = NextChunks(*s);
  if (chunks.empty()) return;
  std::vector<int64_t> seq_ids;
  std::vector<std::vector<int32_t>> inputs;
  std::vector<int64_t> rows;
  bool any_all_rows = false;
  int64_t num_tokens = 0;
  for (const Chunk& c : chunks) {
    seq_ids.push_back(c.request->seq_id);
    rows.push_back(c.all_rows ? c.length : 1);
    any_all_rows = any_all_rows || c.all_rows;
    std::vector<int32_t> tokens;
    for (int64_t i = 0; i < c.length; ++i) tokens.push_back(c.request->token_at(c.request->num_computed + i));
    inputs.push_back(std::move(tokens));
    num_tokens += c.length;
  }

  const Clock::time_point start = Clock::now();
  Logits logits;
  try {
    logits = s->model().BatchPrefill(seq_ids, inputs, any_all_rows ? rows : std::vector<int64_t>{});
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

  // Prompt logprobs read the rows of each chunk from the position it started at.
  std::vector<int64_t> sample_rows;  // each chunk's last row
  int64_t first_row = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (chunks[i].all_rows) {
      Request* r = chunks[i].request;
      AddPromptLogprobs(s, r, r->num_computed, chunks[i].length, logits, first_row);
    }
    first_row += rows[i];
    sample_rows.push_back(first_row - 1);
  }
  std::vector<std::pair<const Request*, int64_t>> traced;
  for (const Chunk& c : chunks) {
    c.request->num_computed += c.length;
    traced.emplace_back(c.request, c.length);
  }
  TracePrefill(s, traced, start, end);
  for (size_t i = 0; i < chunks.size(); ++i) {
    Request* r = chunks[i].request;
    // Only a request whose last token went in has meaningful logits.
    float* row = logits.data.data() + sample_rows[i] * logits.vocab;
    if (r->num_computed == r->prefill_target) StartChoices(s, r, row, logits.vocab);
  }
}

}  // namespace tvmlm
