#include "kv/kv_budget.h"

#include <stdexcept>

#include "model/model.h"

namespace tvmlm {

KVBudget::KVBudget(const Model* model, int64_t capacity_tokens, int64_t page_size)
    : model_(model), capacity_tokens_(capacity_tokens), page_size_(page_size) {
  if (capacity_tokens < 1 || page_size < 1) throw std::invalid_argument("KVBudget: bad sizes");
}

int64_t KVBudget::total_pages() const { return model_->total_pages(); }

int64_t KVBudget::free_pages() const { return model_->FreePages(); }

}  // namespace tvmlm
