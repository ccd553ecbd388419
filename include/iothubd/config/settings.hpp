// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "iothubd/core/result.hpp"

namespace iothubd::config {

/// Which of the seed's factories the device is created with.
enum class AuthKind {
  ConnectionString,  ///< create_from_connection_string: credential "connection-string"
  SymmetricKey,      ///< create_from_symmetric_key: credential "shared-access-key"
  SasToken,          ///< create_from_sastoken: credential "sas-token"
  X509,              ///< create_from_x509_certificate: certificate + key files
  Dps,  ///< zero-touch: the Device Provisioning Service assigns hub and device id ([provisioning])
};
[[nodiscard]] const char* authKindName(AuthKind kind) noexcept;

/// `proxy_options` of the seed (ProxyOptions) as written in [proxy]; credentials.hpp's
/// loadProxy() turns it into core::ProxySettings with the password read.
struct ProxySettings {
  std::string type;  ///< "", "HTTP", "SOCKS4", "SOCKS5"
  std::string address;
  int port = 0;
  std::string username;
  std::string passwordFile;
};

/// How the device proves its identity to DPS ([provisioning] attestation).
enum class DpsAttestation {
  SymmetricKey,  ///< credential "dps-key" (individual enrollment) or "dps-group-key" (group)
  X509,          ///< the X.509 certificate and key of [credentials] (as authentication = x509)
};
[[nodiscard]] const char* dpsAttestationName(DpsAttestation attestation) noexcept;

/// [provisioning]: registration with the Device Provisioning Service (authentication = dps), with
/// the Python SDK's ProvisioningDeviceClient names where it has one.
struct ProvisioningSettings {
  std::string globalEndpoint = "global.azure-devices-provisioning.net";  ///< provisioning_host
  int port = 8883;  ///< 443 with websockets unless set; tests use the emulator's
  std::string idScope;
  std::string registrationId;
  DpsAttestation attestation = DpsAttestation::SymmetricKey;
  std::string payloadFile;        ///< JSON object sent with the registration (custom allocation)
  int registrationTimeout = 300;  ///< seconds one registration may take, retries included
};

/// Everything in iothubd.conf and its drop-ins, validated. Holds no secret: secrets are loaded
/// separately (credentials.hpp) from systemd credentials or from the files named here.
struct Settings {
  // [hub]
  AuthKind authentication = AuthKind::ConnectionString;
  std::string hostname;
  std::string deviceId;
  std::string moduleId;
  std::string gatewayHostname;
  int port = 8883;  ///< MQTT over TLS (443 with websockets unless set); tests use the emulator's

  // [credentials]: explicit files; empty = $CREDENTIALS_DIRECTORY/<credential name>
  std::string connectionStringFile;
  std::string sharedAccessKeyFile;
  std::string sasTokenFile;
  std::string x509CertFile;
  std::string x509KeyFile;
  std::string x509PassPhraseFile;
  std::string dpsKeyFile;       ///< credential "dps-key": individual enrollment key
  std::string dpsGroupKeyFile;  ///< credential "dps-group-key": group enrollment key

  // [connection]: the seed's keyword arguments, same names and defaults
  std::string serverVerificationCert;  ///< PEM file to trust instead of the system store
  bool websockets = false;
  std::string cipher;
  std::string productInfo;
  int keepAlive = 60;
  int sastokenTtl = 3600;
  bool autoConnect = true;
  bool connectionRetry = true;
  /// The reconnect schedule's bounds in milliseconds (session/retry_policy.hpp); the file gives
  /// seconds with up to three decimals.
  int connectionRetryInitialDelayMs = 1000;
  int connectionRetryMaxDelayMs = 0;  ///< 0: not set, connection_retry_interval or 60 s
  int connectionRetryInterval = 0;    ///< deprecated name of connection_retry_max_delay; 0: not set
  bool ensureDesiredProperties = true;
  /// Seconds to wait for a time service to synchronise the clock before connecting; 0: never.
  int clockSyncTimeout = 90;
  int operationTimeout = 60;  ///< seconds any hub operation (connect, publish, twin) may take
  /// Keep the link up while no app holds it (Connect); false: it closes when the last hold goes
  /// (Disconnect, or the holder leaves the bus), as a single-app gateway may want.
  bool keepConnected = true;

  ProxySettings proxy;

  ProvisioningSettings provisioning;

  // [methods]
  /// The hub's default responseTimeoutInSeconds: a later answer finds the service gone.
  int methodResponseTimeout = 30;

  // [file_upload]
  int fileUploadPort = 443;                   ///< HTTPS port of the hub's file-upload endpoints
  std::uint64_t blockSize = 4 * 1024 * 1024;  ///< Put Block size; smaller content is one Put Blob
  int maxConcurrentUploads = 4;               ///< the hub allows 10 per device
  int uploadTimeout = 1800;                   ///< seconds one whole upload may take
  /// Directories UploadFileFromPath may read from (absolute; checked by
  /// checkUploadDirectories()); empty: UploadFileFromPath is refused (AccessDenied).
  std::vector<std::string> uploadFromPathDirectories;

  // [outbox]: the durable telemetry queue (QueueMessage; SendMessage goes through it too)
  std::string outboxPath;  ///< empty: $STATE_DIRECTORY/outbox.db, else /var/lib/iothubd/outbox.db
  std::uint64_t outboxMaxMessages = 100000;
  std::uint64_t outboxMaxBytes = 64ull * 1024 * 1024;
  std::string outboxFullPolicy = "reject";  ///< reject | drop-oldest
  int outboxDefaultTtl = 0;                 ///< seconds; 0 = kept until delivered
  int maxInflight = 64;                     ///< telemetry messages awaiting PUBACK at once

  // [limits]: what bus peers can make the daemon hold (architecture doc 6.4)
  std::uint64_t maxPendingCallsPerApp = 256;     ///< calls one bus connection has unanswered
  std::uint64_t maxMethodClaimsPerApp = 64;      ///< RegisterMethodHandler names per connection
  std::uint64_t maxPendingMethodRequests = 256;  ///< direct-method requests awaiting an answer
  std::uint64_t maxQueuedMessages = 10000;       ///< publishes waiting for the connection
  std::uint64_t maxQueuedBytes = 16ull * 1024 * 1024;  ///< their topics and payloads

  // [daemon]
  std::string logLevel = "info";
};

/// One configuration file's text and the name used in error messages.
struct ConfigSource {
  std::string path;
  std::string text;
};

/// Parses the main file followed by its drop-ins (later values win). Pure: no I/O. Errors are
/// Errc::Config with "PATH:LINE: [section] key: problem".
[[nodiscard]] core::Result<Settings> parseSettings(const std::vector<ConfigSource>& sources);

/// Reads `path` (must exist) and then `path + ".d/*.conf"` in lexical order.
[[nodiscard]] core::Result<std::vector<ConfigSource>> readConfigFiles(const std::string& path);

}  // namespace iothubd::config
