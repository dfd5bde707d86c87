// DeltaRouter: a stream callback that sorts deltas into per-request inboxes, for hosts whose
// callers block on "their" request (the Python Engine's generation calls do).
//
//   stream-back loop ── Route(deltas) ──> inbox of request A ──> Take() on A's caller thread
//                                    └──> inbox of request B ──> Take() on B's caller thread
//
// Routing is plain C++, so the stream-back loop delivers without the GIL, and a waiting caller
// wakes once per batch of deltas instead of twice (callback thread, then caller). A caller that
// wants whole results (not streaming) opens its inbox with stream=false: it wakes only when a
// choice finishes, and gets each choice's steps merged into one delta.
//
// A host that waits on many inboxes from one event loop (asyncio) opens them with notify=true:
// whenever such an inbox would wake its caller, its request id also goes to the router's
// ReadySet, where one waiter thread collects them and wakes the right tasks; each task then takes
// its deltas without blocking (Take with a zero timeout).
#ifndef TVMLM_PYTHON_DELTA_ROUTER_H_
#define TVMLM_PYTHON_DELTA_ROUTER_H_

#include <tvmlm/delta.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace tvmlm {

/*! \brief Ids of requests whose inboxes became ready (something to take, or closed). */
class ReadySet {
 public:
  void Add(const std::string& request_id);
  /*! \brief Wait up to `timeout` for ready ids; move all of them to `out` (cleared first).
   * False once closed with none left (then nothing more will come). */
  bool Wait(std::chrono::milliseconds timeout, std::vector<std::string>* out);
  void Close();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> ready_;
  bool closed_ = false;
};

/*! \brief The deltas of one request, in order. Shared by the router and the request's caller. */
class DeltaInbox {
 public:
  explicit DeltaInbox(bool stream = true, std::shared_ptr<ReadySet> ready = nullptr, std::string id = "")
      : stream_(stream), ready_(std::move(ready)), id_(std::move(id)) {}

  /*!
   * \brief Wait up to `timeout` for deltas (without stream: for a final delta); return every
   * pending one. An empty result means nothing arrived in time, or (closed() is then true) the
   * router closed with nothing pending.
   */
  std::vector<RequestDelta> Take(std::chrono::milliseconds timeout);
  /*! \brief The router closed this inbox: no delta will arrive after the pending ones. */
  bool closed();

 private:
  friend class DeltaRouter;
  void Push(std::vector<RequestDelta>* deltas);
  void Close();

  std::mutex mu_;
  std::condition_variable cv_;
  const bool stream_;
  const std::shared_ptr<ReadySet> ready_;  // told when this inbox wakes (notify=true), else null
  const std::string id_;
  std::vector<RequestDelta> pending_;
  int64_t pending_finals_ = 0;
  bool closed_ = false;
};

class DeltaRouter {
 public:
  /*!
   * \brief Start routing `request_id`'s deltas to a new inbox, until each of its `choices` has had
   * its final delta. Call before the request is added, so no delta can come first. Without
   * `stream`, the inbox merges each choice's deltas and wakes its caller only for final ones:
   * one wake-up per choice instead of one per step. With `notify`, every wake-up of the inbox
   * also adds `request_id` to ready().
   */
  std::shared_ptr<DeltaInbox> Open(const std::string& request_id, int64_t choices, bool stream = true,
                                   bool notify = false);
  /*! \brief Stop routing `request_id` (its request was never added). */
  void Discard(const std::string& request_id);
  /*! \brief The stream callback: hand each delta to its request's inbox (unknown ids dropped). */
  void Route(std::vector<RequestDelta> deltas);
  /*! \brief Close every inbox (waiters wake), those opened later, then ready(). For shutdown. */
  void Close();
  /*! \brief Where inboxes opened with notify=true announce their wake-ups. */
  const std::shared_ptr<ReadySet>& ready() const { return ready_; }
  /*! \brief Requests whose final deltas have not all arrived. */
  size_t open_requests();

 private:
  struct Route_ {
    std::shared_ptr<DeltaInbox> inbox;
    int64_t unfinished;  // choices without a final delta
  };
  std::mutex mu_;
  std::unordered_map<std::string, Route_> routes_;
  bool closed_ = false;
  const std::shared_ptr<ReadySet> ready_ = std::make_shared<ReadySet>();
};

}  // namespace tvmlm

#endif  // TVMLM_PYTHON_DELTA_ROUTER_H_
