// The tokens a request has seen, as its penalties need them: how often each was generated
// (presence / frequency penalties, OpenAI) and which appeared in the prompt or the output
// (repetition penalty, HF).
#ifndef TVMLM_SAMPLER_TOKEN_COUNTS_H_
#define TVMLM_SAMPLER_TOKEN_COUNTS_H_

#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace tvmlm {

class TokenCounts {
 public:
  TokenCounts() = default;
  /*! \brief Start from `prompt` (seen, not generated). */
  explicit TokenCounts(const std::vector<int32_t>& prompt) : seen_(prompt.begin(), prompt.end()) {}

  void AddGenerated(int32_t token) {
    ++generated_[token];
    seen_.insert(token);
  }
  /*! \brief Times each generated token was generated (tokens never generated are absent). */
  const std::unordered_map<int32_t, int32_t>& generated() const { return generated_; }
  /*! \brief Every distinct token of the prompt and the output. */
  const std::unordered_set<int32_t>& seen() const { return seen_; }

 private:
  std::unordered_map<int32_t, int32_t> generated_;
  std::unordered_set<int32_t> seen_;
};

}  // namespace tvmlm

#endif  // TVMLM_SAMPLER_TOKEN_COUNTS_H_
