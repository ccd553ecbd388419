// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "iothubd/core/proxy.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/secret.hpp"
#include "iothubd/core/tls_settings.hpp"
#include "iothubd/loop/event_loop.hpp"

namespace iothubd::relay {

/// TLS as the hub connection needs it; the tunnel also sets SNI.
using TlsClientConfig = core::TlsSettings;

/// Builds the TLS context for `tls` once, to find at start-up what would otherwise fail every
/// connection attempt: an unreadable CA file, an invalid cipher list, a client certificate or key
/// that does not load (wrong pass phrase) or do not match. Errc::Config naming the setting; never
/// contains the pass phrase. The direct (libmosquitto) path uses the same files and cipher list.
[[nodiscard]] core::Result<void> checkTlsConfig(const TlsClientConfig& tls);

struct TunnelOptions {
  std::string host;  ///< hub or gateway: TCP target (through the proxy), SNI, certificate name
  int port = 443;
  TlsClientConfig tls;
  bool websockets = false;  ///< HTTP Upgrade + RFC 6455 framing inside TLS (protocol doc 1.1)
  std::string websocketPath = "/$iothub/websocket";
  std::string websocketSubprotocol = "mqtt";
  std::string userAgent;      ///< User-Agent of the Upgrade request, if not empty
  core::ProxySettings proxy;  ///< Type None: straight TCP to host:port
  /// Between the starts of two TCP connection attempts to the first hop's addresses (RFC 8305
  /// section 5; see relay/README.md).
  std::chrono::milliseconds connectionAttemptDelay{250};
};

/// One tunnelled MQTT connection, for what libmosquitto 2.0.11 cannot do itself: try every
/// address of the hub's name (it connects to the first only), WebSockets, HTTP CONNECT and SOCKS4
/// proxies (protocol doc 1.6, pitfall 14). Every MQTT connection of the daemon uses one.
///
/// Design: libmosquitto connects in plain MQTT (no TLS) to a Unix socket of ours, localPath(),
/// in a fresh 0700 directory; only a connection from this very process is accepted (SO_PEERCRED),
/// so no other local program can ride on our TLS identity or proxy credentials. Meanwhile the
/// tunnel resolves the first hop off the loop (getaddrinfo), races connects to its addresses
/// without blocking (RFC 8305, connectionAttemptDelay), speaks the proxy protocol, TLS (OpenSSL,
/// non-blocking) and optionally the WebSocket upgrade, then pumps bytes both ways (as binary
/// WebSocket frames when enabled), answering pings. Bytes libmosquitto sends before the tunnel is
/// up wait in a bounded buffer. Everything runs on the loop thread through IoWatches; nothing
/// blocks.
///
/// A failure is recorded (failure()) and then the local end is closed, so libmosquitto sees the
/// connection end and its owner reads failure() for the reason. The tunnel never calls out.
class Tunnel {
 public:
  /// Starts the tunnel: the local socket exists when this returns. Errors are Errc::Io (cannot
  /// create the local socket). TLS settings OpenSSL refuses (an unreadable certificate, a wrong
  /// pass phrase, an invalid cipher list; checkTlsConfig finds them at start-up) end the tunnel
  /// with failure() Errc::Config: the context is built off the loop, with the name lookup.
  [[nodiscard]] static core::Result<std::unique_ptr<Tunnel>> open(loop::EventLoop& loop,
                                                                  TunnelOptions options);
  virtual ~Tunnel() = default;

  /// Unix socket path for mosquitto_connect(handle, path, 0, …).
  [[nodiscard]] virtual const std::string& localPath() const = 0;
  /// Why the tunnel failed (Errc::ConnectionFailed, Errc::Unauthorized for proxy credentials,
  /// Errc::Protocol), or nullopt while it is fine or after an orderly end.
  [[nodiscard]] virtual const std::optional<core::Error>& failure() const = 0;
  /// True once the hub side is fully set up (TLS and, if enabled, the WebSocket upgrade) and
  /// not yet closed.
  [[nodiscard]] virtual bool established() const = 0;
  /// True once everything is closed (after a failure, or at the end of an orderly close that
  /// flushed libmosquitto's last bytes to the hub).
  [[nodiscard]] virtual bool closed() const = 0;
};

}  // namespace iothubd::relay
