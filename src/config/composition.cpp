// SPDX-License-Identifier: MIT
#include "iothubd/config/composition.hpp"

#include <algorithm>
#include <utility>

#include "iothubd/config/upload_directories.hpp"
#include "iothubd/relay/tunnel.hpp"

namespace iothubd::config {
namespace {

using core::Errc;
using core::fail;
using core::logf;
using core::LogLevel;

/// TLS trust and identity: one set for MQTT (direct or tunnelled) and the HTTPS calls.
core::TlsSettings tlsSettings(const Settings& s, const DeviceIdentity& id) {
  return {.caFile = s.serverVerificationCert,
          .ciphers = s.cipher,
          .certFile = id.x509CertFile,
          .keyFile = id.x509KeyFile,
          .keyPassphrase = id.x509PassPhrase};
}

session::AuthMethod authMethod(const DeviceIdentity& id) {
  switch (id.authentication) {
    case AuthKind::SasToken:
      return session::AuthMethod::SasToken;
    case AuthKind::X509:
      return session::AuthMethod::X509;
    case AuthKind::Dps:
      // The attestation DPS accepted authenticates the device at the assigned hub too.
      return id.dps && id.dps->attestation == DpsAttestation::X509
                 ? session::AuthMethod::X509
                 : session::AuthMethod::SymmetricKey;
    case AuthKind::ConnectionString:
    case AuthKind::SymmetricKey:
      break;
  }
  return session::AuthMethod::SymmetricKey;
}

session::SessionOptions sessionOptions(const Loaded& l, const Environment& env) {
  const Settings& s = l.settings;
  const DeviceIdentity& id = l.identity;
  session::SessionOptions o;
  o.hubHostname = id.hubHostname;
  o.deviceId = id.deviceId;
  o.moduleId = id.moduleId;
  o.gatewayHostname = id.gatewayHostname;
  o.port = s.port;
  o.auth = authMethod(id);
  o.sharedAccessKey = id.sharedAccessKey;
  o.sasToken = id.sasToken;
  o.tls = tlsSettings(s, id);
  o.websockets = s.websockets;
  o.proxy = l.proxy;
  o.userAgent = env.userAgent;
  o.productInfo = s.productInfo;
  o.keepAliveSeconds = s.keepAlive;
  o.sasTokenTtl = std::chrono::seconds(s.sastokenTtl);
  o.autoConnect = s.autoConnect;
  o.connectionRetry = s.connectionRetry;
  o.connectionRetryInitialDelay = std::chrono::milliseconds(s.connectionRetryInitialDelayMs);
  // connection_retry_interval, the Python SDK's fixed interval, now names the cap: the schedule
  // never waits longer than it (man iothubd.conf: deprecated for connection_retry_max_delay).
  const int maxDelayMs = s.connectionRetryMaxDelayMs > 0 ? s.connectionRetryMaxDelayMs
                         : s.connectionRetryInterval > 0 ? s.connectionRetryInterval * 1000
                                                         : 60 * 1000;
  o.connectionRetryMaxDelay = std::chrono::milliseconds(maxDelayMs);
  o.operationTimeout = std::chrono::seconds(s.operationTimeout);
  o.clockSyncTimeout = std::chrono::seconds(s.clockSyncTimeout);
  o.ensureDesiredProperties = s.ensureDesiredProperties;
  o.maxQueuedMessages = s.maxQueuedMessages;
  o.maxQueuedBytes = s.maxQueuedBytes;
  return o;
}

/// Collects the names of the fields that differ.
class Diff {
 public:
  template <class T>
  Diff& field(const char* name, const T& a, const T& b) {
    if (!(a == b)) {
      names_.emplace_back(name);
    }
    return *this;
  }
  /// The names, or `fallback` when the values differ in a field not listed (a field added later
  /// is never missed, only named vaguely).
  [[nodiscard]] std::vector<std::string> names(bool differ,
                                               const char* fallback = "other settings") {
    if (differ && names_.empty()) {
      names_.emplace_back(fallback);
    }
    return std::move(names_);
  }

 private:
  std::vector<std::string> names_;
};

void tlsDiff(Diff& d, const core::TlsSettings& a, const core::TlsSettings& b) {
  d.field("server_verification_cert", a.caFile, b.caFile)
      .field("cipher", a.ciphers, b.ciphers)
      .field("x509 certificate", a.certFile, b.certFile)
      .field("x509 key", a.keyFile, b.keyFile)
      .field("x509 pass phrase", a.keyPassphrase, b.keyPassphrase);
}

std::vector<std::string> sessionChanges(const session::SessionOptions& a,
                                        const session::SessionOptions& b) {
  Diff d;
  d.field("authentication", a.auth, b.auth)
      .field("hostname", a.hubHostname, b.hubHostname)
      .field("device_id", a.deviceId, b.deviceId)
      .field("module_id", a.moduleId, b.moduleId)
      .field("gateway_hostname", a.gatewayHostname, b.gatewayHostname)
      .field("port", a.port, b.port)
      .field("device key", a.sharedAccessKey, b.sharedAccessKey)
      .field("SAS token", a.sasToken, b.sasToken);
  tlsDiff(d, a.tls, b.tls);
  d.field("websockets", a.websockets, b.websockets)
      .field("proxy", a.proxy, b.proxy)
      .field("product_info", a.productInfo, b.productInfo)
      .field("keep_alive", a.keepAliveSeconds, b.keepAliveSeconds)
      .field("sastoken_ttl", a.sasTokenTtl, b.sasTokenTtl)
      .field("auto_connect", a.autoConnect, b.autoConnect)
      .field("connection_retry", a.connectionRetry, b.connectionRetry)
      .field("connection_retry_initial_delay", a.connectionRetryInitialDelay,
             b.connectionRetryInitialDelay)
      .field("connection_retry_max_delay", a.connectionRetryMaxDelay, b.connectionRetryMaxDelay)
      .field("operation_timeout", a.operationTimeout, b.operationTimeout)
      .field("clock_sync_timeout", a.clockSyncTimeout, b.clockSyncTimeout)
      .field("ensure_desired_properties", a.ensureDesiredProperties, b.ensureDesiredProperties)
      .field("max_queued_messages", a.maxQueuedMessages, b.maxQueuedMessages)
      .field("max_queued_bytes", a.maxQueuedBytes, b.maxQueuedBytes);
  return d.names(!(a == b));
}

std::vector<std::string> httpsChanges(const http::CurlOptions& a, const http::CurlOptions& b) {
  Diff d;
  tlsDiff(d, a.tls, b.tls);
  d.field("proxy", a.proxy, b.proxy);
  return d.names(!(a == b));
}

std::vector<std::string> uploadChanges(const std::optional<UploadOptions>& a,
                                       const std::optional<UploadOptions>& b) {
  if (a.has_value() != b.has_value()) {
    return {b ? "a device identity (file upload available)" : "a module identity (no file upload)"};
  }
  if (!a) {
    return {};
  }
  Diff d;
  d.field("hub host or https_port", a->endpoint.host, b->endpoint.host)
      .field("device_id", a->endpoint.deviceId, b->endpoint.deviceId)
      .field("block_size", a->uploader.blockSize, b->uploader.blockSize)
      .field("max_concurrent_uploads", a->uploader.maxConcurrentUploads,
             b->uploader.maxConcurrentUploads)
      .field("upload_timeout", a->uploader.uploadTimeout, b->uploader.uploadTimeout)
      .field("operation_timeout", a->uploader.requestTimeout, b->uploader.requestTimeout);
  return d.names(!(*a == *b));
}

std::vector<std::string> outboxChanges(const outbox::OutboxOptions& a,
                                       const outbox::OutboxOptions& b) {
  Diff d;
  d.field("outbox_path", a.path, b.path)
      .field("outbox_max_messages", a.maxMessages, b.maxMessages)
      .field("outbox_max_bytes", a.maxBytes, b.maxBytes)
      .field("outbox_full_policy", a.fullPolicy, b.fullPolicy)
      .field("outbox_default_ttl", a.defaultTtl, b.defaultTtl)
      .field("max_inflight", a.maxInflight, b.maxInflight);
  return d.names(!(a == b));
}

std::vector<std::string> busChanges(const BusOptions& a, const BusOptions& b) {
  Diff d;
  d.field("max_pending_calls_per_app", a.limits.maxPendingCallsPerApp,
          b.limits.maxPendingCallsPerApp)
      .field("max_method_claims_per_app", a.limits.maxMethodClaimsPerApp,
             b.limits.maxMethodClaimsPerApp)
      .field("max_pending_method_requests", a.limits.maxPendingMethodRequests,
             b.limits.maxPendingMethodRequests)
      .field("method_response_timeout", a.methodResponseTimeout, b.methodResponseTimeout)
      .field("keep_connected", a.keepConnected, b.keepConnected)
      .field("upload_from_path_directories", a.uploadFromPathDirectories,
             b.uploadFromPathDirectories);
  return d.names(!(a == b));
}

const char* logLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::Error:
      return "error";
    case LogLevel::Warning:
      return "warning";
    case LogLevel::Notice:
      return "notice";
    case LogLevel::Info:
      return "info";
    case LogLevel::Debug:
      return "debug";
  }
  return "info";
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) {
    out += (out.empty() ? "" : ", ") + n;
  }
  return out;
}

bool identityDiffers(const session::SessionOptions& a, const session::SessionOptions& b) {
  return a.hubHostname != b.hubHostname || a.deviceId != b.deviceId || a.moduleId != b.moduleId ||
         a.gatewayHostname != b.gatewayHostname || a.auth != b.auth;
}

}  // namespace

core::Result<Loaded> load(const std::string& configPath, const Environment& env,
                          std::uint64_t nowUnix) {
  auto sources = readConfigFiles(configPath);
  if (!sources) {
    return fail(Errc::Config, "configuration: " + sources.error().message);
  }
  auto settings = parseSettings(*sources);
  if (!settings) {
    return fail(Errc::Config, "configuration: " + settings.error().message);
  }
  if (auto r = checkUploadDirectories(*settings,
                                      {configPath, env.credentialsDirectory, env.stateDirectory});
      !r) {
    return fail(Errc::Config, "configuration: " + r.error().message);
  }
  auto identity = loadIdentity(*settings, env.credentialsDirectory, nowUnix);
  if (!identity) {
    return fail(Errc::Config, "credentials: " + identity.error().message);
  }
  auto proxy = loadProxy(*settings, env.credentialsDirectory);
  if (!proxy) {
    return fail(Errc::Config, "credentials: " + proxy.error().message);
  }
  if (auto r = relay::checkTlsConfig(tlsSettings(*settings, *identity)); !r) {
    return fail(Errc::Config, "configuration: " + r.error().message);
  }
  return Loaded{std::move(*settings), std::move(*identity), std::move(*proxy)};
}

Composition compose(const Loaded& loaded, const Environment& env) {
  const Settings& s = loaded.settings;
  Composition c;
  if (!core::parseLogLevel(s.logLevel, c.logLevel)) {
    c.logLevel = LogLevel::Info;
  }
  c.session = sessionOptions(loaded, env);

  // File upload (protocol doc 8): HTTPS to the hub itself, never the gateway; the same trust and
  // proxy as MQTT (libcurl keeps the system CA path besides server_verification_cert).
  c.https.tls = c.session.tls;
  c.https.proxy = c.session.proxy;
  c.https.userAgent = env.userAgent;
  if (c.session.moduleId.empty()) {
    UploadOptions u;
    u.endpoint.host = c.session.hubHostname;
    if (s.fileUploadPort != 443) {
      u.endpoint.host += ":" + std::to_string(s.fileUploadPort);
    }
    u.endpoint.deviceId = c.session.deviceId;
    u.uploader.blockSize = s.blockSize;
    u.uploader.maxConcurrentUploads = static_cast<std::size_t>(s.maxConcurrentUploads);
    u.uploader.uploadTimeout = std::chrono::seconds(s.uploadTimeout);
    u.uploader.requestTimeout = std::chrono::seconds(s.operationTimeout);
    c.upload = std::move(u);
  }

  c.outbox.path = s.outboxPath.empty() ? env.stateDirectory + "/outbox.db" : s.outboxPath;
  c.outbox.maxMessages = static_cast<std::size_t>(s.outboxMaxMessages);
  c.outbox.maxBytes = s.outboxMaxBytes;
  c.outbox.fullPolicy = s.outboxFullPolicy == "drop-oldest" ? outbox::FullPolicy::DropOldest
                                                            : outbox::FullPolicy::Reject;
  c.outbox.defaultTtl = std::chrono::seconds(s.outboxDefaultTtl);
  c.outbox.maxInflight = static_cast<std::size_t>(s.maxInflight);

  c.bus.limits = {.maxPendingCallsPerApp = s.maxPendingCallsPerApp,
                  .maxMethodClaimsPerApp = s.maxMethodClaimsPerApp,
                  .maxPendingMethodRequests = s.maxPendingMethodRequests};
  c.bus.methodResponseTimeout = std::chrono::seconds(s.methodResponseTimeout);
  c.bus.keepConnected = s.keepConnected;
  c.bus.uploadFromPathDirectories = s.uploadFromPathDirectories;

  c.stateDirectory = env.stateDirectory;
  if (const auto& dps = loaded.identity.dps) {
    // The DPS connection goes the way the hub connection goes: same trust (and X.509 identity),
    // WebSockets, proxy and keep-alive.
    provisioning::ProvisioningOptions p;
    p.globalEndpoint = dps->globalEndpoint;
    p.port = dps->port;
    p.idScope = dps->idScope;
    p.registrationId = dps->registrationId;
    p.attestation = dps->attestation == DpsAttestation::X509
                        ? provisioning::Attestation::X509
                        : provisioning::Attestation::SymmetricKey;
    p.deviceKey = loaded.identity.sharedAccessKey;
    p.tls = c.session.tls;
    p.websockets = c.session.websockets;
    p.proxy = c.session.proxy;
    p.userAgent = env.userAgent;
    p.payloadJson = dps->payloadJson;
    p.modelId = dps->modelId;
    p.keepAliveSeconds = s.keepAlive;
    p.sasTokenTtl = std::chrono::seconds(s.sastokenTtl);
    p.timeout = dps->registrationTimeout;
    c.provisioning = std::move(p);
  }
  return c;
}

void assignHub(Composition& composition, const std::string& hub, const std::string& deviceId) {
  if (auto& u = composition.upload) {
    // endpoint.host is the hub followed by ":https_port" when that is not 443.
    u->endpoint.host = hub + u->endpoint.host.substr(std::min(
                                 composition.session.hubHostname.size(), u->endpoint.host.size()));
    u->endpoint.deviceId = deviceId;
  }
  composition.session.hubHostname = hub;
  composition.session.deviceId = deviceId;
}

const char* componentName(Component component) noexcept {
  switch (component) {
    case Component::LogLevel:
      return "log level";
    case Component::Session:
      return "hub connection";
    case Component::Https:
      return "HTTPS client";
    case Component::Upload:
      return "file upload";
    case Component::Outbox:
      return "outbox";
    case Component::Bus:
      return "bus API";
  }
  return "?";
}

std::vector<Decision> plan(const Composition& running, const Composition& next) {
  std::vector<Decision> out;
  auto decide = [&out](Component c, std::vector<std::string> changed, Treatment ifChanged) {
    out.push_back({c, changed.empty() ? Treatment::Unchanged : ifChanged, std::move(changed)});
  };
  decide(Component::LogLevel,
         running.logLevel == next.logLevel ? std::vector<std::string>{}
                                           : std::vector<std::string>{"log_level"},
         Treatment::InPlace);
  decide(Component::Session, sessionChanges(running.session, next.session),
         session::linkDependsOnChange(running.session, next.session) ? Treatment::Reconnect
                                                                     : Treatment::InPlace);
  auto https = httpsChanges(running.https, next.https);
  const bool httpsRebuilt = !https.empty();
  decide(Component::Https, std::move(https), Treatment::Rebuild);
  // The uploader holds the HTTPS client and makes tokens for one identity.
  auto upload = uploadChanges(running.upload, next.upload);
  if (httpsRebuilt && next.upload) {
    upload.emplace_back("HTTPS client rebuilt");
  }
  decide(Component::Upload, std::move(upload), Treatment::Rebuild);
  decide(Component::Outbox, outboxChanges(running.outbox, next.outbox), Treatment::Rebuild);
  decide(Component::Bus, busChanges(running.bus, next.bus), Treatment::InPlace);
  return out;
}

core::Result<Applied> apply(std::optional<Composition>& running, const Composition& next,
                            Components& components) {
  Applied applied;
  if (!running) {
    components.setLogLevel(next.logLevel);
    components.configureSession(next.session);
    if (auto r = components.buildHttps(next.https); !r) {
      return fail(r.error());
    }
    components.buildUpload(next.upload);
    running = next;
    if (!components.buildOutbox(next.outbox)) {
      // The daemon runs without a durable outbox; recorded as never opened, so that the next
      // reload tries again even with the same settings (the operator may have fixed the cause).
      running->outbox.path.clear();
    }
    components.configureBus(next.bus);
    return applied;
  }
  bool httpsRefused = false;
  for (Decision& d : plan(*running, next)) {
    const char* what = componentName(d.component);
    if (d.treatment == Treatment::Unchanged) {
      logf(LogLevel::Debug, "reload: ", what, ": unchanged");
      continue;
    }
    core::Result<void> done;
    switch (d.component) {
      case Component::LogLevel:
        // Said before the change, so that a level that hides notices still shows this line.
        logf(LogLevel::Notice, "reload: log level: ", logLevelName(next.logLevel));
        components.setLogLevel(next.logLevel);
        running->logLevel = next.logLevel;
        continue;
      case Component::Session:
        applied.reconnects = d.treatment == Treatment::Reconnect;
        applied.identityChanged = identityDiffers(running->session, next.session);
        components.configureSession(next.session);
        running->session = next.session;
        break;
      case Component::Https:
        done = components.buildHttps(next.https);
        if (done) {
          running->https = next.https;
        }
        httpsRefused = !done;
        break;
      case Component::Upload:
        if (httpsRefused) {
          std::erase(d.changed, "HTTPS client rebuilt");
          if (d.changed.empty()) {
            continue;
          }
        }
        components.buildUpload(next.upload);
        running->upload = next.upload;
        break;
      case Component::Outbox:
        done = components.buildOutbox(next.outbox);
        if (done) {
          running->outbox = next.outbox;
        }
        break;
      case Component::Bus:
        components.configureBus(next.bus);
        running->bus = next.bus;
        break;
    }
    const std::string why = joined(d.changed);
    if (!done) {
      std::string line = std::string("reload: ") + what + ": " + done.error().message +
                         "; keeping the running one (" + why + " not applied)";
      logf(LogLevel::Warning, line);
      applied.refused.push_back(std::move(line));
      continue;
    }
    const char* how = d.treatment == Treatment::Reconnect ? "reconnecting for "
                      : d.treatment == Treatment::Rebuild ? "rebuilt for "
                                                          : "applied in place: ";
    logf(LogLevel::Notice, "reload: ", what, ": ", how, why);
  }
  return applied;
}

}  // namespace iothubd::config
