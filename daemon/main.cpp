// SPDX-License-Identifier: MIT
// iothubd: composition root. Parses the command line, loads configuration and secrets, wires the
// modules together on one sd-event loop and maps failures to exit codes. No logic of its own.
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <sysexits.h>
#include <ctime>

#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include <sdbus-c++/sdbus-c++.h>
#include <systemd/sd-daemon.h>

#include "iothubd/blob/blob_uploader.hpp"
#include "iothubd/config/credentials.hpp"
#include "iothubd/config/settings.hpp"
#include "iothubd/config/upload_directories.hpp"
#include "iothubd/core/log.hpp"
#include "iothubd/dbusapi/device_object.hpp"
#include "iothubd/delivery/telemetry_pipeline.hpp"
#include "iothubd/http/async_reader.hpp"
#include "iothubd/http/lazy_http_client.hpp"
#include "iothubd/loop/event_loop.hpp"
#include "iothubd/mqtt/mosquitto_transport.hpp"
#include "iothubd/outbox/outbox.hpp"
#include "iothubd/relay/tunnel.hpp"
#include "iothubd/session/hub_session.hpp"

namespace {

using iothubd::core::logf;
using iothubd::core::LogLevel;
using iothubd::session::ConnectionState;
using iothubd::session::HubSession;

constexpr const char* kDefaultConfig = "/etc/iothubd/iothubd.conf";
/// How long a SIGTERM waits for the DISCONNECT to go out before the loop ends regardless.
constexpr std::chrono::seconds kShutdownGrace{3};

struct Options {
  std::string configPath = kDefaultConfig;
  bool checkOnly = false;
};

void usage(std::ostream& os) {
  os << "Usage: iothubd [--config PATH] [--check-config] [--version]\n"
        "\n"
        "Owns this gateway's Azure IoT Hub device connection and offers it on the D-Bus system\n"
        "bus as org.iothubd (interface org.iothubd.Device1, object /org/iothubd/Device).\n"
        "\n"
        "  --config PATH     configuration file (default "
     << kDefaultConfig
     << ");\n"
        "                    drop-ins are read from PATH.d/*.conf\n"
        "  --check-config    load configuration and credentials, report problems, exit\n"
        "  --version         print the version and exit\n"
        "\n"
        "SIGHUP reloads the configuration and credentials; if they do not load, the running\n"
        "configuration stays in force.\n"
        "\n"
        "Exit status: 0 clean stop, 64 usage error, 69 D-Bus unavailable or name not granted,\n"
        "78 bad configuration or credentials, 1 other failure.\n";
}

/// User agent for DeviceClientType (protocol doc 1.2): name/version and platform, like the SDKs.
std::string userAgent() {
  std::string ua = std::string("iothubd/") + IOTHUBD_VERSION;
  utsname u{};
  if (uname(&u) == 0) {
    ua += std::string(" (") + u.sysname + " " + u.release + "; " + u.machine + ")";
  }
  return ua;
}

/// TLS trust and identity: one set for MQTT (direct or tunnelled) and the HTTPS calls.
iothubd::core::TlsSettings tlsSettings(const iothubd::config::Settings& s,
                                       const iothubd::config::DeviceIdentity& id) {
  return {.caFile = s.serverVerificationCert,
          .ciphers = s.cipher,
          .certFile = id.x509CertFile,
          .keyFile = id.x509KeyFile,
          .keyPassphrase = id.x509PassPhrase};
}

iothubd::session::SessionOptions sessionOptions(const iothubd::config::Settings& s,
                                                iothubd::config::DeviceIdentity id,
                                                iothubd::core::ProxySettings proxy) {
  using iothubd::config::AuthKind;
  iothubd::session::SessionOptions o;
  o.hubHostname = id.hubHostname;
  o.deviceId = id.deviceId;
  o.moduleId = id.moduleId;
  o.gatewayHostname = id.gatewayHostname;
  o.port = s.port;
  switch (id.authentication) {
    case AuthKind::SasToken:
      o.auth = iothubd::session::AuthMethod::SasToken;
      break;
    case AuthKind::X509:
      o.auth = iothubd::session::AuthMethod::X509;
      break;
    default:
      o.auth = iothubd::session::AuthMethod::SymmetricKey;
      break;
  }
  o.sharedAccessKey = std::move(id.sharedAccessKey);
  o.sasToken = std::move(id.sasToken);
  o.tls = tlsSettings(s, id);
  o.websockets = s.websockets;
  o.proxy = std::move(proxy);
  o.userAgent = userAgent();
  o.productInfo = s.productInfo;
  o.keepAliveSeconds = s.keepAlive;
  o.sasTokenTtl = std::chrono::seconds(s.sastokenTtl);
  o.autoConnect = s.autoConnect;
  o.connectionRetry = s.connectionRetry;
  o.connectionRetryInterval = std::chrono::seconds(s.connectionRetryInterval);
  o.operationTimeout = std::chrono::seconds(s.operationTimeout);
  o.ensureDesiredProperties = s.ensureDesiredProperties;
  o.maxQueuedMessages = s.maxQueuedMessages;
  o.maxQueuedBytes = s.maxQueuedBytes;
  return o;
}

iothubd::dbusapi::BusLimits busLimits(const iothubd::config::Settings& s) {
  return {.maxPendingCallsPerApp = s.maxPendingCallsPerApp,
          .maxMethodClaimsPerApp = s.maxMethodClaimsPerApp,
          .maxPendingMethodRequests = s.maxPendingMethodRequests};
}

/// Configuration and credentials as read at start or at a reload, validated.
struct Loaded {
  iothubd::config::Settings settings;
  iothubd::config::DeviceIdentity identity;
  iothubd::core::ProxySettings proxy;
};

/// Reads the configuration files and the secrets they call for. The error is one line naming
/// file, key and problem; it never contains a secret.
iothubd::core::Result<Loaded> loadConfiguration(const std::string& configPath,
                                                std::uint64_t nowUnix) {
  using iothubd::core::Errc;
  using iothubd::core::fail;
  auto sources = iothubd::config::readConfigFiles(configPath);
  if (!sources) {
    return fail(Errc::Config, "configuration: " + sources.error().message);
  }
  auto settings = iothubd::config::parseSettings(*sources);
  if (!settings) {
    return fail(Errc::Config, "configuration: " + settings.error().message);
  }
  // systemd sets $CREDENTIALS_DIRECTORY once per start: a reload re-reads the same copies (a
  // changed credential needs a restart); files named in [credentials] are read afresh.
  const char* credDir = std::getenv("CREDENTIALS_DIRECTORY");
  const char* stateDir = std::getenv("STATE_DIRECTORY");
  if (auto r = iothubd::config::checkUploadDirectories(
          *settings, {configPath, credDir ? credDir : "", stateDir ? stateDir : ""});
      !r) {
    return fail(Errc::Config, "configuration: " + r.error().message);
  }
  auto identity = iothubd::config::loadIdentity(*settings, credDir ? credDir : "", nowUnix);
  if (!identity) {
    return fail(Errc::Config, "credentials: " + identity.error().message);
  }
  auto proxy = iothubd::config::loadProxy(*settings, credDir ? credDir : "");
  if (!proxy) {
    return fail(Errc::Config, "credentials: " + proxy.error().message);
  }
  // Certificates, key and cipher list are checked now, so that a mistake is a configuration
  // error at start or reload, not a connection failure later.
  if (auto r = iothubd::relay::checkTlsConfig(tlsSettings(*settings, *identity)); !r) {
    return fail(Errc::Config, "configuration: " + r.error().message);
  }
  return Loaded{std::move(*settings), std::move(*identity), std::move(*proxy)};
}

void applyLogLevel(const iothubd::config::Settings& settings) {
  LogLevel level = LogLevel::Info;
  if (iothubd::core::parseLogLevel(settings.logLevel, level)) {
    iothubd::core::setLogLevel(level);
  }
}

/// The durable outbox at its configured place. If it cannot be opened the daemon still runs:
/// the pipeline sends directly and QueueMessage explains why it cannot store.
std::unique_ptr<iothubd::outbox::Outbox> openOutbox(const iothubd::config::Settings& s,
                                                    iothubd::loop::EventLoop& ev,
                                                    std::string& unavailable) {
  iothubd::outbox::OutboxOptions o;
  o.path = s.outboxPath;
  if (o.path.empty()) {
    // systemd's StateDirectory= (a ':'-separated list; ours is the first).
    const char* state = std::getenv("STATE_DIRECTORY");
    std::string dir = state != nullptr && *state != '\0' ? state : "/var/lib/iothubd";
    o.path = dir.substr(0, dir.find(':')) + "/outbox.db";
  }
  o.maxMessages = static_cast<std::size_t>(s.outboxMaxMessages);
  o.maxBytes = s.outboxMaxBytes;
  o.fullPolicy = s.outboxFullPolicy == "drop-oldest" ? iothubd::outbox::FullPolicy::DropOldest
                                                     : iothubd::outbox::FullPolicy::Reject;
  o.defaultTtl = std::chrono::seconds(s.outboxDefaultTtl);
  o.maxInflight = static_cast<std::size_t>(s.maxInflight);
  // fsync on a worker: a commit may take tens of milliseconds and must not stall the loop.
  auto opened = iothubd::outbox::Outbox::open(
      o, ev, ev, [&ev](auto work, auto done) { ev.runOnWorker(std::move(work), std::move(done)); });
  if (!opened) {
    unavailable = opened.error().message;
    logf(LogLevel::Error, "outbox unavailable, telemetry is not durable: ", unavailable);
    return nullptr;
  }
  if (opened->movedAside) {
    logf(LogLevel::Warning, "the outbox ", o.path, " was corrupted; moved aside to ",
         *opened->movedAside, " and started afresh");
  }
  if (opened->readOnly) {
    logf(LogLevel::Warning, "the outbox ", o.path,
         " is on a read-only file system: stored messages are delivered, new ones refused");
  }
  if (opened->outbox->length() > 0) {
    logf(LogLevel::Notice, opened->outbox->length(),
         " messages from an earlier run wait in the outbox");
  }
  return std::move(opened->outbox);
}

/// Mirrors the session's state into the service manager's STATUS= (`systemctl status`).
class StatusReporter final : public HubSession::Observer {
 public:
  explicit StatusReporter(HubSession& session) : session_(session) { session_.addObserver(this); }
  ~StatusReporter() override { session_.removeObserver(this); }
  StatusReporter(const StatusReporter&) = delete;
  StatusReporter& operator=(const StatusReporter&) = delete;

  /// "connected to contoso.azure-devices.net as dev1", "reconnecting to ...: <why>", ...
  [[nodiscard]] std::string text() const {
    const auto& o = session_.options();
    std::string who = o.moduleId.empty() ? o.deviceId : o.deviceId + "/" + o.moduleId;
    std::string where = o.hubHostname;
    if (!o.gatewayHostname.empty()) {
      where += " via " + o.gatewayHostname;
    }
    const auto& error = session_.lastError();
    std::string why = error.message.empty() ? "" : ": " + error.message;
    switch (session_.state()) {
      case ConnectionState::Connecting:
        return "connecting to " + where + " as " + who;
      case ConnectionState::Connected:
        return "connected to " + where + " as " + who;
      case ConnectionState::Reconnecting:
        return "reconnecting to " + where + " as " + who + why;
      case ConnectionState::Disconnected:
        return "disconnected from " + where + why;
    }
    return "";
  }

 private:
  void onStateChanged(ConnectionState, const iothubd::core::Error*) override {
    sd_notifyf(0, "STATUS=%s", text().c_str());
  }

  HubSession& session_;
};

/// SIGHUP (ExecReload=): applies a changed configuration without a restart. A configuration or
/// credential that does not load leaves the running one in place; the log line says why.
void reload(const std::string& configPath, HubSession& session,
            iothubd::dbusapi::DeviceObject& object, const StatusReporter& status,
            const iothubd::core::Clock& clock) {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
             static_cast<unsigned long long>(ts.tv_sec) * 1000000ULL +
                 static_cast<unsigned long long>(ts.tv_nsec) / 1000ULL);
  auto loaded = loadConfiguration(configPath, clock.unixSeconds());
  if (!loaded) {
    logf(LogLevel::Warning,
         "reload failed, keeping the running configuration: ", loaded.error().message);
  } else {
    applyLogLevel(loaded->settings);
    object.setMethodResponseTimeout(std::chrono::seconds(loaded->settings.methodResponseTimeout));
    object.setLimits(busLimits(loaded->settings));
    object.setKeepConnected(loaded->settings.keepConnected);
    object.setUploadDirectories(loaded->settings.uploadFromPathDirectories);
    bool reconnects = session.reconfigure(
        sessionOptions(loaded->settings, std::move(loaded->identity), std::move(loaded->proxy)));
    if (reconnects) {
      object.identityChanged();
    }
    logf(LogLevel::Notice, "configuration reloaded from ", configPath,
         reconnects ? "; reconnecting to apply it" : "; the connection is unaffected");
  }
  sd_notifyf(0, "READY=1\nSTATUS=%s", status.text().c_str());
}

int run(const Options& opts) {
  iothubd::core::SystemClock clock;
  auto loaded = loadConfiguration(opts.configPath, clock.unixSeconds());
  if (!loaded) {
    logf(LogLevel::Error, loaded.error().message);
    return EX_CONFIG;
  }
  applyLogLevel(loaded->settings);
  auto& identity = loaded->identity;
  if (opts.checkOnly) {
    std::cout << "configuration OK: device " << identity.deviceId << " on " << identity.hubHostname
              << " (" << iothubd::config::authKindName(identity.authentication) << ")\n";
    return EXIT_SUCCESS;
  }

  // A peer that closes first must give EPIPE, not kill the daemon: the relay's TLS writes go
  // through OpenSSL's socket BIO, which cannot pass MSG_NOSIGNAL (libmosquitto sets this too).
  std::signal(SIGPIPE, SIG_IGN);
  auto loop = iothubd::loop::EventLoop::create();
  if (!loop) {
    logf(LogLevel::Error, loop.error().message);
    return EXIT_FAILURE;
  }
  auto& ev = **loop;
  auto transport = iothubd::mqtt::createMosquittoTransport(ev);
  if (!transport) {
    logf(LogLevel::Error, transport.error().message);
    return EXIT_FAILURE;
  }
  std::string hub = identity.hubHostname;
  std::string device = identity.deviceId;
  HubSession session(
      ev, ev, **transport,
      sessionOptions(loaded->settings, std::move(identity), std::move(loaded->proxy)));

  std::unique_ptr<sdbus::IConnection> bus;
  try {
    // Honours DBUS_SYSTEM_BUS_ADDRESS, which is how tests use a private bus. The name is asked
    // for only once the object can serve and track its callers (below).
    bus = sdbus::createSystemBusConnection();
  } catch (const sdbus::Error& e) {
    logf(LogLevel::Error, "cannot connect to the system bus: ", e.getName(), ": ", e.getMessage());
    return EX_UNAVAILABLE;
  }
  const auto& settings = loaded->settings;
  // File upload (protocol doc 8): HTTPS to the hub itself, never the gateway; the same trust
  // settings as MQTT (libcurl keeps the system CA path besides server_verification_cert).
  iothubd::http::CurlOptions curlOptions;
  curlOptions.tls = session.options().tls;
  curlOptions.proxy = session.options().proxy;
  curlOptions.userAgent = userAgent();
  // libcurl is loaded with the first upload, not now (issue 13: idle memory).
  auto http = iothubd::http::createLazyCurlMultiClient(ev, curlOptions);
  if (!http) {
    logf(LogLevel::Error, "file upload: ", http.error().message);
    return EXIT_FAILURE;
  }
  std::unique_ptr<iothubd::blob::BlobUploader> uploads;
  if (session.options().moduleId.empty()) {
    iothubd::blob::HubEndpoint endpoint;
    endpoint.host = session.options().hubHostname;
    if (settings.fileUploadPort != 443) {
      endpoint.host += ":" + std::to_string(settings.fileUploadPort);
    }
    endpoint.deviceId = session.options().deviceId;
    iothubd::blob::UploaderOptions uploadOptions;
    uploadOptions.blockSize = settings.blockSize;
    uploadOptions.maxConcurrentUploads = static_cast<std::size_t>(settings.maxConcurrentUploads);
    uploadOptions.uploadTimeout = std::chrono::seconds(settings.uploadTimeout);
    uploadOptions.requestTimeout = std::chrono::seconds(settings.operationTimeout);
    uploads = std::make_unique<iothubd::blob::BlobUploader>(
        **http, ev, ev, endpoint, [&session] { return session.httpAuthorization(); },
        [&ev](iothubd::core::UniqueFd fd) {
          return iothubd::http::createFdReader(ev, std::move(fd));
        },
        uploadOptions);
  }

  std::string outboxUnavailable;
  auto outbox = openOutbox(settings, ev, outboxUnavailable);
  iothubd::delivery::TelemetryPipeline telemetry(ev, ev, session, std::move(outbox),
                                                 outboxUnavailable);

  auto object = iothubd::dbusapi::createDeviceObject(
      *bus,
      {session, ev, std::chrono::seconds(settings.methodResponseTimeout), telemetry, uploads.get(),
       busLimits(settings), settings.keepConnected, settings.uploadFromPathDirectories});
  try {
    // Only now: the object and its NameOwnerChanged match exist, so no call arrives before
    // the daemon can tell when its caller leaves (issue 12).
    bus->requestName(iothubd::dbusapi::kBusName);
  } catch (const sdbus::Error& e) {
    logf(LogLevel::Error, "cannot own ", iothubd::dbusapi::kBusName,
         " on the system bus: ", e.getName(), ": ", e.getMessage());
    object.reset();
    return EX_UNAVAILABLE;
  }
  StatusReporter status(session);
  if (auto r = ev.attachBus(*bus); !r) {
    logf(LogLevel::Error, r.error().message);
    return EXIT_FAILURE;
  }

  std::unique_ptr<iothubd::core::Timer> shutdownTimer =
      ev.createTimer([&ev] { ev.exit(EXIT_SUCCESS); });
  bool stopping = false;
  auto signals = ev.handleSignals({SIGTERM, SIGINT, SIGHUP}, [&](int sig) {
    if (stopping) {
      return;
    }
    if (sig == SIGHUP) {
      reload(opts.configPath, session, *object, status, clock);
      return;
    }
    stopping = true;
    logf(LogLevel::Notice, "stopping on ", strsignal(sig));
    sd_notify(0, "STOPPING=1");
    // Callers still waiting get OperationCancelled (queued messages stay stored); the hub gets
    // a DISCONNECT.
    telemetry.shutdown();
    session.disconnect([&ev](const iothubd::core::Result<void>&) { ev.exit(EXIT_SUCCESS); });
    shutdownTimer->armAfter(kShutdownGrace);
  });
  if (!signals) {
    logf(LogLevel::Error, signals.error().message);
    return EXIT_FAILURE;
  }
  if (auto r = ev.enableWatchdog(); !r) {
    logf(LogLevel::Warning, r.error().message, ", continuing without watchdog");
  }

  session.start();
  logf(LogLevel::Notice, "iothubd ", IOTHUBD_VERSION, " serving device ", device, " of ", hub,
       " as ", iothubd::dbusapi::kBusName);
  sd_notifyf(0, "READY=1\nSTATUS=%s", status.text().c_str());

  auto code = ev.run();
  ev.detachBus();
  object.reset();
  uploads.reset();
  if (!code) {
    logf(LogLevel::Error, code.error().message);
    return EXIT_FAILURE;
  }
  return *code;
}

}  // namespace

int main(int argc, char** argv) {
  // Secrets must never land in a core dump, and no process of the same user may ptrace or read
  // this one's memory through /proc (LimitCORE=0 in the unit covers the dump too).
  (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  Options opts;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) {
      opts.configPath = argv[++i];
    } else if (arg.rfind("--config=", 0) == 0) {
      opts.configPath = arg.substr(9);
    } else if (arg == "--check-config") {
      opts.checkOnly = true;
    } else if (arg == "--version") {
      std::cout << "iothubd " << IOTHUBD_VERSION << "\n";
      return EXIT_SUCCESS;
    } else if (arg == "--help" || arg == "-h") {
      usage(std::cout);
      return EXIT_SUCCESS;
    } else {
      std::cerr << "iothubd: unknown argument " << arg << "\n";
      usage(std::cerr);
      return EX_USAGE;
    }
  }
  int code = EXIT_FAILURE;
  try {
    code = run(opts);
  } catch (const std::exception& e) {
    logf(LogLevel::Error, "fatal: ", e.what());
  }
  iothubd::core::flushLogRateLimit();
  return code;
}
