#include "constraint/grammar_mask.h"

#include <atomic>
#include <stdexcept>

namespace tvmlm {

void MaskWorkQueue::Push(Item item) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    items_.push_back(std::move(item));
  }
  cv_.notify_one();
}

std::vector<MaskWorkQueue::Item> MaskWorkQueue::Take(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [this] { return closed_ || !items_.empty(); });
  std::vector<Item> out;
  out.swap(items_);
  return out;
}

void MaskWorkQueue::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

bool MaskWorkQueue::closed() {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

namespace {
std::atomic<int64_t> next_mask_id{1};
}  // namespace

GrammarMask::GrammarMask(int64_t vocab, std::shared_ptr<MaskWorkQueue> queue)
    : id_(next_mask_id++), vocab_(vocab), queue_(std::move(queue)),
      words_(static_cast<size_t>((vocab + 31) / 32), 0) {
  if (vocab <= 0) throw std::invalid_argument("GrammarMask: vocab must be > 0");
  if (!queue_) throw std::invalid_argument("GrammarMask: a work queue is required");
}

GrammarMask::~GrammarMask() { queue_->Push({nullptr, id_, -1}); }

TokenConstraint::Next GrammarMask::NextMask(int64_t vocab, std::vector<uint32_t>* bitmask) {
  if (vocab != vocab_) {
    throw std::runtime_error("token mask covers " + std::to_string(vocab_) +
                             " tokens, the model's logits " + std::to_string(vocab));
  }
  std::unique_lock<std::mutex> lock(mu_);
  // In slices, so that a worker that went away turns into an error instead of a hung step loop.
  while (state_ == State::kPending) {
    if (cv_.wait_for(lock, std::chrono::milliseconds(100), [this] { return state_ != State::kPending; })) break;
    if (queue_->closed()) throw std::runtime_error("the grammar worker has stopped");
  }
  switch (state_) {
    case State::kTerminated:
      return Next::kTerminated;
    case State::kError:
      throw std::runtime_error(error_);
    default:
      bitmask->assign(words_.begin(), words_.end());
      return Next::kMask;
  }
}

void GrammarMask::Accept(int32_t token) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ != State::kReady) return;  // terminated or failed: nothing more to compute
    state_ = State::kPending;
  }
  queue_->Push({shared_from_this(), id_, token});
}

void GrammarMask::SetReady() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ == State::kPending) state_ = State::kReady;
  }
  cv_.notify_all();
}

void GrammarMask::SetTerminated() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = State::kTerminated;
  }
  cv_.notify_all();
}

void GrammarMask::SetError(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = State::kError;
    error_ = message;
  }
  cv_.notify_all();
}

}  // namespace tvmlm
