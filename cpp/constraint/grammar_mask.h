// GrammarMask: a TokenConstraint whose masks are computed by a grammar worker on another thread
// (the Python Engine's xgrammar matchers), one token ahead of the step loop.
//
//   step loop: sample under mask k ── Accept(t) ──> MaskWorkQueue ──> worker: matcher.accept(t),
//              (other requests, next forward...)                       fill mask k+1, SetReady()
//   step loop: NextMask() ── mask k+1 (waits only if the worker is still on it)
//
// The worker computes the next mask while the step loop runs the rest of the step and the next
// forward, so an unconstrained request never waits for a grammar, and a constrained one only when
// its mask takes longer than a model step.
#ifndef TVMLM_CONSTRAINT_GRAMMAR_MASK_H_
#define TVMLM_CONSTRAINT_GRAMMAR_MASK_H_

#include <tvmlm/token_constraint.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tvmlm {

class GrammarMask;

/*! \brief Work for the grammar worker: tokens to accept, and masks that were released. */
class MaskWorkQueue {
 public:
  struct Item {
    /*! \brief The mask to advance; null for a release. */
    std::shared_ptr<GrammarMask> mask;
    /*! \brief GrammarMask::id() of the mask. */
    int64_t mask_id = 0;
    /*! \brief The accepted token; -1 for a release (the request is gone: drop its matcher). */
    int32_t token = -1;
  };

  void Push(Item item);
  /*! \brief Wait up to `timeout` for work; return all of it ([] on timeout or once closed). */
  std::vector<Item> Take(std::chrono::milliseconds timeout);
  /*! \brief No more work: waiting masks fail instead of waiting forever. */
  void Close();
  bool closed();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Item> items_;
  bool closed_ = false;
};

class GrammarMask final : public TokenConstraint, public std::enable_shared_from_this<GrammarMask> {
 public:
  /*! \brief A mask over `vocab` tokens, not yet ready; the worker fills it first. */
  GrammarMask(int64_t vocab, std::shared_ptr<MaskWorkQueue> queue);
  /*! \brief Tells the worker to drop this mask's matcher. */
  ~GrammarMask() override;

  // TokenConstraint (step loop):
  Next NextMask(int64_t vocab, std::vector<uint32_t>* bitmask) override;
  void Accept(int32_t token) override;

  // Worker side. The worker writes words() between taking an Accept and calling SetReady; the step
  // loop reads it only after SetReady, so the two never touch it at once.
  int64_t id() const { return id_; }
  int64_t vocab() const { return vocab_; }
  uint32_t* words() { return words_.data(); }
  int64_t num_words() const { return static_cast<int64_t>(words_.size()); }
  void SetReady();
  void SetTerminated();
  void SetError(const std::string& message);

 private:
  enum class State { kPending, kReady, kTerminated, kError };

  const int64_t id_;
  const int64_t vocab_;
  std::shared_ptr<MaskWorkQueue> queue_;
  std::vector<uint32_t> words_;
  std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::kPending;
  std::string error_;
};

}  // namespace tvmlm

#endif  // TVMLM_CONSTRAINT_GRAMMAR_MASK_H_
