// Small typed accessors over tvm_ffi's JSON values, so config parsing reads like a schema and
// every malformed field fails with a message that names it.
#ifndef TVMLM_JSON_UTIL_H_
#define TVMLM_JSON_UTIL_H_

#include <tvm/ffi/extra/json.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tvmlm {
namespace json {

using Object = tvm::ffi::json::Object;
using Value = tvm::ffi::json::Value;

/*! \brief Parse `text` as a JSON object; throws std::invalid_argument naming `what` on error. */
Object ParseObject(const std::string& text, const std::string& what);

bool Has(const Object& obj, const char* key);
/*! \brief True when `key` is absent or JSON null. */
bool IsNullOrMissing(const Object& obj, const char* key);

int64_t GetInt(const Object& obj, const char* key);
int64_t GetInt(const Object& obj, const char* key, int64_t fallback);
double GetDouble(const Object& obj, const char* key, double fallback);
bool GetBool(const Object& obj, const char* key, bool fallback);
std::string GetString(const Object& obj, const char* key);
std::string GetString(const Object& obj, const char* key, const std::string& fallback);
std::optional<int64_t> GetOptionalInt(const Object& obj, const char* key);
/*! \brief The integer at `key` when it is a scalar; empty when it is absent or not a scalar. */
std::optional<int64_t> GetOptionalIntIfScalar(const Object& obj, const char* key);
std::vector<int64_t> GetIntArray(const Object& obj, const char* key);
tvm::ffi::json::Array GetArray(const Object& obj, const char* key);
Object AsObject(const Value& value, const std::string& what);

std::string Stringify(const Value& value);

}  // namespace json
}  // namespace tvmlm

#endif  // TVMLM_JSON_UTIL_H_
