// SPDX-License-Identifier: MIT
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <vector>

namespace iothubd::dbusapi {

/// Who a bus caller is, as the bus knows it (org.freedesktop.DBus.GetConnectionCredentials):
/// the uid of the connecting process and its groups when it connected. These are the ids the bus
/// policy decided by, in the bus's (the host's) user namespace.
struct PeerCredentials {
  uid_t uid = static_cast<uid_t>(-1);
  std::vector<gid_t> gids;  ///< supplementary groups (UnixGroupIDs), as dbus-daemon saw them

  [[nodiscard]] bool isRoot() const noexcept { return uid == 0; }
  [[nodiscard]] bool inGroup(gid_t gid) const {
    return std::find(gids.begin(), gids.end(), gid) != gids.end();
  }
};

}  // namespace iothubd::dbusapi
