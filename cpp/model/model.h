// A compiled model package loaded on one device: the relax VM, its parameters and its paged KV
// cache. Every call into TVM goes through this class.
#ifndef TVMLM_MODEL_MODEL_H_
#define TVMLM_MODEL_MODEL_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/optional.h>

#include <cstdint>
#include <string>
#include <vector>

#include "model/metadata.h"

namespace tvmlm {

/*! \brief Row-major [rows, vocab] float32 logits in host memory. */
struct Logits {
  int64_t rows = 0;
  int64_t vocab = 0;
  std::vector<float> data;
  const float* row(int64_t i) const { return data.data() + i * vocab; }
};

class Model {
 public:
  /*!
   * \brief Load `<package_dir>/{metadata.json, lib.so, params.safetensors}` onto `device`.
   * \param num_threads CPU threads for TVM kernels (0 = all CPUs this process may use).
   * \throws std::runtime_error naming the missing file / function / parameter.
   */
  Model(const std::string& package_dir, DLDevice device, int64_t num_threads);

  /*! \brief Tokens per KV-cache page: the cache is created with it and the engine's page
   *  accounting counts in it (python/tvmlm/config.py PAGE_SIZE is tested equal). */
  static constexpr int64_t kPageSize = 16;

  const ModelMetadata& metadata() const { return metadata_; }
  DLDevice device() const { return device_; }

  /*! \brief Allocate (or replace) the paged KV cache; all sequences are dropped. */
  void CreateKVCache(int64_t max_batch_size, int64_t max_total_seq_len, int64_t prefill_chunk_size);
  /*! \brief Most tokens one BatchPrefill call may take (the KV cache's prefill chunk). */
  int64_t prefill_chunk_size() const { return kv_prefill_chunk_; }
  int64_t max_batch_size() const { return kv_max_batch_; }
  /*! \brief Pages the cache allocated (TVM adds one spare page to ceil(capacity / 16)). */
  int64_t total_pages() const { return kv_total_pages_; }
  /*! \brief Pages not held by any sequence: the cache's own count, so sharing is accounted. */
  int64_t FreePages() const;

  void AddSequence(int64_t seq_id);
  void RemoveSequence(int64_t seq_id);
  /*! \brief Child shares the parent's first `fork_pos` tokens (-1 = all of them). */
  void ForkSequence(int64_t parent_id, int64_t child_id, int64_t fork_pos = -1);
  void PopN(int64_t seq_id, int64_t n);
  /*! \brief Drop every sequence, keep the memory. */
  void ClearKVCache();

  /*! \brief Embeddings float32[n, hidden] on the device. */
  tvm::ffi::Tensor Embed(const std::vector<int32_t>& token_ids);
  /*!
   * \brief Append `token_ids[i]` to sequence `seq_ids[i]` and return each sequence's last-token
   * logits. The total token count must not exceed prefill_chunk_size(). With `logit_rows`,
   * sequence i gets the logits of its last logit_rows[i] tokens (in order; rows of sequence i
   * follow those of i - 1); their total must not exceed the compiled max_batch_size.
   */
  Logits BatchPrefill(const std::vector<int64_t>& seq_ids,
                      const std::vector<std::vector<int32_t>>& token_ids,
                      const std::vector<int64_t>& logit_rows = {});
  /*! \brief Append one token per sequence; returns logits [b, vocab]. */
  Logits BatchDecode(const std::vector<int64_t>& seq_ids, const std::vector<int32_t>& token_ids);

 private:
  tvm::ffi::Function RequireFunction(const std::string& name) const;
  void LoadParams(const std::string& path);
  void CheckKVCache() const;
  void CheckBatch(const std::vector<int64_t>& seq_ids, size_t num_inputs) const;
  /*!
   * \brief `values` copied into device buffer `slot` (grown on demand, reused across steps: a
   * fresh device allocation per step costs a cudaMalloc/cudaFree pair, and cudaFree syncs).
   */
  tvm::ffi::Tensor Int32ToDevice(const std::vector<int32_t>& values, size_t slot);
  tvm::ffi::Tensor Reshape(const tvm::ffi::Tensor& t, std::vector<int64_t> shape) const;
  /*! \brief begin_forward -> fn(embeds, extra..., kv, params) -> end_forward; first output. */
  Logits Forward(const tvm::ffi::Function& fn, const std::vector<int64_t>& seq_ids,
                 const std::vector<int64_t>& lengths, const std::vector<tvm::ffi::Any>& inputs);
  Logits ToHostLogits(const tvm::ffi::Tensor& logits) const;

  std::string package_dir_;
  std::string lib_path_;
  DLDevice device_;
  int64_t num_threads_;
  ModelMetadata metadata_;

  tvm::ffi::Optional<tvm::ffi::Module> lib_;  // keeps the code of `vm_` loaded
  tvm::ffi::Optional<tvm::ffi::Module> vm_;
  tvm::ffi::Array<tvm::ffi::Any> params_;
  tvm::ffi::Any kv_cache_;
  int64_t kv_prefill_chunk_ = 0;
  int64_t kv_max_batch_ = 0;
  int64_t kv_total_pages_ = 0;

  std::vector<tvm::ffi::Tensor> int32_buffers_;  // Int32ToDevice's reusable device buffers

  tvm::ffi::Function embed_, batch_prefill_, batch_decode_, create_kv_cache_;
  // The static-shape single-sequence decode, when the library has one: on GPUs its matmuls get
  // GEMV schedules (batch_decode's symbolic batch gets batched-GEMV ones).
  tvm::ffi::Optional<tvm::ffi::Function> decode_;
};

}  // namespace tvmlm

#endif  // TVMLM_MODEL_MODEL_H_
