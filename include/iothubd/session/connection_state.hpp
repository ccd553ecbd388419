// SPDX-License-Identifier: MIT
#pragma once

namespace iothubd::session {

/// The values of the D-Bus property ConnectionState.
enum class ConnectionState { Disconnected, Connecting, Connected, Reconnecting };
[[nodiscard]] const char* connectionStateName(ConnectionState state) noexcept;

}  // namespace iothubd::session
