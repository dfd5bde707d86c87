// A per-request limit on which tokens may be sampled next (structured output: JSON schemas,
// grammars, forced tool calls). The engine asks for the allowed-token bitmask right before it
// samples the request and reports each sampled token right after; what computes the masks, and on
// which thread, is up to the implementation (tvmlm's Python Engine backs it with xgrammar on a
// worker thread: GrammarMask in cpp/constraint/grammar_mask.h).
#ifndef TVMLM_TOKEN_CONSTRAINT_H_
#define TVMLM_TOKEN_CONSTRAINT_H_

#include <tvmlm/export.h>

#include <cstdint>
#include <vector>

namespace tvmlm {

class TVMLM_API TokenConstraint {
 public:
  enum class Next {
    /*! \brief `bitmask` holds the tokens allowed next. */
    kMask,
    /*! \brief Nothing may follow: the request ends with finish_reason "stop". */
    kTerminated,
  };

  virtual ~TokenConstraint() = default;
  /*!
   * \brief The tokens allowed for the next sample: `bitmask` gets ceil(vocab / 32) words, token t
   * allowed iff bit (t % 32) of word (t / 32) is set (xgrammar's layout). Called on the step loop
   * just before sampling; may wait for the mask of the previously accepted token. Throws
   * std::runtime_error when the constraint failed (the request ends with "error").
   */
  virtual Next NextMask(int64_t vocab, std::vector<uint32_t>* bitmask) = 0;
  /*! \brief The token just sampled under the last mask. Called on the step loop: do not block. */
  virtual void Accept(int32_t token) = 0;
};

}  // namespace tvmlm

#endif  // TVMLM_TOKEN_CONSTRAINT_H_
