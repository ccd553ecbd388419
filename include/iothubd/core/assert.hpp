// SPDX-License-Identifier: MIT
// An assertion that stays on in release builds, for invariants whose breach would otherwise
// corrupt state silently (Envoy's RELEASE_ASSERT): the daemon logs what broke and aborts, and the
// service manager restarts it. Never for what the environment, a peer or the configuration
// controls: those are errors to handle.
#pragma once

namespace iothubd::core {

/// Logs "internal error: <condition> (<file>:<line>): <why>" at priority error and aborts.
[[noreturn]] void assertionFailed(const char* condition, const char* why, const char* file,
                                  int line) noexcept;

}  // namespace iothubd::core

/// IOTHUBD_ASSERT(inFlight_.empty(), "a planned reconnect closes only a drained link")
#define IOTHUBD_ASSERT(condition, why)                                         \
  do {                                                                         \
    if (!(condition)) [[unlikely]] {                                           \
      ::iothubd::core::assertionFailed(#condition, (why), __FILE__, __LINE__); \
    }                                                                          \
  } while (false)
