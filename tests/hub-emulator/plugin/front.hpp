// SPDX-License-Identifier: MIT
// The emulator's "front door": a TLS-terminating MQTT relay on the hub's public port, in front of
// a plain broker listener, that holds SUBACKs and PUBACKs back per connection without stalling
// the broker (mosquitto 2.0.11 gives plugins no way to delay an acknowledgement; see README.md,
// "Traffic shaping"). It runs on its own thread; the broker thread talks to it only through
// Shaping (one mutex) and drains its log lines on TICK.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace iothubd::hubemu {

/// What the front delays, set from the broker thread (control commands), read by the front.
class Shaping {
 public:
  void setSubackDelayMs(int64_t ms);
  [[nodiscard]] int64_t subackDelayMs() const;
  /// 0 clears. Keyed by MQTT client id ("dev" or "dev/mod").
  void setPubackDelayMs(const std::string& clientId, int64_t ms);
  [[nodiscard]] int64_t pubackDelayMs(const std::string& clientId) const;
  void clearPubackDelays();

  /// Log lines from the front's thread, for the broker thread to print (mosquitto's logging is
  /// not thread-safe).
  void log(std::string line);
  [[nodiscard]] std::vector<std::string> takeLog();

 private:
  mutable std::mutex mutex_;
  int64_t subackDelayMs_ = 0;
  std::map<std::string, int64_t> pubackDelayMs_;
  std::vector<std::string> log_;
};

class Front {
 public:
  struct Options {
    std::vector<std::string> listenAddresses;  ///< numeric, e.g. "127.0.0.1", "::1"
    int port = 0;
    int backendPort = 0;  ///< the broker's plain listener on 127.0.0.1
    std::string certFile;
    std::string keyFile;
  };

  /// Binds the listeners (throws std::runtime_error, saying "Address already in use" when the
  /// port is taken, so that HubEmulator picks another) and starts the thread.
  Front(Options options, Shaping& shaping);
  ~Front();  // stops the thread and closes every connection
  Front(const Front&) = delete;
  Front& operator=(const Front&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
};

}  // namespace iothubd::hubemu
