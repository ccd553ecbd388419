// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <set>
#include <string>

namespace iothubd::dbusapi {

/// Who keeps the hub link open (issue 12, "no app cuts the others off"). Connect gives the
/// calling bus peer a hold, Disconnect releases only that peer's hold, and a peer that leaves the
/// bus loses its hold. The link may close only when no peer holds it and the configuration does
/// not keep it up ([connection] keep_connected, default true: the daemon keeps the link from
/// start, and Disconnect never closes it). Peers are D-Bus unique names; one entry per peer, so
/// the set is bounded by the bus's own connection limit. Loop thread only.
class LinkHolds {
 public:
  explicit LinkHolds(bool keepConnected = true) : keepConnected_(keepConnected) {}

  /// Connect: `peer` holds the link (again: no change).
  void hold(const std::string& peer) { holders_.insert(peer); }
  /// Disconnect: releases `peer`'s hold, if it had one. True when the link is to close now: no
  /// peer holds it and keep_connected is off (a Disconnect without a hold closes an unheld link,
  /// as Disconnect did for a single app).
  [[nodiscard]] bool release(const std::string& peer) {
    holders_.erase(peer);
    return shouldClose();
  }
  /// `peer` left the bus. True when it held the link and the link is to close now.
  [[nodiscard]] bool peerGone(const std::string& peer) {
    return holders_.erase(peer) > 0 && shouldClose();
  }

  /// Configuration reload: applies from the next Disconnect or departure on.
  void setKeepConnected(bool keep) noexcept { keepConnected_ = keep; }
  [[nodiscard]] bool keepConnected() const noexcept { return keepConnected_; }
  [[nodiscard]] bool heldBy(const std::string& peer) const { return holders_.contains(peer); }
  [[nodiscard]] std::size_t holderCount() const noexcept { return holders_.size(); }

 private:
  [[nodiscard]] bool shouldClose() const noexcept { return holders_.empty() && !keepConnected_; }

  bool keepConnected_;
  std::set<std::string> holders_;
};

}  // namespace iothubd::dbusapi
