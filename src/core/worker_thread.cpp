// SPDX-License-Identifier: MIT
#include "iothubd/core/worker_thread.hpp"

#include <cstdlib>
#include <exception>
#include <system_error>

#include "iothubd/core/log.hpp"

namespace iothubd::core {

std::thread startWorkerThread(const char* what, std::function<void()> body) {
  try {
    return std::thread([what, body = std::move(body)]() noexcept {
      try {
        body();
      } catch (const std::exception& e) {
        logf(LogLevel::Error, what, " failed: ", e.what());
      } catch (...) {
        logf(LogLevel::Error, what, " failed");
      }
    });
  } catch (const std::system_error& e) {
    // Only resource exhaustion fails here (Envoy's rule: crash on the unlikely).
    logf(LogLevel::Error, "cannot start a thread for ", what, ": ", e.what());
    flushLogRateLimit();
    std::abort();
  }
}

}  // namespace iothubd::core
