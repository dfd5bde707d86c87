// HostArena: one block of host memory for a model's weights when they cannot be used in place
// from the mapped params file (tensors not 64-byte aligned: packages written before alignment),
// backed by transparent huge pages where the kernel offers them (madvise mode, the common
// default). HostTensorView: a CPU tensor over memory someone else owns (the arena, or the mapped
// params file itself, the usual case: no copy, pages shared with the page cache).
#ifndef TVMLM_MODEL_HOST_ARENA_H_
#define TVMLM_MODEL_HOST_ARENA_H_

#include <tvm/ffi/container/tensor.h>

#include <cstddef>
#include <memory>

namespace tvmlm {

class HostArena {
 public:
  /*! \brief Map `bytes` of zeroed memory (throws std::bad_alloc when the system refuses). */
  explicit HostArena(size_t bytes);
  ~HostArena();
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;

  char* data() const { return data_; }

 private:
  char* data_ = nullptr;
  size_t mapped_ = 0;
  void* mapping_ = nullptr;
};

/*!
 * \brief A CPU tensor viewing `data` (64-byte aligned), memory that `owner` keeps alive: the owner
 * (an arena, a mapped file) lives as long as any of its tensors.
 */
tvm::ffi::Tensor HostTensorView(std::shared_ptr<const void> owner, const void* data,
                                tvm::ffi::ShapeView shape, DLDataType dtype);

}  // namespace tvmlm

#endif  // TVMLM_MODEL_HOST_ARENA_H_
