// SPDX-License-Identifier: MIT
// Shared by the libFuzzer targets: property checks that turn a violated invariant into a crash
// libFuzzer records (abort), and a way to see a fuzzer's bytes as text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace iothubd::fuzz {

/// The input as a string_view; the targets parse text, and every byte value is allowed in it.
inline std::string_view asText(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

[[noreturn]] inline void propertyViolated(const char* file, int line, const char* what) {
  std::fprintf(stderr, "%s:%d: fuzz property violated: %s\n", file, line, what);
  std::abort();
}

}  // namespace iothubd::fuzz

// A macro, not a function, for the file and line (clang 14 has no std::source_location).
#define FUZZ_CHECK(condition)                                            \
  do {                                                                   \
    if (!(condition)) {                                                  \
      ::iothubd::fuzz::propertyViolated(__FILE__, __LINE__, #condition); \
    }                                                                    \
  } while (false)
