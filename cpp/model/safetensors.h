// A read-only, memory-mapped .safetensors file: an 8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets}}, then the tensor bytes.
#ifndef TVMLM_MODEL_SAFETENSORS_H_
#define TVMLM_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace tvmlm {

class SafetensorsFile {
 public:
  struct Entry {
    std::string dtype;  // TVM spelling ("float32"), translated from safetensors' "F32"
    std::vector<int64_t> shape;
    const void* data = nullptr;
    size_t nbytes = 0;
  };

  /*! \brief Map the file; throws std::runtime_error naming the path when unreadable/malformed. */
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  /*!
   * \brief Fault the whole mapping in now (page tables filled, read-ahead done) so that the first
   * forward pass does not take a page fault per 4 KiB of weights; best effort.
   */
  void Populate() const;
  /*! \brief nullptr when absent. */
  const Entry* Find(const std::string& name) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace tvmlm

#endif  // TVMLM_MODEL_SAFETENSORS_H_
