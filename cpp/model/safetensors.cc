#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

#include "json_util.h"

namespace tvmlm {

namespace {

std::string TvmDType(const std::string& st_dtype) {
  static const std::unordered_map<std::string, std::string> kMap = {
      {"F64", "float64"}, {"F32", "float32"}, {"F16", "float16"}, {"BF16", "bfloat16"},
      {"I64", "int64"},   {"I32", "int32"},   {"I16", "int16"},   {"I8", "int8"},
      {"U64", "uint64"},  {"U32", "uint32"},  {"U16", "uint16"},  {"U8", "uint8"},
      {"BOOL", "bool"},   {"F8_E4M3", "float8_e4m3fn"},           {"F8_E5M2", "float8_e5m2"},
  };
  auto it = kMap.find(st_dtype);
  return it == kMap.end() ? st_dtype : it->second;
}

size_t DTypeBytes(const std::string& dtype) {
  if (dtype == "float64" || dtype == "int64" || dtype == "uint64") return 8;
  if (dtype == "float32" || dtype == "int32" || dtype == "uint32") return 4;
  if (dtype == "float16" || dtype == "bfloat16" || dtype == "int16" || dtype == "uint16") return 2;
  return 1;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open parameter file " + path + ": " + strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size < 8) {
    close(fd);
    throw std::runtime_error("parameter file " + path + " is not a safetensors file (too short)");
  }
  mapping_size_ = static_cast<size_t>(st.st_size);
  mapping_ = mmap(nullptr, mapping_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);  // the mapping keeps the file alive
  if (mapping_ == MAP_FAILED) {
    mapping_ = nullptr;
    throw std::runtime_error("cannot mmap parameter file " + path + ": " + strerror(errno));
  }

  try {
    const auto* bytes = static_cast<const uint8_t*>(mapping_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little endian
    if (header_len > mapping_size_ - 8) throw std::invalid_argument("header length out of range");
    const uint8_t* data_begin = bytes + 8 + header_len;
    const size_t data_size = mapping_size_ - 8 - header_len;

    std::string header(reinterpret_cast<const char*>(bytes + 8), header_len);
    json::Object obj = json::ParseObject(header, "safetensors header");
    for (const auto& kv : obj) {
      std::string name = std::string(kv.first.cast<tvm::ffi::String>());
      if (name == "__metadata__") continue;
      json::Object info = json::AsObject(kv.second, "safetensors entry '" + name + "'");
      Entry e;
      e.dtype = TvmDType(json::GetString(info, "dtype"));
      e.shape = json::GetIntArray(info, "shape");
      std::vector<int64_t> offsets = json::GetIntArray(info, "data_offsets");
      if (offsets.size() != 2 || offsets[0] < 0 || offsets[1] < offsets[0] ||
          static_cast<size_t>(offsets[1]) > data_size) {
        throw std::invalid_argument("bad data_offsets for '" + name + "'");
      }
      size_t numel = 1;
      for (int64_t d : e.shape) numel *= static_cast<size_t>(d);
      e.data = data_begin + offsets[0];
      e.nbytes = static_cast<size_t>(offsets[1] - offsets[0]);
      if (e.nbytes != numel * DTypeBytes(e.dtype)) {
        throw std::invalid_argument("size of '" + name + "' does not match its shape and dtype");
      }
      entries_.emplace(std::move(name), std::move(e));
    }
  } catch (const std::exception& err) {
    munmap(mapping_, mapping_size_);
    mapping_ = nullptr;
    throw std::runtime_error("malformed safetensors file " + path + ": " + err.what());
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) munmap(mapping_, mapping_size_);
}

void SafetensorsFile::Populate() const {
  if (mapping_ == nullptr) return;
#ifdef MADV_HUGEPAGE
  madvise(mapping_, mapping_size_, MADV_HUGEPAGE);  // file THP where the kernel and fs allow it
#endif
#ifdef MADV_POPULATE_READ
  if (madvise(mapping_, mapping_size_, MADV_POPULATE_READ) == 0) return;
#endif
  madvise(mapping_, mapping_size_, MADV_WILLNEED);  // older kernels: read ahead at least
}

const SafetensorsFile::Entry* SafetensorsFile::Find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

}  // namespace tvmlm
