// SPDX-License-Identifier: MIT
// One resolved TCP peer address, and the order in which to try several (RFC 8305 section 4).
// Pure: no I/O.
#pragma once

#include <sys/socket.h>

#include <string>
#include <vector>

namespace iothubd::relay {

/// An IPv4 or IPv6 address with port, as getaddrinfo returns it.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;

  [[nodiscard]] int family() const noexcept { return storage.ss_family; }
  [[nodiscard]] const sockaddr* get() const noexcept {
    return reinterpret_cast<const sockaddr*>(&storage);
  }
  /// "127.0.0.1:8883" or "[::1]:8883" (numeric, for logs and error messages).
  [[nodiscard]] std::string toString() const;
  /// The same family, address and port (IPv6: and scope).
  [[nodiscard]] bool sameAs(const SocketAddress& other) const noexcept;
};

/// The order of connection attempts (RFC 8305 section 4, "First Address Family Count" 1): the
/// resolver's order within each family (getaddrinfo already sorts by RFC 6724), starting with the
/// family of the resolver's first address and then alternating IPv6 and IPv4, so that a broken
/// family costs one attempt delay rather than one per address of it. Duplicates (a name listed
/// twice in /etc/hosts) are dropped.
[[nodiscard]] std::vector<SocketAddress> interleaveFamilies(
    const std::vector<SocketAddress>& addresses);

}  // namespace iothubd::relay
