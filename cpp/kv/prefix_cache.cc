#include "kv/prefix_cache.h"

#include <algorithm>

namespace tvmlm {

std::vector<int64_t> PrefixCache::Insert(int64_t seq_id, std::vector<int32_t> tokens) {
  entries_.push_back({seq_id, std::move(tokens), ++clock_});
  std::vector<int64_t> evicted;
  while (static_cast<int64_t>(entries_.size()) > max_sequences_) evicted.push_back(EvictLRU());
  return evicted;
}

int64_t PrefixCache::EvictLRU(int64_t keep) {
  auto victim = entries_.end();
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->seq_id == keep) continue;
    if (victim == entries_.end() || it->last_used < victim->last_used) victim = it;
  }
  if (victim == entries_.end()) return -1;
  int64_t seq_id = victim->seq_id;
  entries_.erase(victim);
  return seq_id;
}

void PrefixCache::Touch(int64_t seq_id) {
  for (Entry& e : entries_) {
    if (e.seq_id == seq_id) e.last_used = ++clock_;
  }
}

void PrefixCache::Release(int64_t seq_id) {
  entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                [seq_id](const Entry& e) { return e.seq_id == seq_id; }),
                 entries_.end());
}

std::vector<int64_t> PrefixCache::Clear() {
  std::vector<int64_t> ids;
  for (const Entry& e : entries_) ids.push_back(e.seq_id);
  entries_.clear();
  return ids;
}

int64_t PrefixCache::num_tokens() const {
  int64_t n = 0;
  for (const Entry& e : entries_) n += static_cast<int64_t>(e.tokens.size());
  return n;
}

}  // namespace tvmlm
