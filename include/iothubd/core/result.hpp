// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <utility>

#include <tl/expected.hpp>

namespace iothubd::core {

/// What went wrong, independent of the layer that noticed it. Converted once at each boundary:
/// errno, MOSQ_ERR_*, CURLcode, OpenSSL and CONNACK codes become an Errc here; the D-Bus layer
/// alone turns an Errc into an `org.iothubd.Error.*` name.
enum class Errc {
  InvalidArgument,    ///< the caller's input is malformed (bad JSON, unknown key, bad shape)
  Config,             ///< configuration or credential problem found at start or reload
  NotConnected,       ///< no connection and auto_connect is off
  ConnectionFailed,   ///< TCP/TLS/MQTT connect did not succeed
  ConnectionDropped,  ///< an established connection went away while an operation waited
  Unauthorized,       ///< the hub refused the credentials (CONNACK 4/5, HTTP 401)
  Timeout,            ///< an operation did not complete within its bound
  Cancelled,          ///< an operation was abandoned (Disconnect, shutdown)
  MessageTooLarge,    ///< over the hub's 256 KB telemetry limit
  QueueFull,          ///< a bounded queue is full
  LimitExceeded,      ///< a per-app bound (calls outstanding, method claims, JSON depth) is reached
  Protocol,           ///< the peer sent something that violates the protocol
  Service,            ///< the hub answered with a status >= 300
  NotSupported,       ///< valid request, but not available in this configuration
  AlreadyClaimed,     ///< a resource is held by another client
  AccessDenied,       ///< the caller may not do this (another peer's request, unreadable file)
  NotFound,           ///< a named file or object does not exist
  Io,                 ///< local I/O failure (sysErrno holds errno)
  Internal,           ///< a bug or an impossible state
};

/// Stable lower-case name of an Errc, for logs and tests.
[[nodiscard]] const char* errcName(Errc code) noexcept;

struct Error {
  Errc code = Errc::Internal;
  std::string message;  ///< human-readable, never contains a secret
  int sysErrno = 0;     ///< errno for Errc::Io, hub/HTTP status for Errc::Service, else 0
};

template <class T>
using Result = tl::expected<T, Error>;

/// Shorthand for returning an error: `return fail(Errc::Config, "...")`.
[[nodiscard]] inline tl::unexpected<Error> fail(Errc code, std::string message, int sysErrno = 0) {
  return tl::unexpected<Error>(Error{code, std::move(message), sysErrno});
}
[[nodiscard]] inline tl::unexpected<Error> fail(Error error) {
  return tl::unexpected<Error>(std::move(error));
}

}  // namespace iothubd::core
