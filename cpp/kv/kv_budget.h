// Page accounting for the paged KV cache. TVM's cache hands out 16-token pages and fails hard when
// it runs out; the engine asks this budget first, so it can wait (admission), evict cached
// prefixes or preempt (decode). The free count is the cache's own, so pages shared by forked
// sequences are counted once; the engine subtracts what it has promised to admitted prefills.
#ifndef TVMLM_KV_KV_BUDGET_H_
#define TVMLM_KV_KV_BUDGET_H_

#include <cstdint>

namespace tvmlm {

class Model;

class KVBudget {
 public:
  KVBudget(const Model* model, int64_t capacity_tokens, int64_t page_size);

  int64_t page_size() const { return page_size_; }
  int64_t PagesFor(int64_t tokens) const { return (tokens + page_size_ - 1) / page_size_; }
  /*!
   * \brief New pages a sequence holding `from` tokens takes to hold `to`. Exact for forked
   * sequences too: a fork shares whole pages only and copies a partial last page.
   */
  int64_t GrowPages(int64_t from, int64_t to) const {
    return to > from ? PagesFor(to) - PagesFor(from) : 0;
  }
  /*! \brief Pages a fork at `fork_pos` takes at once (the copy of a partial page). */
  int64_t ForkPages(int64_t fork_pos) const { return fork_pos % page_size_ != 0 ? 1 : 0; }

  /*! \brief Every page of the cache (TVM allocates ceil(capacity / page) + 1). */
  int64_t total_pages() const;
  /*! \brief Pages no sequence holds. */
  int64_t free_pages() const;
  int64_t used_pages() const { return total_pages() - free_pages(); }
  /*! \brief max_total_sequence_length: the longest single sequence the cache is sized for. */
  int64_t capacity_tokens() const { return capacity_tokens_; }

 private:
  const Model* model_;
  int64_t capacity_tokens_;
  int64_t page_size_;
};

}  // namespace tvmlm

#endif  // TVMLM_KV_KV_BUDGET_H_
