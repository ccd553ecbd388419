// SPDX-License-Identifier: MIT
#pragma once

#include <string>

#include "iothubd/core/secret.hpp"

namespace iothubd::core {

/// The seed's `proxy_options` (ProxyOptions: proxy_type, proxy_addr, proxy_port, proxy_username,
/// proxy_password), resolved: the password is already read from its credential. Protocol doc 1.6.
///
/// Shared by every way the daemon reaches the hub: the MQTT transport (src/relay tunnels MQTT
/// and MQTT over WebSockets through it) and the HTTPS calls of file upload, which map it onto
/// libcurl as
///   CURLOPT_PROXY         = host            CURLOPT_PROXYPORT     = port
///   CURLOPT_PROXYTYPE     = CURLPROXY_HTTP | CURLPROXY_SOCKS4 | CURLPROXY_SOCKS5_HOSTNAME
///   CURLOPT_PROXYUSERNAME = username        CURLOPT_PROXYPASSWORD = password.reveal()
///   (HTTP: CURLOPT_PROXYAUTH = CURLAUTH_BASIC. As in the MQTT tunnel, HTTP and SOCKS5 proxies
///   resolve the hub name; for SOCKS4 it is resolved locally, since SOCKS4a is rarely served.)
struct ProxySettings {
  enum class Type { None, Http, Socks4, Socks5 };
  Type type = Type::None;
  std::string host;  ///< name or IP literal of the proxy
  int port = 0;
  std::string username;  ///< empty: no authentication (SOCKS4: the user id field)
  Secret<> password;     ///< HTTP Basic / SOCKS5 RFC 1929 password; unused by SOCKS4

  [[nodiscard]] bool enabled() const noexcept { return type != Type::None; }

  bool operator==(const ProxySettings&) const = default;
};

/// "HTTP", "SOCKS4", "SOCKS5" or "none", as in the configuration file.
[[nodiscard]] inline const char* proxyTypeName(ProxySettings::Type type) noexcept {
  switch (type) {
    case ProxySettings::Type::Http:
      return "HTTP";
    case ProxySettings::Type::Socks4:
      return "SOCKS4";
    case ProxySettings::Type::Socks5:
      return "SOCKS5";
    case ProxySettings::Type::None:
      break;
  }
  return "none";
}

}  // namespace iothubd::core
