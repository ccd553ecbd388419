// SPDX-License-Identifier: MIT
// What the session is configured with, and what the device presents to the hub with it: the
// CONNECT password, the HTTPS Authorization, and when a token is renewed (protocol doc 2).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/proxy.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/secret.hpp"
#include "iothubd/core/tls_settings.hpp"

namespace iothubd::session {

/// How the device proves its identity on CONNECT.
enum class AuthMethod {
  SymmetricKey,  ///< renewable SAS tokens made from the device key
  SasToken,      ///< a token the operator supplied; not renewable by us
  X509,          ///< TLS client certificate; CONNECT has a user name but no password (doc 1.2)
};

/// Everything the session needs to know; built by the daemon from the configuration.
struct SessionOptions {
  std::string hubHostname;  ///< user name and SAS `sr` (protocol doc 1.2, 2)
  std::string deviceId;
  std::string moduleId;
  std::string gatewayHostname;  ///< TLS peer if set (doc 1.4); else hubHostname
  int port = 8883;
  AuthMethod auth = AuthMethod::SymmetricKey;
  core::Secret<> sharedAccessKey;
  core::Secret<> sasToken;
  core::TlsSettings tls;
  bool websockets = false;    ///< MQTT over WebSockets (protocol doc 1.1)
  core::ProxySettings proxy;  ///< protocol doc 1.6
  std::string userAgent = "iothubd";
  std::string productInfo;
  int keepAliveSeconds = 60;
  std::chrono::seconds sasTokenTtl{3600};
  bool autoConnect = true;
  bool connectionRetry = true;
  /// The retry policy's bounds (retry_policy.hpp): the first delay and the cap.
  std::chrono::milliseconds connectionRetryInitialDelay{1000};
  std::chrono::milliseconds connectionRetryMaxDelay{60000};
  std::chrono::seconds operationTimeout{60};
  /// How long an attempt waits for a running time service to synchronise the clock (a token
  /// made with a wrong clock is refused, protocol doc 2); zero: it never waits.
  std::chrono::seconds clockSyncTimeout{90};
  /// Telemetry accepted while (re)connecting, waiting to be published; over either → QueueFull.
  std::size_t maxQueuedMessages = 10000;
  std::size_t maxQueuedBytes = 16 * 1024 * 1024;  ///< topics and payloads of those messages
  /// After every (re)connect fetch the twin and report the desired section if it moved
  /// (seed: ensure_desired_properties).
  bool ensureDesiredProperties = true;
  /// Twin requests waiting for an answer; over it → QueueFull.
  std::size_t maxTwinRequests = 64;

  bool operator==(const SessionOptions&) const = default;
};

/// Whether the link depends on what differs between `a` and `b` (identity, secrets, TLS, proxy,
/// transport, CONNECT fields, token lifetime): then new options take a reconnect. Every field not
/// known to apply in place counts, so a field added later reconnects until said otherwise.
[[nodiscard]] bool linkDependsOnChange(const SessionOptions& a, const SessionOptions& b);

/// The Authorization value for the hub's HTTPS calls (file upload, protocol doc 8) made for the
/// identity in `options`: a fresh token from the key (wall clock for `se`), the operator's token,
/// or an empty secret for X.509 (the TLS client certificate is the credential). Never cached.
[[nodiscard]] core::Result<core::Secret<>> httpAuthorization(const SessionOptions& options,
                                                             const core::Clock& clock);

/// The CONNECT password now: a fresh token made from the key (protocol doc 12, pitfalls 3 and 4:
/// never a cached one; wall clock for `se`), the operator's token as given, or none for X.509.
struct Password {
  core::Secret<> secret;
  std::uint64_t expiry = 0;  ///< the token's `se`; 0 for X.509 (nothing to renew)
};
/// Errors: Errc::Unauthorized (a token that does not parse, a key that is not base64).
[[nodiscard]] core::Result<Password> connectPassword(const SessionOptions& options,
                                                     const core::Clock& clock);

/// How long after `now` to act on a token that expires at `expiry`: renew a key-made one a fifth
/// of its lifetime early, at most 120 s (the Python SDK), and ask for an operator's token halfway
/// or 120 s early. nullopt once it has expired.
[[nodiscard]] std::optional<std::chrono::seconds> renewalDelay(AuthMethod auth,
                                                               std::uint64_t expiry,
                                                               std::uint64_t now);

}  // namespace iothubd::session
