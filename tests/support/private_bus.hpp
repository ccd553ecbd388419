// SPDX-License-Identifier: MIT
// Test support: a private system-like dbus-daemon that loads our real policy file
// (dbus/org.iothubd.conf), so tests exercise the policy the package installs.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace iothubd::testing {

class PrivateBus {
 public:
  /// Starts `dbus-daemon --nofork` in `dir` with a configuration modelled on Debian's
  /// system.conf plus `<include>policyFile</include>`; returns once the bus accepts connections
  /// (the daemon prints its address only when it listens).
  /// `extraPolicyFiles` are included after it (e.g. a benchmark's own service).
  PrivateBus(const std::string& dir, const std::string& policyFile,
             const std::vector<std::string>& extraPolicyFiles = {});
  ~PrivateBus();
  PrivateBus(const PrivateBus&) = delete;
  PrivateBus& operator=(const PrivateBus&) = delete;

  /// For DBUS_SYSTEM_BUS_ADDRESS or `busctl --address=`.
  [[nodiscard]] const std::string& address() const { return address_; }
  /// The dbus-daemon process (its CPU time, for benchmarks).
  [[nodiscard]] pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  std::string address_;
};

/// Path of our policy file: $IOTHUBD_DBUS_POLICY (set by meson for the test).
[[nodiscard]] std::string policyFilePath();

}  // namespace iothubd::testing
