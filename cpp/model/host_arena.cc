#include "model/host_arena.h"

#include <sys/mman.h>

#include <cstdint>
#include <new>
#include <utility>
#include <stdexcept>

namespace tvmlm {

namespace {

constexpr size_t kHugePage = size_t{2} << 20;

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// The tensor's data is a view; the shared_ptr keeps its owner alive until the last view goes.
struct OwnedView {
  std::shared_ptr<const void> owner;
  const void* data;
  void AllocData(DLTensor* tensor) { tensor->data = const_cast<void*>(data); }
  void FreeData(DLTensor*) {}
};

}  // namespace

HostArena::HostArena(size_t bytes) {
  const size_t size = RoundUp(bytes == 0 ? 1 : bytes, kHugePage);
  // One extra huge page of slack so the start can be aligned to 2 MiB (huge pages only back
  // aligned 2 MiB ranges).
  mapped_ = size + kHugePage;
  mapping_ = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping_ == MAP_FAILED) throw std::bad_alloc();
  auto start = reinterpret_cast<uintptr_t>(mapping_);
  data_ = reinterpret_cast<char*>(RoundUp(start, kHugePage));
#ifdef MADV_HUGEPAGE
  madvise(data_, size, MADV_HUGEPAGE);  // advice: refused (THP "never"), it is plain 4 KiB pages
#endif
}

HostArena::~HostArena() {
  if (mapping_ != nullptr && mapping_ != MAP_FAILED) munmap(mapping_, mapped_);
}

tvm::ffi::Tensor HostTensorView(std::shared_ptr<const void> owner, const void* data,
                                tvm::ffi::ShapeView shape, DLDataType dtype) {
  if (reinterpret_cast<uintptr_t>(data) % 64 != 0) {
    throw std::invalid_argument("HostTensorView: data must be 64-byte aligned");
  }
  return tvm::ffi::Tensor::FromNDAlloc(OwnedView{std::move(owner), data}, shape, dtype,
                                       DLDevice{kDLCPU, 0});
}

}  // namespace tvmlm
