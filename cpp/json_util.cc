#include "json_util.h"

#include <stdexcept>

namespace tvmlm {
namespace json {

namespace ffi = tvm::ffi;

namespace {

[[noreturn]] void BadField(const char* key, const char* expected) {
  throw std::invalid_argument(std::string("JSON field '") + key + "' must be " + expected);
}

Value Required(const Object& obj, const char* key) {
  auto it = obj.find(ffi::String(key));
  if (it == obj.end()) throw std::invalid_argument(std::string("missing JSON field '") + key + "'");
  return (*it).second;
}

}  // namespace

Object ParseObject(const std::string& text, const std::string& what) {
  ffi::String error;
  Value value = ffi::json::Parse(ffi::String(text), &error);
  if (!error.empty()) {
    throw std::invalid_argument("invalid JSON in " + what + ": " + std::string(error));
  }
  return AsObject(value, what);
}

Object AsObject(const Value& value, const std::string& what) {
  if (auto obj = value.try_cast<Object>()) return *obj;
  throw std::invalid_argument(what + " must be a JSON object");
}

bool Has(const Object& obj, const char* key) { return obj.count(ffi::String(key)) != 0; }

bool IsNullOrMissing(const Object& obj, const char* key) {
  auto it = obj.find(ffi::String(key));
  return it == obj.end() || (*it).second == nullptr;
}

int64_t GetInt(const Object& obj, const char* key) {
  Value v = Required(obj, key);
  // JSON has one number type: accept 3.0 but not 3.5 where an integer is expected.
  if (auto i = v.as<int64_t>()) return *i;
  if (auto d = v.as<double>()) {
    if (*d == static_cast<double>(static_cast<int64_t>(*d))) return static_cast<int64_t>(*d);
  }
  BadField(key, "an integer");
}

int64_t GetInt(const Object& obj, const char* key, int64_t fallback) {
  return IsNullOrMissing(obj, key) ? fallback : GetInt(obj, key);
}

double GetDouble(const Object& obj, const char* key, double fallback) {
  if (IsNullOrMissing(obj, key)) return fallback;
  Value v = Required(obj, key);
  if (auto d = v.as<double>()) return *d;
  if (auto i = v.as<int64_t>()) return static_cast<double>(*i);
  BadField(key, "a number");
}

bool GetBool(const Object& obj, const char* key, bool fallback) {
  if (IsNullOrMissing(obj, key)) return fallback;
  if (auto b = Required(obj, key).as<bool>()) return *b;
  BadField(key, "a boolean");
}

std::string GetString(const Object& obj, const char* key) {
  if (auto s = Required(obj, key).as<ffi::String>()) return std::string(*s);
  BadField(key, "a string");
}

std::string GetString(const Object& obj, const char* key, const std::string& fallback) {
  return IsNullOrMissing(obj, key) ? fallback : GetString(obj, key);
}

std::optional<int64_t> GetOptionalInt(const Object& obj, const char* key) {
  if (IsNullOrMissing(obj, key)) return std::nullopt;
  return GetInt(obj, key);
}

std::optional<int64_t> GetOptionalIntIfScalar(const Object& obj, const char* key) {
  if (IsNullOrMissing(obj, key)) return std::nullopt;
  if (auto i = Required(obj, key).as<int64_t>()) return *i;
  return std::nullopt;
}

ffi::json::Array GetArray(const Object& obj, const char* key) {
  if (auto a = Required(obj, key).try_cast<ffi::json::Array>()) return *a;
  BadField(key, "an array");
}

std::vector<int64_t> GetIntArray(const Object& obj, const char* key) {
  std::vector<int64_t> out;
  if (IsNullOrMissing(obj, key)) return out;
  for (const Value& v : GetArray(obj, key)) {
    auto i = v.as<int64_t>();
    if (!i) BadField(key, "an array of integers");
    out.push_back(*i);
  }
  return out;
}

std::string Stringify(const Value& value) { return std::string(ffi::json::Stringify(value)); }

}  // namespace json
}  // namespace tvmlm
