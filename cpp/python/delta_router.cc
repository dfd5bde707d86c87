#include "python/delta_router.h"

#include <algorithm>
#include <iterator>
#include <stdexcept>
#include <utility>

namespace tvmlm {

void ReadySet::Add(const std::string& request_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ready_.push_back(request_id);
  }
  cv_.notify_one();
}

bool ReadySet::Wait(std::chrono::milliseconds timeout, std::vector<std::string>* out) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [this] { return !ready_.empty() || closed_; });
  out->clear();
  out->swap(ready_);
  return !(out->empty() && closed_);
}

void ReadySet::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

std::vector<RequestDelta> DeltaInbox::Take(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  auto ready = [this] { return (stream_ ? !pending_.empty() : pending_finals_ > 0) || closed_; };
  if (!cv_.wait_for(lock, timeout, ready)) return {};  // without stream, merged steps stay pending
  std::vector<RequestDelta> out;
  out.swap(pending_);
  pending_finals_ = 0;
  return out;
}

bool DeltaInbox::closed() {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}

// Appends `step` (a later delta of the same choice) to `merged`.
static void MergeDelta(RequestDelta* merged, RequestDelta&& step) {
  merged->token_ids.insert(merged->token_ids.end(), step.token_ids.begin(), step.token_ids.end());
  for (auto field : {&RequestDelta::logprobs, &RequestDelta::prompt_logprobs}) {
    auto& into = merged->*field;
    into.insert(into.end(), std::make_move_iterator((step.*field).begin()),
                std::make_move_iterator((step.*field).end()));
  }
  merged->finish_reason = step.finish_reason;
  merged->error = std::move(step.error);
  merged->prompt_tokens = step.prompt_tokens;
  merged->completion_tokens = step.completion_tokens;
  merged->cached_prompt_tokens = step.cached_prompt_tokens;
  merged->time_to_first_token = step.time_to_first_token;
  merged->inter_token_latency = step.inter_token_latency;
}

void DeltaInbox::Push(std::vector<RequestDelta>* deltas) {
  bool wake = stream_;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (RequestDelta& d : *deltas) {
      if (!stream_) {
        bool final = d.finish_reason != FinishReason::kNotFinished;
        pending_finals_ += final;
        wake = wake || final;
        // A choice has at most one unfinished pending delta: the one to extend.
        auto same_choice = [&d](const RequestDelta& p) {
          return p.index == d.index && p.finish_reason == FinishReason::kNotFinished;
        };
        auto it = std::find_if(pending_.begin(), pending_.end(), same_choice);
        if (it != pending_.end()) {
          MergeDelta(&*it, std::move(d));
          continue;
        }
      }
      pending_.push_back(std::move(d));
    }
  }
  if (wake) {
    cv_.notify_all();
    if (ready_) ready_->Add(id_);
  }
}

void DeltaInbox::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
  if (ready_) ready_->Add(id_);
}

std::shared_ptr<DeltaInbox> DeltaRouter::Open(const std::string& request_id, int64_t choices, bool stream,
                                              bool notify) {
  auto inbox = std::make_shared<DeltaInbox>(stream, notify ? ready_ : nullptr, request_id);
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
  ready_->Close();  // after the inboxes' last ids went in
}

size_t DeltaRouter::open_requests() {
  std::lock_guard<std::mutex> lock(mu_);
  return routes_.size();
}

}  // namespace tvmlm
