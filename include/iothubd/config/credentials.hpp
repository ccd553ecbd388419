// SPDX-License-Identifier: MIT
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "iothubd/config/settings.hpp"
#include "iothubd/core/proxy.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/secret.hpp"

namespace iothubd::config {

/// authentication = dps: what the registration with DPS needs. The device key (symmetric-key)
/// is DeviceIdentity::sharedAccessKey and the certificate (x509) its x509* fields: the same
/// credentials then authenticate the device at the hub DPS assigns.
struct DpsRegistration {
  std::string globalEndpoint;
  int port = 8883;
  std::string idScope;
  std::string registrationId;
  DpsAttestation attestation = DpsAttestation::SymmetricKey;
  /// symmetric-key: the key came from "dps-group-key" and sharedAccessKey was derived from it
  /// for this registration id (proto::deriveGroupDeviceKey); else it is "dps-key" itself.
  bool groupEnrollment = false;
  std::string payloadJson;  ///< contents of payload_file (a JSON object), or empty
  std::string modelId;      ///< [connection] product_info when it is a "dtmi:" model id
  std::chrono::seconds registrationTimeout{300};
};

/// Who the device is and how it proves it, after combining settings and secrets.
struct DeviceIdentity {
  AuthKind authentication = AuthKind::ConnectionString;
  std::string hubHostname;  ///< IoT Hub host: MQTT user name and SAS `sr`
  std::string deviceId;
  std::string moduleId;
  std::string gatewayHostname;     ///< where TLS goes, if set (protocol doc 1.4)
  core::Secret<> sharedAccessKey;  ///< base64; renewable tokens are made from it
  core::Secret<> sasToken;         ///< user-supplied, non-renewable token
  std::string x509CertFile;        ///< PEM client certificate (chain) for authentication = x509
  std::string x509KeyFile;         ///< its private key (a secret file: mode 0600 or stricter)
  core::Secret<> x509PassPhrase;   ///< for an encrypted key; empty if the key is not encrypted
  /// Set for authentication = dps, whose hubHostname and deviceId stay empty until DPS assigns
  /// them (gatewayHostname, if set, still applies to the assigned hub).
  std::optional<DpsRegistration> dps;
};

/// Reads the secrets the settings call for, from the file named in [credentials] or else from
/// `credentialsDirectory` (systemd's $CREDENTIALS_DIRECTORY; empty if unset), and builds the
/// identity. A secret file that group or others may read is refused, naming the file and its
/// mode. For authentication = dps it also reads [provisioning] payload_file and derives a group
/// enrollment's device key. Errors are Errc::Config and never contain a secret.
[[nodiscard]] core::Result<DeviceIdentity> loadIdentity(const Settings& settings,
                                                        const std::string& credentialsDirectory,
                                                        std::uint64_t nowUnix);

/// Resolves [proxy]: the password comes from proxy_password_file, else from the credential
/// "proxy-password" when one exists; a proxy_username without any password is an error.
/// Type None when no proxy is configured. Errors are Errc::Config and never contain a secret.
[[nodiscard]] core::Result<core::ProxySettings> loadProxy(const Settings& settings,
                                                          const std::string& credentialsDirectory);

/// Reads one secret file: regular file, not readable by group/others, trailing newline removed.
[[nodiscard]] core::Result<core::Secret<>> readSecretFile(const std::string& path);

}  // namespace iothubd::config
