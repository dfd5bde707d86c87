// HostArena: one block of host memory for all of a model's weights, backed by transparent huge
// pages where the kernel offers them (madvise mode, the common default).
//
// Batch-1 decode reads every weight once per token. With 4 KiB pages that is a TLB miss, and a
// stop for the hardware prefetchers, every 4 KiB of a ~100 MB stream; 2 MiB pages remove both.
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
 * \brief A CPU tensor viewing `arena` at `offset` (64-byte aligned); the arena lives as long as any
 * of its tensors.
 */
tvm::ffi::Tensor ArenaTensor(const std::shared_ptr<HostArena>& arena, size_t offset,
                             tvm::ffi::ShapeView shape, DLDataType dtype);

}  // namespace tvmlm

#endif  // TVMLM_MODEL_HOST_ARENA_H_
