#include <chrono>
#include <string>

#include "constraint/constrain.h"
#include "engine/actions/actions.h"
#include "engine/trace.h"

namespace tvmlm {

namespace {

bool Decoding(const Request& r) { return !r.finished() && r.status == RequestStatus::kRunning && !r.prefilling(); }

// Pages the decoding requests need for one more token each: one per sequence on a page boundary.
int64_t PagesNeeded(const EngineState& s) {
  int64_t pages = 0;
  for (const RequestPtr& r : s.running) {
    if (Decoding(*r)) pages += s.kv.GrowPages(r->num_computed, r->num_computed + 1);
  }
  return pages;
}

// Cached prefixes go first, then the newest requests (recomputed when re-admitted). A lone
// request always fits: Validate capped its length at the KV capacity.
void MakeRoom(EngineState* s) {
  while (PagesNeeded(*s) > s->FreePages()) {
    if (s->EvictCachedPrefix()) continue;
    if (s->running.size() <= 1) break;
    s->PreemptNewest();
  }
}

}  // namespace

void DecodeAction(EngineState* s) {
  MakeRoom(s);
  std::vector<Request*> batch;
  std::vector<int64_t> seq_ids;
  std::vector<int32_t> tokens;
  for (const RequestPtr& r : s->running) {
    if (!Decoding(*r)) continue;
    batch.push_back(r.get());
    seq_ids.push_back(r->seq_id);
    tokens.push_back(r->generated.back());  // the sampled token not yet in the KV cache
  }
  if (batch.empty()) return;

  const Clock::time_point start = Clock::now();
  Logits logits;
  try {
    logits = s->model().BatchDecode(seq_ids, tokens);
  } catch (const std::exception& e) {
    for (Request* r : batch) {
      s->Finish(r, FinishReason::kError, std::string("decode failed: ") + e.what());
    }
    return;
  }
  const Clock::time_point end = Clock::now();
  double seconds = std::chrono::duration<double>(end - start).count();
  s->metrics.decode_tokens += static_cast<int64_t>(seq_ids.size());
  s->metrics.decode_seconds += seconds;
  TraceDecode(s, batch, start, end);

  for (size_t i = 0; i < batch.size(); ++i) {
    Request* r = batch[i];
    r->num_computed += 1;
    float* row = logits.data.data() + static_cast<int64_t>(i) * logits.vocab;
    if (!ConstrainLogits(s, r, row, logits.vocab)) continue;
    s->SampleAndCommit(r, row, logits.vocab);
  }
}

}  // namespace tvmlm
