#include "model/device.h"

#include <dlfcn.h>
#include <tvm/ffi/function.h>

#include <map>
#include <mutex>
#include <stdexcept>

// Exported by libtvm_runtime.so (c_backend_api.h); only its address is used, to find the directory
// the runtime was loaded from.
extern "C" int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr);

namespace tvmlm {

namespace ffi = tvm::ffi;

namespace {

// DeviceAttrKind values of tvm/runtime/device_api.h (not includable from the wheel).
constexpr int kAttrExist = 0;
constexpr int kAttrTotalGlobalMemory = 14;

struct KindName {
  const char* name;
  DLDeviceType type;
};
constexpr KindName kKinds[] = {
    {"cpu", kDLCPU},       {"cuda", kDLCUDA},   {"metal", kDLMetal},
    {"vulkan", kDLVulkan}, {"rocm", kDLROCM},   {"opencl", kDLOpenCL},
};

std::string RuntimeLibDir() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&TVMBackendFreeWorkspace), &info) == 0 || !info.dli_fname) {
    return "";
  }
  std::string path = info.dli_fname;
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

int64_t GetDeviceAttr(DLDevice dev, int attr) {
  static ffi::Function get_attr = ffi::Function::GetGlobalRequired("runtime.GetDeviceAttr");
  ffi::Any ret = get_attr(static_cast<int>(dev.device_type), dev.device_id, attr);
  if (auto v = ret.try_cast<int64_t>()) return *v;
  return 0;
}

}  // namespace

DLDevice ParseDevice(const std::string& device) {
  std::string kind = device;
  int index = 0;
  size_t colon = device.find(':');
  if (colon != std::string::npos) {
    kind = device.substr(0, colon);
    std::string idx = device.substr(colon + 1);
    if (idx.empty() || idx.find_first_not_of("0123456789") != std::string::npos || idx.size() > 6) {
      throw std::invalid_argument("invalid device '" + device + "' (expected e.g. cpu:0, cuda:1)");
    }
    index = std::stoi(idx);
  }
  for (const KindName& k : kKinds) {
    if (kind == k.name) return DLDevice{k.type, index};
  }
  throw std::invalid_argument("unknown device kind '" + kind +
                              "' (expected cpu, cuda, metal, vulkan, rocm or opencl)");
}

std::string DeviceToString(DLDevice device) {
  for (const KindName& k : kKinds) {
    if (k.type == device.device_type) return std::string(k.name) + ":" + std::to_string(device.device_id);
  }
  return "device" + std::to_string(static_cast<int>(device.device_type)) + ":" +
         std::to_string(device.device_id);
}

bool LoadDeviceRuntime(DLDeviceType device_type) {
  if (device_type == kDLCPU) return true;
  std::string kind = DeviceToString(DLDevice{device_type, 0});
  kind = kind.substr(0, kind.find(':'));
  // Already registered (built into libtvm_runtime.so, or loaded before)?
  if (ffi::Function::GetGlobal("device_api." + kind).has_value()) return true;

  // The GPU runtimes are separate libraries next to libtvm_runtime.so. They register their
  // device API in a static initializer, so RTLD_GLOBAL + staying loaded is all that is needed.
  // One attempt per kind: a failed dlopen (no driver) will not succeed later in this process.
  static std::mutex mu;
  static std::map<DLDeviceType, bool> tried;
  std::lock_guard<std::mutex> lock(mu);
  auto it = tried.find(device_type);
  if (it != tried.end()) return it->second;
  bool ok = false;
  std::string dir = RuntimeLibDir();
  if (!dir.empty()) {
    std::string lib = dir + "/libtvm_runtime_" + kind + ".so";
    ok = dlopen(lib.c_str(), RTLD_NOW | RTLD_GLOBAL) != nullptr;
  }
  ok = ok && ffi::Function::GetGlobal("device_api." + kind).has_value();
  tried[device_type] = ok;
  return ok;
}

bool DeviceExists(const std::string& kind, int index) {
  try {
    DLDevice dev = ParseDevice(kind + ":" + std::to_string(index));
    if (dev.device_type == kDLCPU) return index == 0;
    if (!LoadDeviceRuntime(dev.device_type)) return false;
    return GetDeviceAttr(dev, kAttrExist) != 0;
  } catch (const std::exception&) {
    // A driver that fails to initialise means "no such device" to the caller.
    return false;
  }
}

int64_t DeviceTotalMemory(const std::string& kind, int index) {
  if (!DeviceExists(kind, index)) return 0;
  DLDevice dev = ParseDevice(kind + ":" + std::to_string(index));
  if (dev.device_type == kDLCPU) return 0;
  try {
    return GetDeviceAttr(dev, kAttrTotalGlobalMemory);
  } catch (const std::exception&) {
    return 0;
  }
}

}  // namespace tvmlm
