// Force-included (`-include`) into every mlx-c C++ source this crate compiles.
#pragma once
#include <version>

// 1. mlx-c builds a few error messages with std::format, which libstdc++ only has from GCC 13.
//    On older toolchains, a formatter for the only form mlx-c uses: positional "{}" fields.
#if defined(__cplusplus) && !defined(__cpp_lib_format)
#include <sstream>
#include <string>
#include <string_view>
namespace mlx_sys_compat {
inline void append(std::ostringstream& out, std::string_view fmt) { out << fmt; }
template <class First, class... Rest>
void append(std::ostringstream& out, std::string_view fmt, const First& first,
            const Rest&... rest) {
  const auto field = fmt.find("{}");
  if (field == std::string_view::npos) {
    out << fmt;
    return;
  }
  out << fmt.substr(0, field) << first;
  append(out, fmt.substr(field + 2), rest...);
}
}  // namespace mlx_sys_compat
namespace std {
template <class... Args>
string format(string_view fmt, const Args&... args) {
  ostringstream out;
  mlx_sys_compat::append(out, fmt, args...);
  return out.str();
}
}  // namespace std
#endif

// 2. mlx/c/half.h only defines float16_t / bfloat16_t on aarch64, so on x86_64 mlx-c would
//    compile without its f16/bf16 accessors, which mlx-rs calls. MLX's own 2-byte types stand in
//    under the C names; every such accessor passes them by pointer, so the C ABI is unchanged.
#if defined(__cplusplus) && !defined(__aarch64__) && __has_include(<mlx/types/half_types.h>)
#include <mlx/types/half_types.h>
#define HAS_FLOAT16
#define HAS_BFLOAT16
typedef mlx::core::float16_t float16_t;
typedef mlx::core::bfloat16_t bfloat16_t;
#endif
