// SPDX-License-Identifier: MIT
// Client side of the three proxy protocols of the seed's ProxyOptions (protocol doc 1.6), as pure
// state machines: HTTP CONNECT with Basic credentials (RFC 9110 9.3.6, 11.7.1; RFC 7617), SOCKS5
// with username/password (RFC 1928, RFC 1929) and SOCKS4/4a. The proxy resolves the target name
// (SOCKS5 ATYP 3, SOCKS4a), as PySocks does with rdns, so the gateway needs no DNS for the hub.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "iothubd/core/proxy.hpp"
#include "iothubd/core/result.hpp"

namespace iothubd::relay {

class ProxyHandshake {
 public:
  /// For `proxy.type` != None. The target is the hub (or gateway) host and port.
  [[nodiscard]] static std::unique_ptr<ProxyHandshake> create(const core::ProxySettings& proxy,
                                                              std::string targetHost,
                                                              int targetPort);
  virtual ~ProxyHandshake() = default;

  /// Bytes to send now (empty when waiting for the proxy). Holds credentials: never log it.
  [[nodiscard]] std::string takeOutput() {
    std::string out = std::move(output_);
    output_.clear();
    return out;
  }
  /// Feeds the proxy's bytes: false while more are needed, true once the tunnel is open (then
  /// takeLeftover() has what followed). Errors are final: Errc::Unauthorized when the proxy
  /// refused the credentials, Errc::ConnectionFailed when it refused the target, Errc::Protocol
  /// for a malformed answer; messages name the proxy's status but never a credential.
  [[nodiscard]] virtual core::Result<bool> feed(std::string_view bytes) = 0;
  [[nodiscard]] virtual std::string takeLeftover() = 0;

 protected:
  std::string output_;  ///< what takeOutput() hands out next
};

/// "Basic base64(user:password)" (RFC 7617 2).
[[nodiscard]] std::string basicCredentials(std::string_view user, std::string_view password);

}  // namespace iothubd::relay
