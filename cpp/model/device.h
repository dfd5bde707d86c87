// Device naming and discovery on top of the TVM runtime's device API.
#ifndef TVMLM_MODEL_DEVICE_H_
#define TVMLM_MODEL_DEVICE_H_

#include <dlpack/dlpack.h>

#include <cstdint>
#include <string>

namespace tvmlm {

/*! \brief Parse "cpu", "cpu:0", "cuda:1", ... Throws std::invalid_argument on anything else. */
DLDevice ParseDevice(const std::string& device);

/*! \brief "cuda:1" for {kDLCUDA, 1}. */
std::string DeviceToString(DLDevice device);

/*!
 * \brief Make the runtime support for `device_type` available (dlopen its library if needed).
 * \return false when the library or its driver is missing; never throws.
 */
bool LoadDeviceRuntime(DLDeviceType device_type);

/*! \brief Whether TVM can use the device (runtime library + driver + device present). */
bool DeviceExists(const std::string& kind, int index);

/*! \brief Total device memory in bytes; 0 for cpu (the host reports it) or unknown. */
int64_t DeviceTotalMemory(const std::string& kind, int index);

}  // namespace tvmlm

#endif  // TVMLM_MODEL_DEVICE_H_
