// SPDX-License-Identifier: MIT
// The benchmark's D-Bus client: plain sd-bus on one thread, so that what it costs is small and
// the same for iothubd and the echo reference. Calls are pipelined: at most `window` await
// their reply.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

struct sd_bus;
struct sd_bus_message;

namespace iothubd::bench {

struct BusTarget {
  std::string destination;
  std::string path;
  std::string interface;
};

struct CallStats {
  std::size_t calls = 0;
  std::size_t errors = 0;
  std::string firstError;  ///< "name: message"
  double seconds = 0;
  std::vector<double> latencyUs;  ///< per call, from send to reply
  double clientCpuUs = 0;         ///< this thread's CPU time during the run
};

class BusClient {
 public:
  /// Appends the arguments of call `index` to `message`; returns an sd-bus error code (< 0).
  using Build = std::function<int(sd_bus_message* message, std::size_t index)>;

  explicit BusClient(const std::string& address);
  ~BusClient();
  BusClient(const BusClient&) = delete;
  BusClient& operator=(const BusClient&) = delete;

  /// `count` calls of `member`, at most `window` outstanding.
  CallStats run(const BusTarget& target, const char* member, std::size_t count, std::size_t window,
                const Build& build, std::chrono::seconds timeout = std::chrono::seconds(120));

  [[nodiscard]] std::uint64_t propertyU64(const BusTarget& target, const char* name);
  [[nodiscard]] bool propertyBool(const BusTarget& target, const char* name);

 private:
  sd_bus* bus_ = nullptr;
};

/// Appends (s a{ss} a{ss}) arguments: `body` without properties.
int appendMessage(sd_bus_message* message, const std::string& body);
/// Appends an a(sa{ss}a{ss}) of `bodies`.
int appendBatch(sd_bus_message* message, const std::vector<const std::string*>& bodies);

}  // namespace iothubd::bench
