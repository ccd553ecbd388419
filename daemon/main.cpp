// SPDX-License-Identifier: MIT
// iothubd: composition root. Parses the command line, loads configuration and secrets, wires the
// modules together on one sd-event loop and maps failures to exit codes. No logic of its own.
#include <sys/utsname.h>
#include <sysexits.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include <sdbus-c++/sdbus-c++.h>
#include <systemd/sd-daemon.h>

#include "iothubd/config/credentials.hpp"
#include "iothubd/config/settings.hpp"
#include "iothubd/core/log.hpp"
#include "iothubd/dbusapi/device_object.hpp"
#include "iothubd/loop/event_loop.hpp"
#include "iothubd/mqtt/mosquitto_transport.hpp"
#include "iothubd/session/hub_session.hpp"

namespace {

using iothubd::core::LogLevel;
using iothubd::core::logf;

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
        "  --config PATH     configuration file (default " << kDefaultConfig << ");\n"
        "                    drop-ins are read from PATH.d/*.conf\n"
        "  --check-config    load configuration and credentials, report problems, exit\n"
        "  --version         print the version and exit\n"
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

iothubd::session::SessionOptions sessionOptions(const iothubd::config::Settings& s,
                                                iothubd::config::DeviceIdentity id) {
  using iothubd::config::AuthKind;
  iothubd::session::SessionOptions o;
  o.hubHostname = id.hubHostname;
  o.deviceId = id.deviceId;
  o.moduleId = id.moduleId;
  o.gatewayHostname = id.gatewayHostname;
  o.port = s.port;
  o.auth = id.authentication == AuthKind::SasToken ? iothubd::session::AuthMethod::SasToken
                                                   : iothubd::session::AuthMethod::SymmetricKey;
  o.sharedAccessKey = std::move(id.sharedAccessKey);
  o.sasToken = std::move(id.sasToken);
  o.tls.caFile = s.serverVerificationCert;
  o.tls.ciphers = s.cipher;
  o.userAgent = userAgent();
  o.productInfo = s.productInfo;
  o.keepAliveSeconds = s.keepAlive;
  o.sasTokenTtl = std::chrono::seconds(s.sastokenTtl);
  o.autoConnect = s.autoConnect;
  o.connectionRetry = s.connectionRetry;
  o.connectionRetryInterval = std::chrono::seconds(s.connectionRetryInterval);
  o.operationTimeout = std::chrono::seconds(s.operationTimeout);
  return o;
}

int run(const Options& opts) {
  auto sources = iothubd::config::readConfigFiles(opts.configPath);
  if (!sources) {
    logf(LogLevel::Error, "configuration: ", sources.error().message);
    return EX_CONFIG;
  }
  auto settings = iothubd::config::parseSettings(*sources);
  if (!settings) {
    logf(LogLevel::Error, "configuration: ", settings.error().message);
    return EX_CONFIG;
  }
  LogLevel level = LogLevel::Info;
  if (iothubd::core::parseLogLevel(settings->logLevel, level)) {
    iothubd::core::setLogLevel(level);
  }
  const char* credDir = std::getenv("CREDENTIALS_DIRECTORY");
  iothubd::core::SystemClock clock;
  auto identity = iothubd::config::loadIdentity(*settings, credDir ? credDir : "", clock.unixSeconds());
  if (!identity) {
    logf(LogLevel::Error, "credentials: ", identity.error().message);
    return EX_CONFIG;
  }
  if (opts.checkOnly) {
    std::cout << "configuration OK: device " << identity->deviceId << " on "
              << identity->hubHostname << " (" << iothubd::config::authKindName(identity->authentication)
              << ")\n";
    return EXIT_SUCCESS;
  }

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
  std::string hub = identity->hubHostname;
  std::string device = identity->deviceId;
  iothubd::session::HubSession session(ev, ev, **transport, sessionOptions(*settings, std::move(*identity)));

  std::unique_ptr<sdbus::IConnection> bus;
  try {
    // Honours DBUS_SYSTEM_BUS_ADDRESS, which is how tests use a private bus.
    bus = sdbus::createSystemBusConnection(iothubd::dbusapi::kBusName);
  } catch (const sdbus::Error& e) {
    logf(LogLevel::Error, "cannot own ", iothubd::dbusapi::kBusName, " on the system bus: ",
         e.getName(), ": ", e.getMessage());
    return EX_UNAVAILABLE;
  }
  auto object = iothubd::dbusapi::createDeviceObject(*bus, session);
  if (auto r = ev.attachBus(*bus); !r) {
    logf(LogLevel::Error, r.error().message);
    return EXIT_FAILURE;
  }

  std::unique_ptr<iothubd::core::Timer> shutdownTimer = ev.createTimer([&ev] { ev.exit(EXIT_SUCCESS); });
  bool stopping = false;
  auto signals = ev.handleSignals({SIGTERM, SIGINT, SIGHUP}, [&](int sig) {
    if (sig == SIGHUP) {
      logf(LogLevel::Notice, "SIGHUP: reloading is not supported by this version; restart iothubd to apply changes");
      return;
    }
    if (stopping) {
      return;
    }
    stopping = true;
    logf(LogLevel::Notice, "stopping on ", strsignal(sig));
    sd_notify(0, "STOPPING=1");
    // Callers still waiting get OperationCancelled; the hub gets a DISCONNECT.
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
  sd_notifyf(0, "READY=1\nSTATUS=connecting to %s as %s", hub.c_str(), device.c_str());

  auto code = ev.run();
  ev.detachBus();
  object.reset();
  if (!code) {
    logf(LogLevel::Error, code.error().message);
    return EXIT_FAILURE;
  }
  return *code;
}

}  // namespace

int main(int argc, char** argv) {
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
  try {
    return run(opts);
  } catch (const std::exception& e) {
    logf(LogLevel::Error, "fatal: ", e.what());
    return EXIT_FAILURE;
  }
}
