// Registration of tvmlm._core's token-constraint and tracing classes (constraint_bindings.cc).
#ifndef TVMLM_PYTHON_CONSTRAINT_BINDINGS_H_
#define TVMLM_PYTHON_CONSTRAINT_BINDINGS_H_

#include <pybind11/pybind11.h>

namespace tvmlm {

void RegisterConstraintBindings(pybind11::module_& m);

}  // namespace tvmlm

#endif  // TVMLM_PYTHON_CONSTRAINT_BINDINGS_H_
