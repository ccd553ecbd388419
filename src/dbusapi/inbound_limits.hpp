// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <string_view>

namespace iothubd::dbusapi {

/// What the daemon passes on from the hub to the bus, at most (README "Security"). IoT Hub's own
/// limits are far below: a cloud-to-device message carries at most 64 KiB, a direct-method
/// payload 128 KiB and the desired section of a twin 32 KiB. Four to eight times that leaves room
/// for what the hub adds (escapes, metadata) while a hostile or broken hub cannot make the daemon
/// emit signals anywhere near the bus's 32 MiB message limit (the bus would drop the daemon).
/// Anything larger is answered (direct methods: 413) or dropped, with a log line, never
/// forwarded.
inline constexpr std::size_t kMaxInboundPayloadBytes = 256 * 1024;
/// A whole twin document (GetTwin): tags 8 KiB + desired and reported 32 KiB each as IoT Hub
/// limits them, with room for versions and metadata.
inline constexpr std::size_t kMaxTwinDocumentBytes = 1024 * 1024;
/// Direct-method names an app may claim and the hub may invoke: 1 to 128 printable ASCII
/// characters (0x20-0x7E), no '/' (it would change the MQTT topic's shape).
inline constexpr std::size_t kMaxMethodNameBytes = 128;

[[nodiscard]] constexpr bool validMethodName(std::string_view name) noexcept {
  if (name.empty() || name.size() > kMaxMethodNameBytes) {
    return false;
  }
  for (char c : name) {
    if (c < 0x20 || c > 0x7E || c == '/') {
      return false;
    }
  }
  return true;
}

}  // namespace iothubd::dbusapi
