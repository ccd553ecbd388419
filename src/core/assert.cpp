// SPDX-License-Identifier: MIT
#include "iothubd/core/assert.hpp"

#include <cstdlib>
#include <string>

#include "iothubd/core/log.hpp"

namespace iothubd::core {

void assertionFailed(const char* condition, const char* why, const char* file, int line) noexcept {
  logf(LogLevel::Error, "internal error: ", condition, " (", file, ":", line, "): ", why);
  flushLogRateLimit();
  std::abort();
}

}  // namespace iothubd::core
