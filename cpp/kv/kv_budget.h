// Page accounting for the paged KV cache. TVM's cache hands out 16-token pages and fails hard when
// it runs out; the engine asks this budget first, so it can wait (admission) or preempt (decode).
#ifndef TVMLM_KV_KV_BUDGET_H_
#define TVMLM_KV_KV_BUDGET_H_

#include <cstdint>
#include <unordered_map>

namespace tvmlm {

class KVBudget {
 public:
  KVBudget(int64_t capacity_tokens, int64_t page_size);

  int64_t PagesFor(int64_t tokens) const { return (tokens + page_size_ - 1) / page_size_; }
  int64_t total_pages() const { return total_pages_; }
  int64_t free_pages() const { return total_pages_ - used_pages_; }
  /*! \brief Longest sequence the cache can hold. */
  int64_t capacity_tokens() const { return capacity_tokens_; }
  /*! \brief Tokens currently accounted for, over all sequences. */
  int64_t used_tokens() const { return used_tokens_; }

  /*! \brief Extra pages `seq_id` needs to hold `length` tokens (0 if it already has them). */
  int64_t ExtraPages(int64_t seq_id, int64_t length) const;
  /*! \brief Record that `seq_id` holds `length` tokens; the caller checked ExtraPages fits. */
  void SetLength(int64_t seq_id, int64_t length);
  void Release(int64_t seq_id);
  void Clear();

 private:
  int64_t Length(int64_t seq_id) const;

  int64_t page_size_;
  int64_t capacity_tokens_;
  int64_t total_pages_;
  int64_t used_pages_ = 0;
  int64_t used_tokens_ = 0;
  std::unordered_map<int64_t, int64_t> lengths_;
};

}  // namespace tvmlm

#endif  // TVMLM_KV_KV_BUDGET_H_
