// The deltas of one step: each request's new tokens and, once finished, its finish reason and
// latencies (include/tvmlm/delta.h); finished requests leave the queues here.
#include <algorithm>

#include "engine/engine_state.h"

namespace tvmlm {

namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

void EngineState::CollectDeltas(std::vector<RequestDelta>* out) {
  auto delta = [](const Request& r, int64_t index) {
    RequestDelta d;
    d.request_id = r.id;
    d.index = index;
    d.finish_reason = r.finish_reason;
    d.error = r.error;
    d.prompt_tokens = static_cast<int64_t>(r.prompt.size());
    return d;
  };
  auto collect = [&](auto* queue) {
    for (RequestPtr& r : *queue) {
      if (r->unsent_tokens.empty() && !r->finished()) continue;
      RequestDelta d = delta(*r, r->index);
      d.token_ids = std::move(r->unsent_tokens);
      r->unsent_tokens.clear();
      d.logprobs = std::move(r->unsent_logprobs);
      r->unsent_logprobs.clear();
      d.prompt_logprobs = std::move(r->unsent_prompt_logprobs);
      r->unsent_prompt_logprobs.clear();
      d.completion_tokens = static_cast<int64_t>(r->generated.size());
      d.cached_prompt_tokens = r->cached_prompt_tokens;
      if (r->finished()) {
        if (!r->generated.empty()) {
          d.time_to_first_token = Seconds(r->first_token_time - r->arrival);
        }
        if (r->generated.size() >= 2) {
          d.inter_token_latency = Seconds(r->last_token_time - r->first_token_time) /
                                  static_cast<double>(r->generated.size() - 1);
        }
      }
      out->push_back(std::move(d));
      if (r->finished()) {
        // Choices that were never forked (the request ended before its prefill did).
        for (int64_t i = 1; i <= r->pending_forks; ++i) out->push_back(delta(*r, r->index + i));
      }
    }
    queue->erase(std::remove_if(queue->begin(), queue->end(),
                                [](const RequestPtr& r) { return r->finished(); }),
                 queue->end());
  };
  collect(&running);
  collect(&waiting);
}

}  // namespace tvmlm
