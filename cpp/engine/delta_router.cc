#include "engine/delta_router.h"

#include <stdexcept>
#include <utility>

namespace tvmlm {

std::vector<RequestDelta> DeltaInbox::Take(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [this] { return !pending_.empty() || closed_; });
  std::vector<RequestDelta> out;
  out.swap(pending_);
  return out;
}

bool DeltaInbox::closed() {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

void DeltaInbox::Push(std::vector<RequestDelta>* deltas) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (RequestDelta& d : *deltas) pending_.push_back(std::move(d));
  }
  cv_.notify_all();
}

void DeltaInbox::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

std::shared_ptr<DeltaInbox> DeltaRouter::Open(const std::string& request_id, int64_t choices) {
  auto inbox = std::make_shared<DeltaInbox>();
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) {
    inbox->Close();
    return inbox;
  }
  if (!routes_.emplace(request_id, Route_{inbox, choices}).second) {
    throw std::invalid_argument("delta router: request id '" + request_id + "' is already open");
  }
  return inbox;
}

void DeltaRouter::Discard(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(mu_);
  routes_.erase(request_id);
}

void DeltaRouter::Route(std::vector<RequestDelta> deltas) {
  // Group by inbox under the router lock; push outside it, one wake-up per inbox.
  std::vector<std::pair<std::shared_ptr<DeltaInbox>, std::vector<RequestDelta>>> batches;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (RequestDelta& d : deltas) {
      auto it = routes_.find(d.request_id);
      if (it == routes_.end()) continue;  // discarded, or the router closed
      std::shared_ptr<DeltaInbox> inbox = it->second.inbox;
      if (d.finish_reason != FinishReason::kNotFinished && --it->second.unfinished <= 0) {
        routes_.erase(it);  // the caller's reference keeps the inbox alive until it has read it
      }
      if (batches.empty() || batches.back().first != inbox) batches.emplace_back(inbox, std::vector<RequestDelta>());
      batches.back().second.push_back(std::move(d));
    }
  }
  for (auto& [inbox, batch] : batches) inbox->Push(&batch);
}

void DeltaRouter::Close() {
  std::unordered_map<std::string, Route_> routes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    routes.swap(routes_);
  }
  for (auto& [id, route] : routes) route.inbox->Close();
}

size_t DeltaRouter::open_requests() {
  std::lock_guard<std::mutex> lock(mu_);
  return routes_.size();
}

}  // namespace tvmlm
