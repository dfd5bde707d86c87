#include "model/model.h"

#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/dtype.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "model/device.h"
#include "model/host_arena.h"
#include "model/safetensors.h"
#include "model/thread_pool.h"

namespace tvmlm {

namespace ffi = tvm::ffi;

namespace {

constexpr int kPooledAllocator = 2;  // tvm::runtime::memory::AllocatorType::kPooled

// TVM runtime globals, looked up once.
const ffi::Function& Global(const char* name) {
  // Function objects are never freed: static storage outlives every Model.
  static std::unordered_map<std::string, ffi::Function>* cache =
      new std::unordered_map<std::string, ffi::Function>();
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(name);
  if (it == cache->end()) {
    it = cache->emplace(name, ffi::Function::GetGlobalRequired(name)).first;
  }
  return it->second;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool FileExists(const std::string& path) { return std::ifstream(path).good(); }

std::string ShapeToString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// end_forward must follow begin_forward even when the model function throws.
class ForwardScope {
 public:
  ForwardScope(const ffi::Any& kv, const std::vector<int64_t>& seq_ids,
               const std::vector<int64_t>& lengths)
      : kv_(kv) {
    Global("vm.builtin.kv_state_begin_forward")(kv_, ffi::Shape(seq_ids), ffi::Shape(lengths));
  }
  ~ForwardScope() {
    try {
      Global("vm.builtin.kv_state_end_forward")(kv_);
    } catch (...) {
      // Already unwinding with the model's own error, which is the one worth reporting.
    }
  }

 private:
  const ffi::Any& kv_;
};

}  // namespace

Model::Model(const std::string& package_dir, DLDevice device, int64_t num_threads)
    : package_dir_(package_dir), device_(device), num_threads_(num_threads) {
  const std::string metadata_path = package_dir + "/metadata.json";
  lib_path_ = package_dir + "/lib.so";
  const std::string params_path = package_dir + "/params.safetensors";
  for (const std::string& path : {metadata_path, lib_path_, params_path}) {
    if (!FileExists(path)) throw std::runtime_error("model package file not found: " + path);
  }
  metadata_ = ModelMetadata::FromJSON(ReadFile(metadata_path));

  if (!LoadDeviceRuntime(device.device_type)) {
    throw std::runtime_error("device " + DeviceToString(device) +
                             " is not available (TVM runtime library or driver missing)");
  }

  lib_ = ffi::Module::LoadFromFile(lib_path_);
  ffi::Optional<ffi::Function> load_exec = lib_.value()->GetFunction("vm_load_executable");
  if (!load_exec.has_value()) {
    throw std::runtime_error("model library " + lib_path_ +
                             " lacks function 'vm_load_executable' (not a relax VM library?)");
  }
  vm_ = (*load_exec)().cast<ffi::Module>();
  // One (device_type, device_id, allocator) triple per device; the VM wants the host CPU last.
  ffi::Function init = RequireFunction("vm_initialization");
  if (device.device_type == kDLCPU) {
    init(static_cast<int>(device.device_type), device.device_id, kPooledAllocator);
  } else {
    init(static_cast<int>(device.device_type), device.device_id, kPooledAllocator,
         static_cast<int>(kDLCPU), 0, kPooledAllocator);
  }
  embed_ = RequireFunction("embed");
  batch_prefill_ = RequireFunction("batch_prefill");
  batch_decode_ = RequireFunction("batch_decode");
  create_kv_cache_ = RequireFunction("create_paged_kv_cache");
  decode_ = vm_.value()->GetFunction("decode");

  LoadParams(params_path);
}

ffi::Function Model::RequireFunction(const std::string& name) const {
  ffi::Optional<ffi::Function> f = vm_.value()->GetFunction(name);
  if (!f.has_value()) {
    throw std::runtime_error("model library " + lib_path_ + " lacks function '" + name + "'");
  }
  return *f;
}

void Model::LoadParams(const std::string& path) {
  auto file = std::make_shared<const SafetensorsFile>(path);
  std::vector<const SafetensorsFile::Entry*> entries;
  for (const ParamInfo& info : metadata_.params) {
    const SafetensorsFile::Entry* entry = file->Find(info.name);
    if (entry == nullptr) {
      throw std::runtime_error("parameter '" + info.name + "' is missing from " + path);
    }
    if (entry->dtype != info.dtype || entry->shape != info.shape) {
      throw std::runtime_error("parameter '" + info.name + "' in " + path + " is " + entry->dtype +
                               ShapeToString(entry->shape) + ", metadata.json says " +
                               info.dtype + ShapeToString(info.shape));
    }
    entries.push_back(entry);
  }
  ffi::Array<ffi::Any> params;
  if (device_.device_type == kDLCPU) {
    bool aligned = true;
    for (const SafetensorsFile::Entry* entry : entries) {
      aligned = aligned && reinterpret_cast<uintptr_t>(entry->data) % 64 == 0;
    }
    if (aligned) {
      // The weights are used where the file is mapped: no copy, no anonymous memory, pages
      // shared with the page cache (and with other processes serving the same package).
      file->Populate();
      for (size_t i = 0; i < entries.size(); ++i) {
        const ParamInfo& info = metadata_.params[i];
        params.push_back(HostTensorView(file, entries[i]->data, ffi::Shape(info.shape),
                                        ffi::StringToDLDataType(info.dtype)));
      }
    } else {
      // A package whose tensors are not 64-byte aligned: copy into one huge-page arena.
      std::vector<size_t> offsets;
      size_t total = 0;
      for (const SafetensorsFile::Entry* entry : entries) {
        offsets.push_back(total);
        total += (entry->nbytes + 63) / 64 * 64;
      }
      auto arena = std::make_shared<HostArena>(total);
      for (size_t i = 0; i < entries.size(); ++i) {
        const ParamInfo& info = metadata_.params[i];
        std::memcpy(arena->data() + offsets[i], entries[i]->data, entries[i]->nbytes);
        params.push_back(HostTensorView(arena, arena->data() + offsets[i], ffi::Shape(info.shape),
                                        ffi::StringToDLDataType(info.dtype)));
      }
    }
  } else {
    const ffi::Function& alloc = Global("runtime.TVMTensorAllocWithScope");
    const ffi::Function& copy_from_bytes = Global("runtime.TVMTensorCopyFromBytes");
    for (size_t i = 0; i < entries.size(); ++i) {
      const ParamInfo& info = metadata_.params[i];
      ffi::Tensor t = alloc(ffi::Shape(info.shape), ffi::StringToDLDataType(info.dtype), device_,
                            ffi::Optional<ffi::String>())
                          .cast<ffi::Tensor>();
      copy_from_bytes(t, const_cast<void*>(entries[i]->data), static_cast<int64_t>(entries[i]->nbytes));
      params.push_back(t);
    }
  }
  params_ = std::move(params);
}

void Model::CreateKVCache(int64_t max_batch_size, int64_t max_total_seq_len,
                          int64_t prefill_chunk_size) {
  if (max_batch_size < 1 || max_total_seq_len < 1 || prefill_chunk_size < 1) {
    throw std::invalid_argument("KV cache sizes must be >= 1");
  }
  if (max_batch_size > metadata_.max_batch_size) {
    throw std::invalid_argument("max batch size " + std::to_string(max_batch_size) +
                                " exceeds the library's compiled max_batch_size " +
                                std::to_string(metadata_.max_batch_size));
  }
  kv_cache_ = nullptr;  // free the old cache first: both may not fit
  kv_cache_ = create_kv_cache_(ffi::Shape({max_batch_size}), ffi::Shape({max_total_seq_len}),
                               ffi::Shape({prefill_chunk_size}), ffi::Shape({kPageSize}),
                               ffi::Shape({0}) /* no sliding window */);
  kv_prefill_chunk_ = prefill_chunk_size;
  kv_max_batch_ = max_batch_size;
  kv_total_pages_ = FreePages();
}

int64_t Model::FreePages() const {
  CheckKVCache();
  return Global("vm.builtin.attention_kv_cache_get_num_available_pages")(kv_cache_).cast<int64_t>();
}

void Model::CheckKVCache() const {
  if (kv_cache_ == nullptr) throw std::runtime_error("KV cache not created (call create_kv_cache)");
}

void Model::AddSequence(int64_t seq_id) {
  CheckKVCache();
  Global("vm.builtin.kv_state_add_sequence")(kv_cache_, seq_id);
}

void Model::RemoveSequence(int64_t seq_id) {
  CheckKVCache();
  Global("vm.builtin.kv_state_remove_sequence")(kv_cache_, seq_id);
}

void Model::ForkSequence(int64_t parent_id, int64_t child_id, int64_t fork_pos) {
  CheckKVCache();
  Global("vm.builtin.kv_state_fork_sequence")(kv_cache_, parent_id, child_id, fork_pos);
}

void Model::PopN(int64_t seq_id, int64_t n) {
  CheckKVCache();
  Global("vm.builtin.kv_state_popn")(kv_cache_, seq_id, static_cast<int>(n));
}

void Model::ClearKVCache() {
  if (kv_cache_ != nullptr) Global("vm.builtin.kv_state_clear")(kv_cache_);
}

ffi::Tensor Model::Int32ToDevice(const std::vector<int32_t>& values, size_t slot) {
  const auto n = static_cast<int64_t>(values.size());
  if (int32_buffers_.size() <= slot) int32_buffers_.resize(slot + 1);
  ffi::Tensor& buffer = int32_buffers_[slot];
  if (!buffer.defined() || buffer.size(0) < n) {
    const int64_t capacity = std::max<int64_t>(n, buffer.defined() ? 2 * buffer.size(0) : 64);
    buffer = Global("runtime.TVMTensorAllocWithScope")(ffi::Shape({capacity}), DLDataType{kDLInt, 32, 1},
                                                       device_, ffi::Optional<ffi::String>())
                 .cast<ffi::Tensor>();
  }
  ffi::Tensor view = Reshape(buffer, {n});
  // A synchronous copy: kernels of the previous step that read this buffer have finished.
  Global("runtime.TVMTensorCopyFromBytes")(view, static_cast<void*>(const_cast<int32_t*>(values.data())),
                                           static_cast<int64_t>(n * sizeof(int32_t)));
  return view;
}

ffi::Tensor Model::Reshape(const ffi::Tensor& t, std::vector<int64_t> shape) const {
  return Global("runtime.TVMTensorCreateView")(t, ffi::Shape(shape), t.dtype(), 0)
      .cast<ffi::Tensor>();
}

ffi::Tensor Model::Embed(const std::vector<int32_t>& token_ids) {
  if (token_ids.empty()) throw std::invalid_argument("embed: no tokens");
  for (int32_t id : token_ids) {
    // Out-of-range ids would index past the embedding table.
    if (id < 0 || id >= metadata_.vocab_size) {
      throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                  std::to_string(metadata_.vocab_size) + ")");
    }
  }
  // TVM's CPU thread pool runs the kernels only on a CPU device; on a GPU, configuring it is
  // useless (and crashed inside TVM's ThreadGroup on the GPU check machine).
  if (device_.device_type == kDLCPU) ConfigureThreadPoolForThisThread(num_threads_);
  return embed_(Int32ToDevice(token_ids, 0), params_).cast<ffi::Tensor>();
}

void Model::CheckBatch(const std::vector<int64_t>& seq_ids, size_t num_inputs) const {
  CheckKVCache();
  if (seq_ids.empty()) throw std::invalid_argument("empty batch");
  if (seq_ids.size() != num_inputs) {
    throw std::invalid_argument("got " + std::to_string(seq_ids.size()) + " sequence ids but " +
                                std::to_string(num_inputs) + " inputs");
  }
  if (static_cast<int64_t>(seq_ids.size()) > kv_max_batch_) {
    throw std::invalid_argument("batch of " + std::to_string(seq_ids.size()) +
                                " exceeds the KV cache's max batch size " +
                                std::to_string(kv_max_batch_));
  }
  std::unordered_set<int64_t> seen(seq_ids.begin(), seq_ids.end());
  if (seen.size() != seq_ids.size()) throw std::invalid_argument("duplicate sequence id in batch");
}

Logits Model::Forward(const ffi::Function& fn, const std::vector<int64_t>& seq_ids,
                      const std::vector<int64_t>& lengths, const std::vector<ffi::Any>& inputs) {
  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  args.push_back(kv_cache_);
  args.push_back(params_);
  ffi::Any ret;
  {
    ForwardScope scope(kv_cache_, seq_ids, lengths);
    fn.CallPacked(args.data(), static_cast<int32_t>(args.size()), &ret);
  }
  // The VM returns the tuple (logits, kv_cache).
  return ToHostLogits(ret.cast<ffi::Array<ffi::Any>>()[0].cast<ffi::Tensor>());
}

Logits Model::BatchPrefill(const std::vector<int64_t>& seq_ids,
                           const std::vector<std::vector<int32_t>>& token_ids,
                           const std::vector<int64_t>& logit_rows) {
  CheckBatch(seq_ids, token_ids.size());
  if (!logit_rows.empty() && logit_rows.size() != token_ids.size()) {
    throw std::invalid_argument("prefill: logit_rows must have one entry per sequence");
  }
  std::vector<int32_t> flat;
  std::vector<int64_t> lengths;
  std::vector<int32_t> positions;  // indices into `flat` whose logits are returned
  for (size_t i = 0; i < token_ids.size(); ++i) {
    const auto& tokens = token_ids[i];
    if (tokens.empty()) throw std::invalid_argument("prefill: a sequence has no tokens");
    flat.insert(flat.end(), tokens.begin(), tokens.end());
    lengths.push_back(static_cast<int64_t>(tokens.size()));
    const int64_t rows = logit_rows.empty() ? 1 : logit_rows[i];
    if (rows < 1 || rows > static_cast<int64_t>(tokens.size())) {
      throw std::invalid_argument("prefill: logit_rows must be in [1, the sequence's tokens]");
    }
    for (int64_t r = rows; r >= 1; --r) positions.push_back(static_cast<int32_t>(flat.size() - r));
  }
  const auto n = static_cast<int64_t>(flat.size());
  if (n > kv_prefill_chunk_) {
    throw std::invalid_argument("prefill of " + std::to_string(n) +
                                " tokens exceeds the prefill chunk size " +
                                std::to_string(kv_prefill_chunk_));
  }
  ffi::Tensor embeds = Reshape(Embed(flat), {1, n, metadata_.hidden_size});
  return Forward(batch_prefill_, seq_ids, lengths, {embeds, Int32ToDevice(positions, 1)});
}

Logits Model::BatchDecode(const std::vector<int64_t>& seq_ids,
                          const std::vector<int32_t>& token_ids) {
  CheckBatch(seq_ids, token_ids.size());
  const auto b = static_cast<int64_t>(seq_ids.size());
  ffi::Tensor embeds = Reshape(Embed(token_ids), {b, 1, metadata_.hidden_size});
  const ffi::Function& fn = (b == 1 && decode_.has_value()) ? *decode_ : batch_decode_;
  return Forward(fn, seq_ids, std::vector<int64_t>(b, 1), {embeds});
}

Logits Model::ToHostLogits(const ffi::Tensor& logits) const {
  // [1, b, V] from batch_prefill, [b, 1, V] from batch_decode: b * V floats either way.
  if (logits.dtype() != DLDataType{kDLFloat, 32, 1} || logits.ndim() != 3 ||
      logits.size(2) != metadata_.vocab_size) {
    throw std::runtime_error("model returned logits of unexpected dtype/shape");
  }
  Logits out;
  out.vocab = logits.size(2);
  out.rows = logits.numel() / out.vocab;
  out.data.resize(static_cast<size_t>(logits.numel()));
  const size_t nbytes = out.data.size() * sizeof(float);
  if (logits.device().device_type == kDLCPU && logits.IsContiguous()) {
    std::memcpy(out.data.data(),
                static_cast<const char*>(logits.data_ptr()) + logits.byte_offset(), nbytes);
  } else {
    Global("runtime.TVMTensorCopyToBytes")(logits, static_cast<void*>(out.data.data()),
                                           static_cast<int64_t>(nbytes));
  }
  return out;
}

}  // namespace tvmlm
