// VISIONOPS_CHECK(cond, parts...): TORCH_CHECK whose message is assembled here
// without std::ostream number formatting.
//
// Why: built with GCC 13 in C++20 mode against torch's wheels (the GPU machine),
// formatting an integer or a double through an ostringstream inside this
// extension segfaulted (TORCH_CHECK's own message path), while strings formatted
// fine. Numbers are therefore written with std::to_chars, which needs no locale.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <charconv>
#include <string>
#include <string_view>
#include <type_traits>

namespace visionops {
namespace detail {

template <typename T>
void append_number(std::string& out, T value) {
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  out.append(buffer, result.ptr);
}

inline void append(std::string& out, std::string_view s) { out.append(s); }
inline void append(std::string& out, const char* s) { out.append(s); }
inline void append(std::string& out, const std::string& s) { out.append(s); }
inline void append(std::string& out, char c) { out.push_back(c); }
inline void append(std::string& out, bool b) { out.append(b ? "true" : "false"); }
inline void append(std::string& out, c10::ScalarType t) { out.append(c10::toString(t)); }
inline void append(std::string& out, const c10::Device& d) { out.append(d.str()); }
inline void append(std::string& out, c10::IntArrayRef sizes) {
  out.push_back('[');
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) out.append(", ");
    append_number(out, sizes[i]);
  }
  out.push_back(']');
}
template <typename T, std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, char>, int> = 0>
void append(std::string& out, T value) {
  append_number(out, value);
}

}  // namespace detail

template <typename... Args>
std::string message(const Args&... args) {
  std::string out;
  (detail::append(out, args), ...);
  return out;
}

}  // namespace visionops

#define VISIONOPS_CHECK(cond, ...) TORCH_CHECK(cond, ::visionops::message(__VA_ARGS__))
