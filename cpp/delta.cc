#include <tvmlm/delta.h>

namespace tvmlm {

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    case FinishReason::kError:
      return "error";
    case FinishReason::kNotFinished:
      break;
  }
  return "";
}

}  // namespace tvmlm
