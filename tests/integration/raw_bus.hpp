// SPDX-License-Identifier: MIT
// Test support: a bare sd-bus client for what the generated proxy cannot do: calls with any
// signature (wrong ones included), calls that ask for no reply, and many connections driven from
// one thread (the generated proxy runs a thread per connection).
#pragma once

#include <sys/types.h>
#include <systemd/sd-bus.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace iothubd::testing {

struct BusCloser {
  void operator()(sd_bus* bus) const { sd_bus_close_unref(bus); }
};
/// A client connection; destroying it closes the socket at once, without flushing (as a process
/// that exits does: queued calls may never leave).
using BusPtr = std::unique_ptr<sd_bus, BusCloser>;

struct MessageUnref {
  void operator()(sd_bus_message* m) const { sd_bus_message_unref(m); }
};
using MessagePtr = std::unique_ptr<sd_bus_message, MessageUnref>;

/// Opens a client connection to the bus at `address` (Hello is sent, not awaited). Throws
/// std::runtime_error on failure.
[[nodiscard]] BusPtr openBus(const std::string& address);

/// The same as another user: the connection is made on a thread that takes `uid`, `gid` and
/// `groups` for itself (Linux credentials are per thread at the system-call level), so the bus
/// (SO_PEERCRED, SO_PEERGROUPS, the EXTERNAL handshake) sees that user while this process stays
/// root. Needs root. Throws on failure.
[[nodiscard]] BusPtr openBusAs(const std::string& address, uid_t uid, gid_t gid,
                               const std::vector<gid_t>& groups);

/// A method call to org.iothubd's /org/iothubd/Device. Throws on failure.
[[nodiscard]] MessagePtr newCall(sd_bus* bus, const std::string& member,
                                 const std::string& interface = "org.iothubd.Device1",
                                 const std::string& path = "/org/iothubd/Device",
                                 const std::string& destination = "org.iothubd");

/// Length of the first complete type of a D-Bus signature ("a{ss}s" -> 5).
[[nodiscard]] inline std::size_t completeTypeLength(std::string_view s) {
  if (s.empty()) {
    return 0;
  }
  if (s[0] == 'a') {
    return 1 + completeTypeLength(s.substr(1));
  }
  if (s[0] == '(' || s[0] == '{') {
    int depth = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
      depth += (s[i] == '(' || s[i] == '{') ? 1 : (s[i] == ')' || s[i] == '}') ? -1 : 0;
      if (depth == 0) {
        return i + 1;
      }
    }
  }
  return 1;
}

/// Appends a D-Bus `a{ss}`. Returns sd-bus's negative errno on failure.
[[nodiscard]] int appendStringMap(sd_bus_message* m,
                                  const std::map<std::string, std::string>& values);

/// What a call came back with.
struct CallOutcome {
  std::string errorName;  ///< "" on success
  std::string errorMessage;
  MessagePtr reply;  ///< the method return, on success
};

/// Sends `call` and waits up to `timeout` for its answer. Throws if it cannot be sent.
[[nodiscard]] CallOutcome callAndWait(sd_bus* bus, sd_bus_message* call,
                                      std::chrono::milliseconds timeout = std::chrono::seconds(25));

/// Sends `call` flagged NO_REPLY_EXPECTED (the peer runs it but answers nobody) and flushes it
/// to the socket. Throws on failure.
void sendWithoutReply(sd_bus* bus, sd_bus_message* call);

}  // namespace iothubd::testing
