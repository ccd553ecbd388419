// SPDX-License-Identifier: MIT
#include "socket_address.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>

namespace iothubd::relay {

std::string SocketAddress::toString() const {
  char text[INET6_ADDRSTRLEN] = "?";
  if (family() == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&storage);
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
    return "[" + std::string(text) + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  if (family() == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&storage);
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
    return std::string(text) + ":" + std::to_string(ntohs(a->sin_port));
  }
  return "(address family " + std::to_string(family()) + ")";
}

bool SocketAddress::sameAs(const SocketAddress& other) const noexcept {
  if (family() != other.family()) {
    return false;
  }
  if (family() == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&storage);
    const auto* b = reinterpret_cast<const sockaddr_in6*>(&other.storage);
    return a->sin6_port == b->sin6_port && a->sin6_scope_id == b->sin6_scope_id &&
           std::memcmp(&a->sin6_addr, &b->sin6_addr, sizeof a->sin6_addr) == 0;
  }
  if (family() == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&storage);
    const auto* b = reinterpret_cast<const sockaddr_in*>(&other.storage);
    return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
  }
  return length == other.length && std::memcmp(&storage, &other.storage, length) == 0;
}

std::vector<SocketAddress> interleaveFamilies(const std::vector<SocketAddress>& addresses) {
  std::vector<SocketAddress> unique;
  for (const auto& a : addresses) {
    if (std::none_of(unique.begin(), unique.end(),
                     [&](const SocketAddress& u) { return u.sameAs(a); })) {
      unique.push_back(a);
    }
  }
  if (unique.empty()) {
    return unique;
  }
  const int first = unique.front().family();
  std::vector<SocketAddress> preferred;
  std::vector<SocketAddress> other;
  for (const auto& a : unique) {
    (a.family() == first ? preferred : other).push_back(a);
  }
  std::vector<SocketAddress> out;
  out.reserve(unique.size());
  for (std::size_t i = 0; i < std::max(preferred.size(), other.size()); ++i) {
    if (i < preferred.size()) {
      out.push_back(preferred[i]);
    }
    if (i < other.size()) {
      out.push_back(other[i]);
    }
  }
  return out;
}

}  // namespace iothubd::relay
