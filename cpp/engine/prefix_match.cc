// Prefix reuse at admission: the longest prefix of a request's tokens that a cached or running
// sequence already holds in the KV cache, and eviction of cached prefixes when pages run out.
#include <algorithm>

#include "engine/engine_state.h"

namespace tvmlm {

namespace {

// Common prefix of the first `limit` tokens of `r` with `tokens`.
template <typename Tokens>
int64_t CommonPrefix(const Request& r, int64_t limit, const Tokens& tokens, int64_t size) {
  int64_t n = std::min(limit, size);
  int64_t i = 0;
  while (i < n && r.token_at(i) == tokens(i)) ++i;
  return i;
}

}  // namespace

bool EngineState::EvictCachedPrefix(int64_t keep) {
  int64_t seq_id = prefix_cache.EvictLRU(keep);
  if (seq_id < 0) return false;
  RemoveSequence(seq_id);
  return true;
}

PrefixMatch EngineState::FindPrefix(const Request& r) const {
  PrefixMatch best;
  if (!prefix_cache_enabled) return best;
  // At least the last token is recomputed: its logits give the next token.
  const int64_t limit = r.total_len() - 1;
  for (const PrefixCache::Entry& e : prefix_cache.entries()) {
    auto tok = [&e](int64_t i) { return e.tokens[i]; };
    int64_t len = CommonPrefix(r, limit, tok, static_cast<int64_t>(e.tokens.size()));
    if (len > best.length) {
      // An entry the request extends (the earlier turns of its chat) is taken over, not forked,
      // when at most a page of it is dropped: that much is what a fork would copy anyway.
      int64_t pop = static_cast<int64_t>(e.tokens.size()) - len;
      best = {e.seq_id, len, true, pop <= kv.page_size(), pop};
    }
  }
  for (const RequestPtr& other : running) {
    if (other->seq_id < 0) continue;
    const Request* o = other.get();
    auto tok = [o](int64_t i) { return o->token_at(i); };
    int64_t len = CommonPrefix(r, limit, tok, o->num_computed);
    if (len > best.length) best = {o->seq_id, len, false, false, 0};
  }
  // Below a page, a fork saves less than the page it copies.
  if (best.length < kv.page_size()) return PrefixMatch();
  return best;
}

}  // namespace tvmlm
