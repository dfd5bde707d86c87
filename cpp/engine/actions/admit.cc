#include <string>

#include "engine/actions/actions.h"

namespace tvmlm {

namespace {

// Pages `r` takes at admission from `match`: its prefill and forks, plus the first decode page
// of each choice, so an admitted request can always make its first step.
int64_t AdmissionPages(const EngineState& s, const Request& r, const PrefixMatch& match) {
  int64_t start = match.seq_id >= 0 ? match.length : 0;
  // A fork at an unaligned position copies the partial page; growth counts from there. (A take-over
  // that pops tokens of a shared block forks inside TVM: the same page at most.)
  int64_t pages = s.kv.ForkPages(start) + s.kv.GrowPages(start, r.total_len());
  return pages + r.pending_forks * s.kv.ForkPages(r.total_len()) + r.slots();
}

// Make room for `r` by evicting cached prefixes; drops the match when only its own cache entry
// is left to evict. False when `r` does not fit even so.
bool MakeRoom(EngineState* s, const Request& r, PrefixMatch* match) {
  for (;;) {
    if (AdmissionPages(*s, r, *match) <= s->FreePages()) return true;
    if (s->EvictCachedPrefix(match->seq_id)) continue;
    if (!match->from_cache) return false;
    s->EvictCachedPrefix();  // the match's own entry: start from scratch instead
    *match = PrefixMatch();
  }
}

}  // namespace

void AdmitAction(EngineState* s) {
  // Strict FIFO: a large request at the head is not overtaken (no starvation).
  while (!s->waiting.empty()) {
    Request* r = s->waiting.front().get();
    if (s->SlotsUsed() + r->slots() > s->max_num_sequence) break;
    // Prompt logprobs need logits at every prompt position: nothing may come from the cache.
    PrefixMatch match = r->needs_prompt_logits() ? PrefixMatch() : s->FindPrefix(*r);
    if (!MakeRoom(s, *r, &match)) break;
    s->running.push_back(std::move(s->waiting.front()));
    s->waiting.pop_front();
    try {
      s->Admit(r, match);
    } catch (const std::exception& e) {
      s->Finish(r, FinishReason::kError, std::string("admission failed: ") + e.what());
    }
  }
}

}  // namespace tvmlm
