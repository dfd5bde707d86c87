// Registration of tvmlm._core's delta classes (delta_bindings.cc).
#ifndef TVMLM_PYTHON_DELTA_BINDINGS_H_
#define TVMLM_PYTHON_DELTA_BINDINGS_H_

#include <pybind11/pybind11.h>

#include <vector>

#include <tvmlm/delta.h>

namespace tvmlm {

void RegisterDeltaBindings(pybind11::module_& m);

/*! \brief (token, logprob, top_tokens, top_logprobs) tuples; None for an empty list (no logprobs asked). */
pybind11::object LogprobsOrNone(const std::vector<TokenLogprob>& entries);

}  // namespace tvmlm

#endif  // TVMLM_PYTHON_DELTA_BINDINGS_H_
