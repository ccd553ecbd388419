// SPDX-License-Identifier: MIT
#include "iothubd/core/clock.hpp"

#include <ctime>

namespace iothubd::core {

std::chrono::microseconds SystemClock::monotonic() const {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::duration_cast<std::chrono::microseconds>(
                                               std::chrono::nanoseconds(ts.tv_nsec));
}

std::uint64_t SystemClock::unixSeconds() const {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec);
}

}  // namespace iothubd::core
