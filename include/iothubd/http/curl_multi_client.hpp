// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "iothubd/core/proxy.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/http/http_client.hpp"

namespace iothubd::loop {
class EventLoop;
}

namespace iothubd::http {

struct CurlOptions {
  TlsSettings tls;
  std::string userAgent = "iothubd/0.1";
  std::chrono::milliseconds connectTimeout{std::chrono::seconds(30)};
  /// Plain http:// is refused unless set (the hub and Azure Storage are HTTPS only).
  bool allowPlainHttp = false;
  /// Bound on open connections (libcurl's CURLMOPT_MAX_TOTAL_CONNECTIONS); 0 = libcurl default.
  long maxConnections = 16;
  /// The seed's proxy_options, for every request (protocol doc 1.6).
  core::ProxySettings proxy;

  bool operator==(const CurlOptions&) const = default;
};

/// HttpClient over libcurl's multi socket interface, driven by the daemon's sd-event loop
/// (architecture doc 6.1): CURLMOPT_SOCKETFUNCTION maps each socket to a loop IoWatch,
/// CURLMOPT_TIMERFUNCTION to one loop timer, and both call curl_multi_socket_action. libcurl's
/// resolver runs asynchronously; no thread of ours is involved. TLS 1.2 minimum, peer and host
/// name verification always on (protocol doc 1.5).
/// The client must not be destroyed from inside one of its own completions (post() it instead);
/// destroying it cancels every active request without calling their completions.
/// Errors: Errc::Internal if libcurl cannot be initialised, Errc::Config if a TLS file named in
/// the options cannot be read.
[[nodiscard]] core::Result<std::unique_ptr<HttpClient>> createCurlMultiClient(loop::EventLoop& loop,
                                                                              CurlOptions options);

}  // namespace iothubd::http
