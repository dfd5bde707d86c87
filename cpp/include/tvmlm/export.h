// Symbol visibility for the public C++ API: libtvmlm.so exports only what is marked TVMLM_API
// (everything else is hidden so the TVM runtime libraries never bind to tvmlm's internals).
#ifndef TVMLM_EXPORT_H_
#define TVMLM_EXPORT_H_

#if defined(_WIN32)
#define TVMLM_API __declspec(dllexport)
#else
#define TVMLM_API __attribute__((visibility("default")))
#endif

#endif  // TVMLM_EXPORT_H_
