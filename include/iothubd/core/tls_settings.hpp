// SPDX-License-Identifier: MIT
#pragma once

#include <string>

#include "iothubd/core/secret.hpp"

namespace iothubd::core {

/// TLS trust and identity for reaching the hub (protocol doc 1.5): TLS 1.2 or later, the server
/// certificate verified against `caFile` (or the system store) and the host name. One set of
/// settings serves every way the daemon reaches the hub: libmosquitto's direct connection, the
/// relay's tunnels (WebSockets, proxies) and the HTTPS calls of file upload (libcurl).
struct TlsSettings {
  std::string caFile;    ///< PEM bundle to trust; empty = the system store
  std::string ciphers;   ///< OpenSSL cipher list for TLS 1.2; empty = OpenSSL's default
  std::string certFile;  ///< X.509 client certificate (chain, PEM), empty for SAS auth
  std::string keyFile;   ///< its private key
  Secret<> keyPassphrase;

  bool operator==(const TlsSettings&) const = default;
};

}  // namespace iothubd::core
