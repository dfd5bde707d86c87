#include "kv/kv_budget.h"

#include <stdexcept>

namespace tvmlm {

KVBudget::KVBudget(int64_t capacity_tokens, int64_t page_size)
    : page_size_(page_size), capacity_tokens_(capacity_tokens) {
  if (capacity_tokens < 1 || page_size < 1) throw std::invalid_argument("KVBudget: bad sizes");
  // TVM allocates ceil(capacity / page) + 1 pages; the spare one is left as headroom.
  total_pages_ = PagesFor(capacity_tokens);
}

int64_t KVBudget::Length(int64_t seq_id) const {
  auto it = lengths_.find(seq_id);
  return it == lengths_.end() ? 0 : it->second;
}

int64_t KVBudget::ExtraPages(int64_t seq_id, int64_t length) const {
  int64_t extra = PagesFor(length) - PagesFor(Length(seq_id));
  return extra > 0 ? extra : 0;
}

void KVBudget::SetLength(int64_t seq_id, int64_t length) {
  int64_t old = Length(seq_id);
  used_pages_ += PagesFor(length) - PagesFor(old);
  used_tokens_ += length - old;
  lengths_[seq_id] = length;
}

void KVBudget::Release(int64_t seq_id) {
  SetLength(seq_id, 0);
  lengths_.erase(seq_id);
}

void KVBudget::Clear() {
  lengths_.clear();
  used_pages_ = 0;
  used_tokens_ = 0;
}

}  // namespace tvmlm
