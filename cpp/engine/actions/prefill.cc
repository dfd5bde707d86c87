#include <algorithm>
#include <chrono>
#include <string>

#include "engine/actions/actions.h"
#include "json_util.h"

namespace tvmlm {

namespace {

// Move waiting requests into the running batch while there is a sequence slot and KV room for
// the prompt plus one decoded token. Strict FIFO: a large request at the head is not overtaken.
std::vector<Request*> Admit(EngineState* s) {
  std::vector<Request*> admitted;
  while (!s->waiting.empty() && static_cast<int64_t>(s->running.size()) < s->max_num_sequence) {
    Request* r = s->waiting.front().get();
    if (s->kv.PagesFor(r->total_len() + 1) > s->kv.free_pages()) break;
    s->running.push_back(std::move(s->waiting.front()));
    s->waiting.pop_front();
    try {
      s->Admit(r);
      admitted.push_back(r);
    } catch (const std::exception& e) {
      s->Finish(r, FinishReason::kError, std::string("admission failed: ") + e.what());
    }
  }
  return admitted;
}

// A request being prefilled: it is done when `target` tokens are in the KV cache. (Its total
// length grows by one as soon as its next token is sampled, so it is no measure of "done".)
struct Pending {
  Request* request;
  int64_t target;
};

struct Chunk {
  Request* request;
  int64_t length;
  bool last;  // the request's final tokens go in with this chunk
};

// The next batch_prefill call: requests' uncomputed tokens in admission order until the prefill
// chunk is full; the last one may be split and continues in the next call.
std::vector<Chunk> NextChunks(const std::vector<Pending>& pending, int64_t chunk_size) {
  std::vector<Chunk> chunks;
  int64_t budget = chunk_size;
  for (const Pending& p : pending) {
    if (budget == 0) break;
    int64_t remaining = p.target - p.request->num_computed;
    if (p.request->finished() || remaining <= 0) continue;
    int64_t take = std::min(remaining, budget);
    chunks.push_back({p.request, take, take == remaining});
    budget -= take;
  }
  return chunks;
}

void RunPrefill(EngineState* s, const std::vector<Chunk>& chunks) {
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
  if (s->trace) {
    json::Object ev;
    ev.Set(tvm::ffi::String("event"), tvm::ffi::String("prefill"));
    ev.Set(tvm::ffi::String("batch_size"), static_cast<int64_t>(chunks.size()));
    ev.Set(tvm::ffi::String("tokens"), num_tokens);
    ev.Set(tvm::ffi::String("seconds"), seconds);
    s->trace(json::Stringify(ev));
  }

  for (size_t i = 0; i < chunks.size(); ++i) {
    Request* r = chunks[i].request;
    r->num_computed += chunks[i].length;
    // Only a request whose last token went in has meaningful logits: sample its next token.
    if (chunks[i].last) {
      s->CommitToken(r, SampleToken(logits.row(i), logits.vocab, r->config, &r->rng));
    }
  }
}

}  // namespace

void PrefillAction(EngineState* s) {
  std::vector<Pending> pending;
  for (Request* r : Admit(s)) pending.push_back({r, r->total_len()});
  for (;;) {
    std::vector<Chunk> chunks = NextChunks(pending, s->prefill_chunk_size);
    if (chunks.empty()) break;
    RunPrefill(s, chunks);
  }
}

}  // namespace tvmlm
