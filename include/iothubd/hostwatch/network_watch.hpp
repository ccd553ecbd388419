// SPDX-License-Identifier: MIT
// What the host's network manager says about the network, over the system bus: systemd-networkd
// or NetworkManager, whichever runs (both, or neither). The daemon uses it to reconnect at once
// when the network comes back instead of waiting out the retry backoff (issue 14).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "iothubd/core/result.hpp"

namespace sdbus {
class IConnection;
}

namespace iothubd::hostwatch {

/// A network manager's state, as far as reaching the hub goes.
enum class Online : std::uint8_t {
  Unknown,  ///< the manager does not say (no link it must bring online, starting up)
  Offline,  ///< no way out: nothing to try
  Partial,  ///< some way out (some links it must bring online are, a default route): try
  Online,   ///< fully online
};
[[nodiscard]] const char* onlineName(Online state) noexcept;

/// systemd-networkd's org.freedesktop.network1.Manager.OnlineState (systemd 252: "offline",
/// "partial", "online", or "" when no link is required for online). "partial" means that some
/// of the links required for online are online: the hub may well be reachable over them, and
/// systemd's own network_is_online() counts it as online too.
[[nodiscard]] Online networkdOnlineState(std::string_view value) noexcept;
/// NetworkManager's org.freedesktop.NetworkManager.State (NMState). CONNECTED_GLOBAL (70) is
/// Online; CONNECTED_SITE (60: a default route, but NetworkManager's connectivity check failed,
/// as it does behind firewalls that block the check but not the hub) is Partial; 10..50 are
/// Offline; UNKNOWN (0) and anything else Unknown.
[[nodiscard]] Online networkManagerState(std::uint32_t value) noexcept;
/// Whether `before` -> `after` is the network coming back: from Offline to Partial or Online,
/// or from Partial to Online (the link that came back may be the route to the hub). Unknown is
/// never a before: a state first read is not a change.
[[nodiscard]] bool cameBack(Online before, Online after) noexcept;

/// Watches systemd-networkd (org.freedesktop.network1, property OnlineState) and NetworkManager
/// (org.freedesktop.NetworkManager, property State) on the system bus, read at start and on
/// PropertiesChanged, and says when the network comes back. Neither service is ever started by
/// it (both are bus-activatable on Debian once enabled): owners are learnt from the bus and only
/// they are asked. A manager that starts after the daemon, or restarts, is picked up; with
/// neither running it does nothing. Loop thread only, on a bus connection the loop dispatches;
/// destroy it before the connection.
class NetworkWatch {
 public:
  /// `manager` is "systemd-networkd" or "NetworkManager".
  using CameBack = std::function<void(std::string_view manager)>;

  /// Starts watching. The match rules are installed synchronously (create it before the loop
  /// runs), everything after is asynchronous. Io if the bus refuses a match rule.
  [[nodiscard]] static core::Result<std::unique_ptr<NetworkWatch>> create(sdbus::IConnection& bus,
                                                                          const CameBack& cameBack);
  ~NetworkWatch();
  NetworkWatch(const NetworkWatch&) = delete;
  NetworkWatch& operator=(const NetworkWatch&) = delete;

 private:
  class Manager;
  NetworkWatch() = default;

  std::vector<std::unique_ptr<Manager>> managers_;
};

}  // namespace iothubd::hostwatch
