// Finished sequences kept in the KV cache, so that a later request sharing a token prefix (a
// system prompt, the earlier turns of a chat) forks their KV instead of recomputing it. TVM's
// fork shares whole pages and copies a partial last page, so a hit costs at most one page. A
// request that extends an entry (the next turn of a chat) takes the entry's sequence over instead
// (EngineState::FindPrefix), which keeps it one block deep for attention.
// A flat list with LRU eviction: it holds at most `max_sequences` entries (tens), and a scan is
// cheaper to read and to get right than a radix tree at that size.
#ifndef TVMLM_KV_PREFIX_CACHE_H_
#define TVMLM_KV_PREFIX_CACHE_H_

#include <cstdint>
#include <vector>

namespace tvmlm {

class PrefixCache {
 public:
  struct Entry {
    int64_t seq_id;
    /*! \brief The tokens whose KV the sequence holds. */
    std::vector<int32_t> tokens;
    uint64_t last_used;
  };

  explicit PrefixCache(int64_t max_sequences) : max_sequences_(max_sequences) {}

  /*!
   * \brief Keep `seq_id` (holding the KV of `tokens`). Returns the sequences the caller must
   * remove from the KV cache: the least recently used beyond the limit (or `seq_id` itself when
   * the limit is 0).
   */
  std::vector<int64_t> Insert(int64_t seq_id, std::vector<int32_t> tokens);
  /*! \brief Forget the least recently used entry other than `keep`; its seq id, or -1 if none. */
  int64_t EvictLRU(int64_t keep = -1);
  /*! \brief Mark an entry as just used (a request forked from it). */
  void Touch(int64_t seq_id);
  /*! \brief Forget `seq_id`'s entry, leaving its sequence to the caller (a request took it over). */
  void Release(int64_t seq_id);
  /*! \brief Forget every entry; returns their seq ids. */
  std::vector<int64_t> Clear();

  const std::vector<Entry>& entries() const { return entries_; }
  int64_t num_tokens() const;

 private:
  int64_t max_sequences_;
  uint64_t clock_ = 0;
  std::vector<Entry> entries_;
};

}  // namespace tvmlm

#endif  // TVMLM_KV_PREFIX_CACHE_H_
