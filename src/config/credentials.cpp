// SPDX-License-Identifier: MIT
#include "iothubd/config/credentials.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "iothubd/proto/base64.hpp"
#include "iothubd/proto/connection_string.hpp"
#include "iothubd/proto/provisioning.hpp"
#include "iothubd/proto/sas_token.hpp"

namespace iothubd::config {
namespace {

using core::Errc;
using core::fail;

/// Largest secret we accept: a connection string or token is a few hundred bytes; a bigger file
/// is a mistake (a certificate bundle named by accident), not a secret.
constexpr size_t kMaxSecretBytes = size_t{64} * 1024;

std::string modeText(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

/// Where a credential comes from: the file named in [credentials], or systemd's credential
/// directory.
core::Result<std::string> credentialPath(const std::string& explicitFile, const char* key,
                                         const char* credentialName,
                                         const std::string& credentialsDirectory) {
  if (!explicitFile.empty()) {
    return explicitFile;
  }
  if (credentialsDirectory.empty()) {
    return fail(Errc::Config, std::string("no credential \"") + credentialName +
                                  "\": set [credentials] " + key +
                                  " or pass it with systemd LoadCredential=" + credentialName);
  }
  return credentialsDirectory + "/" + credentialName;
}

core::Result<core::Secret<>> readCredential(const std::string& explicitFile, const char* key,
                                            const char* credentialName,
                                            const std::string& credentialsDirectory) {
  auto path = credentialPath(explicitFile, key, credentialName, credentialsDirectory);
  if (!path) {
    return fail(path.error());
  }
  return readSecretFile(*path);
}

/// An optional credential: the explicit file (must exist) or, if present, the systemd credential.
/// An empty secret when neither is there.
core::Result<core::Secret<>> readOptionalCredential(const std::string& explicitFile,
                                                    const char* credentialName,
                                                    const std::string& credentialsDirectory) {
  if (!explicitFile.empty()) {
    return readSecretFile(explicitFile);
  }
  if (credentialsDirectory.empty()) {
    return core::Secret<>();
  }
  std::string path = credentialsDirectory + "/" + credentialName;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 && errno == ENOENT) {
    return core::Secret<>();
  }
  return readSecretFile(path);
}

/// Certificate and key of authentication = x509 (protocol doc 1.2: no password, the TLS client
/// certificate proves the identity). The certificate is public; the key gets the secret-file
/// rules, because OpenSSL reads it later by path and would not check its mode.
core::Result<void> loadX509(const Settings& s, const std::string& credentialsDirectory,
                            DeviceIdentity& id) {
  auto cert = credentialPath(s.x509CertFile, "x509_cert_file", "x509-cert", credentialsDirectory);
  if (!cert) {
    return fail(cert.error());
  }
  if (::access(cert->c_str(), R_OK) != 0) {
    int err = errno;
    return fail(Errc::Config, "cannot read X.509 certificate " + *cert + ": " + std::strerror(err),
                err);
  }
  auto key = credentialPath(s.x509KeyFile, "x509_key_file", "x509-key", credentialsDirectory);
  if (!key) {
    return fail(key.error());
  }
  // Checks mode and readability; the content stays with OpenSSL.
  if (auto keyText = readSecretFile(*key); !keyText) {
    return fail(keyText.error());
  }
  auto passPhrase =
      readOptionalCredential(s.x509PassPhraseFile, "x509-pass-phrase", credentialsDirectory);
  if (!passPhrase) {
    return fail(passPhrase.error());
  }
  id.x509CertFile = *cert;
  id.x509KeyFile = *key;
  id.x509PassPhrase = std::move(*passPhrase);
  return {};
}

/// The custom payload of a DPS registration: an operator's JSON file, not a secret (it goes to
/// DPS and a custom allocation function). Read whole, bounded like every input.
core::Result<std::string> readPayloadFile(const std::string& path) {
  const std::string key = "[provisioning] payload_file: ";
  auto cannotRead = [&](int err) -> core::Result<std::string> {
    return fail(Errc::Config, key + "cannot read " + path + ": " + std::strerror(err), err);
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    return cannotRead(errno);
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  std::string data;
  char buffer[4096];
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return cannotRead(errno);
    }
    if (n == 0) {
      return data;
    }
    data.append(buffer, static_cast<size_t>(n));
    if (data.size() > proto::kMaxDpsPayloadBytes) {
      return fail(Errc::Config, key + path + " is larger than " +
                                    std::to_string(proto::kMaxDpsPayloadBytes) + " bytes");
    }
  }
}

/// authentication = dps: the attestation's credential, the payload and the model id.
core::Result<void> loadDps(const Settings& s, const std::string& credentialsDirectory,
                           DeviceIdentity& id) {
  const ProvisioningSettings& p = s.provisioning;
  DpsRegistration dps;
  dps.globalEndpoint = p.globalEndpoint;
  dps.port = p.port;
  dps.idScope = p.idScope;
  dps.registrationId = p.registrationId;
  dps.attestation = p.attestation;
  dps.registrationTimeout = std::chrono::seconds(p.registrationTimeout);
  // [py] product_info starting with "dtmi:" is a Plug and Play model id; DPS gets it in the
  // registration payload ([py] samples/pnp, [c] pnp_dps_ll.c), the hub in the user name.
  if (s.productInfo.rfind("dtmi:", 0) == 0) {
    dps.modelId = s.productInfo;
  }
  if (!p.payloadFile.empty()) {
    auto payload = readPayloadFile(p.payloadFile);
    if (!payload) {
      return fail(payload.error());
    }
    dps.payloadJson = std::move(*payload);
  }
  if (auto body = proto::dpsRegisterPayload(dps.registrationId, dps.payloadJson, dps.modelId);
      !body) {
    return fail(Errc::Config,
                "[provisioning] payload_file: " + p.payloadFile + ": " + body.error().message);
  }

  if (p.attestation == DpsAttestation::X509) {
    if (auto r = loadX509(s, credentialsDirectory, id); !r) {
      return fail(r.error());
    }
    id.dps = std::move(dps);
    return {};
  }
  auto individual = readOptionalCredential(s.dpsKeyFile, "dps-key", credentialsDirectory);
  if (!individual) {
    return fail(individual.error());
  }
  auto group = readOptionalCredential(s.dpsGroupKeyFile, "dps-group-key", credentialsDirectory);
  if (!group) {
    return fail(group.error());
  }
  if (individual->empty() && group->empty()) {
    return fail(Errc::Config,
                "no DPS enrollment key: set [credentials] dps_key_file (individual enrollment) or "
                "dps_group_key_file (group enrollment), or pass it with systemd "
                "LoadCredential=dps-key or LoadCredential=dps-group-key");
  }
  if (!individual->empty() && !group->empty()) {
    return fail(Errc::Config,
                "both credentials \"dps-key\" (individual enrollment) and \"dps-group-key\" "
                "(group enrollment) are given; a device has one enrollment: keep its key only");
  }
  dps.groupEnrollment = !group->empty();
  const char* name = dps.groupEnrollment ? "DPS group enrollment key" : "DPS enrollment key";
  const core::Secret<>& key = dps.groupEnrollment ? *group : *individual;
  if (auto decoded = proto::base64Decode(key.reveal()); !decoded || decoded->empty()) {
    return fail(Errc::Config, std::string(name) + ": not valid base64");
  }
  if (dps.groupEnrollment) {
    auto derived = proto::deriveGroupDeviceKey(key, dps.registrationId);
    if (!derived) {
      return fail(Errc::Config, std::string(name) + ": " + derived.error().message);
    }
    id.sharedAccessKey = std::move(*derived);
  } else {
    id.sharedAccessKey = key;
  }
  id.dps = std::move(dps);
  return {};
}

}  // namespace

core::Result<core::ProxySettings> loadProxy(const Settings& s,
                                            const std::string& credentialsDirectory) {
  core::ProxySettings p;
  if (s.proxy.type.empty()) {
    return p;
  }
  p.type = s.proxy.type == "HTTP"     ? core::ProxySettings::Type::Http
           : s.proxy.type == "SOCKS4" ? core::ProxySettings::Type::Socks4
                                      : core::ProxySettings::Type::Socks5;
  p.host = s.proxy.address;
  p.port = s.proxy.port;
  p.username = s.proxy.username;
  if (p.type == core::ProxySettings::Type::Socks4) {
    return p;
  }
  auto password =
      readOptionalCredential(s.proxy.passwordFile, "proxy-password", credentialsDirectory);
  if (!password) {
    return fail(password.error());
  }
  if (!password->empty() && p.username.empty()) {
    return fail(Errc::Config, "[proxy] proxy_username: required when a proxy password is given");
  }
  if (password->empty() && !p.username.empty()) {
    return fail(Errc::Config,
                "[proxy] proxy_username: needs a password: set [proxy] proxy_password_file or "
                "pass it with systemd LoadCredential=proxy-password");
  }
  p.password = std::move(*password);
  return p;
}

core::Result<core::Secret<>> readSecretFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    int err = errno;
    return fail(Errc::Config, "cannot read secret file " + path + ": " + std::strerror(err), err);
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) < 0) {
    int err = errno;
    return fail(Errc::Config, "cannot stat secret file " + path + ": " + std::strerror(err), err);
  }
  if (!S_ISREG(st.st_mode)) {
    return fail(Errc::Config, "secret file " + path + " is not a regular file");
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    return fail(Errc::Config, "refusing secret file " + path + ": mode " + modeText(st.st_mode) +
                                  " lets group or others read it (chmod 0600 " + path + ")");
  }
  if (static_cast<size_t>(st.st_size) > kMaxSecretBytes) {
    return fail(Errc::Config, "secret file " + path + " is larger than 64 KiB");
  }
  std::string data(static_cast<size_t>(st.st_size), '\0');
  size_t got = 0;
  while (got < data.size()) {
    ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      int err = errno;
      return fail(Errc::Config, "cannot read secret file " + path + ": " + std::strerror(err), err);
    }
    if (n == 0) {
      break;
    }
    got += static_cast<size_t>(n);
  }
  data.resize(got);
  // Editors and `echo` add a trailing newline; it is never part of a key or token.
  while (!data.empty() && (data.back() == '\n' || data.back() == '\r')) {
    data.pop_back();
  }
  if (data.empty()) {
    return fail(Errc::Config, "secret file " + path + " is empty");
  }
  return core::Secret<>(std::move(data));
}

core::Result<DeviceIdentity> loadIdentity(const Settings& s,
                                          const std::string& credentialsDirectory,
                                          std::uint64_t nowUnix) {
  DeviceIdentity id;
  id.authentication = s.authentication;
  id.hubHostname = s.hostname;
  id.deviceId = s.deviceId;
  id.moduleId = s.moduleId;
  id.gatewayHostname = s.gatewayHostname;

  switch (s.authentication) {
    case AuthKind::ConnectionString: {
      auto text = readCredential(s.connectionStringFile, "connection_string_file",
                                 "connection-string", credentialsDirectory);
      if (!text) {
        return fail(text.error());
      }
      auto cs = proto::parseConnectionString(text->reveal());
      if (!cs) {
        return fail(Errc::Config, "connection string: " + cs.error().message);
      }
      id.hubHostname = cs->hostName;
      id.deviceId = cs->deviceId;
      id.moduleId = cs->moduleId;
      id.gatewayHostname = cs->gatewayHostName;
      if (cs->x509) {
        // Protocol doc 3: x509=true names no secret; certificate and key come from the same
        // places as with authentication = x509.
        id.authentication = AuthKind::X509;
        if (auto r = loadX509(s, credentialsDirectory, id); !r) {
          return fail(r.error());
        }
      } else if (!cs->sharedAccessSignature.empty()) {
        id.authentication = AuthKind::SasToken;
        id.sasToken = cs->sharedAccessSignature;
      } else {
        id.authentication = AuthKind::SymmetricKey;
        id.sharedAccessKey = cs->sharedAccessKey;
      }
      break;
    }
    case AuthKind::SymmetricKey: {
      auto key = readCredential(s.sharedAccessKeyFile, "shared_access_key_file",
                                "shared-access-key", credentialsDirectory);
      if (!key) {
        return fail(key.error());
      }
      if (!proto::base64Decode(key->reveal())) {
        return fail(Errc::Config, "shared access key: not valid base64");
      }
      id.sharedAccessKey = std::move(*key);
      break;
    }
    case AuthKind::SasToken: {
      auto token =
          readCredential(s.sasTokenFile, "sas_token_file", "sas-token", credentialsDirectory);
      if (!token) {
        return fail(token.error());
      }
      auto parsed = proto::parseSasToken(token->reveal());
      if (!parsed) {
        return fail(Errc::Config, "SAS token: " + parsed.error().message);
      }
      auto target = proto::sasTokenTarget(*parsed);
      if (!target) {
        return fail(Errc::Config, "SAS token: " + target.error().message);
      }
      if (id.hubHostname.empty()) {
        id.hubHostname = target->hubHost;
      }
      if (id.deviceId.empty()) {
        id.deviceId = target->deviceId;
        id.moduleId = target->moduleId;
      }
      id.sasToken = std::move(*token);
      break;
    }
    case AuthKind::X509:
      if (auto r = loadX509(s, credentialsDirectory, id); !r) {
        return fail(r.error());
      }
      break;
    case AuthKind::Dps:
      if (auto r = loadDps(s, credentialsDirectory, id); !r) {
        return fail(r.error());
      }
      break;
  }

  if (id.authentication == AuthKind::SasToken) {
    auto valid = proto::validateSasTokenFor(id.sasToken.reveal(), id.hubHostname, id.deviceId,
                                            id.moduleId, nowUnix);
    if (!valid) {
      return fail(Errc::Config, "SAS token: " + valid.error().message);
    }
  }
  return id;
}

}  // namespace iothubd::config
