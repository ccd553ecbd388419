// SPDX-License-Identifier: MIT
// iothubd: parses the command line, runs the event loop and maps outcomes to exit codes. What the
// configuration means for each component is config::compose/apply; the components and their
// wiring are daemon.cpp.
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <sysexits.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>
#include <string>

#include <sdbus-c++/sdbus-c++.h>
#include <systemd/sd-daemon.h>

#include "daemon.hpp"
#include "iothubd/config/composition.hpp"
#include "iothubd/core/log.hpp"
#include "iothubd/dbusapi/device_object.hpp"
#include "iothubd/loop/event_loop.hpp"

namespace {

using iothubd::core::logf;
using iothubd::core::LogLevel;

constexpr const char* kDefaultConfig = "/etc/iothubd/iothubd.conf";
/// How long a SIGTERM waits for the DISCONNECT to go out before the loop ends regardless.
constexpr std::chrono::seconds kShutdownGrace{3};
/// Handled on the loop; blocked before any thread exists so that none of them receives one.
const std::vector<int> kSignals = {SIGTERM, SIGINT, SIGHUP};

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

/// What the configuration takes from the process: systemd's directories and our user agent
/// (DeviceClientType, protocol doc 1.2: name/version and platform, like the SDKs).
iothubd::config::Environment environment() {
  iothubd::config::Environment env;
  if (const char* creds = std::getenv("CREDENTIALS_DIRECTORY")) {
    env.credentialsDirectory = creds;
  }
  // systemd's StateDirectory= (a ':'-separated list; ours is the first).
  if (const char* state = std::getenv("STATE_DIRECTORY"); state != nullptr && *state != '\0') {
    std::string dirs = state;
    env.stateDirectory = dirs.substr(0, dirs.find(':'));
  }
  env.userAgent = std::string("iothubd/") + IOTHUBD_VERSION;
  utsname u{};
  if (uname(&u) == 0) {
    env.userAgent += std::string(" (") + u.sysname + " " + u.release + "; " + u.machine + ")";
  }
  return env;
}

void notifyReloading() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu",
             static_cast<unsigned long long>(ts.tv_sec) * 1000000ULL +
                 static_cast<unsigned long long>(ts.tv_nsec) / 1000ULL);
}

int run(const Options& opts) {
  iothubd::core::SystemClock clock;
  const auto env = environment();
  auto loaded = iothubd::config::load(opts.configPath, env, clock.unixSeconds());
  if (!loaded) {
    logf(LogLevel::Error, loaded.error().message);
    return EX_CONFIG;
  }
  const auto composition = iothubd::config::compose(*loaded, env);
  iothubd::core::setLogLevel(composition.logLevel);
  const auto& identity = loaded->identity;
  if (opts.checkOnly) {
    if (const auto& dps = identity.dps) {
      // The settings, the enrollment key (or certificate) and payload_file were checked by
      // load(); whether DPS knows the device only a registration tells.
      std::cout << "configuration OK: DPS registration " << dps->registrationId << " in ID scope "
                << dps->idScope << " at " << dps->globalEndpoint << ":" << dps->port << " ("
                << iothubd::config::dpsAttestationName(dps->attestation)
                << (dps->attestation == iothubd::config::DpsAttestation::SymmetricKey
                        ? (dps->groupEnrollment ? ", group enrollment" : ", individual enrollment")
                        : "")
                << ")\n";
      return EXIT_SUCCESS;
    }
    std::cout << "configuration OK: device " << identity.deviceId << " on " << identity.hubHostname
              << " (" << iothubd::config::authKindName(identity.authentication) << ")\n";
    return EXIT_SUCCESS;
  }

  auto loop = iothubd::loop::EventLoop::create();
  if (!loop) {
    logf(LogLevel::Error, loop.error().message);
    return EXIT_FAILURE;
  }
  auto& ev = **loop;
  std::unique_ptr<sdbus::IConnection> bus;
  try {
    // Honours DBUS_SYSTEM_BUS_ADDRESS, which is how tests use a private bus. The name is asked
    // for only once the object can serve and track its callers (below).
    bus = sdbus::createSystemBusConnection();
  } catch (const sdbus::Error& e) {
    logf(LogLevel::Error, "cannot connect to the system bus: ", e.getName(), ": ", e.getMessage());
    return EX_UNAVAILABLE;
  }
  iothubd::daemon::Daemon daemon(ev);
  if (auto r = daemon.start(composition, *bus); !r) {
    logf(LogLevel::Error, r.error().message);
    return EXIT_FAILURE;
  }
  try {
    // Only now: the object and its NameOwnerChanged match exist, so no call arrives before the
    // daemon can tell when its caller leaves (issue 12).
    bus->requestName(iothubd::dbusapi::kBusName);
  } catch (const sdbus::Error& e) {
    logf(LogLevel::Error, "cannot own ", iothubd::dbusapi::kBusName,
         " on the system bus: ", e.getName(), ": ", e.getMessage());
    daemon.stopServing();
    return EX_UNAVAILABLE;
  }
  if (auto r = ev.attachBus(*bus); !r) {
    logf(LogLevel::Error, r.error().message);
    return EXIT_FAILURE;
  }

  std::unique_ptr<iothubd::core::Timer> shutdownTimer =
      ev.createTimer([&ev] { ev.exit(EXIT_SUCCESS); });
  bool stopping = false;
  auto signals = ev.handleSignals(kSignals, [&](int sig) {
    if (stopping) {
      return;
    }
    if (sig == SIGHUP) {
      // ExecReload=: a configuration or credential that does not load leaves the running one in
      // place, and the log line says why.
      notifyReloading();
      auto next = iothubd::config::load(opts.configPath, env, clock.unixSeconds());
      if (!next) {
        logf(LogLevel::Warning,
             "reload failed, keeping the running configuration: ", next.error().message);
      } else {
        daemon.reload(iothubd::config::compose(*next, env), opts.configPath);
      }
      sd_notifyf(0, "READY=1\nSTATUS=%s", daemon.statusText().c_str());
      return;
    }
    stopping = true;
    logf(LogLevel::Notice, "stopping on ", strsignal(sig));
    sd_notify(0, "STOPPING=1");
    daemon.shutdown([&ev] { ev.exit(EXIT_SUCCESS); });
    shutdownTimer->armAfter(kShutdownGrace);
  });
  if (!signals) {
    logf(LogLevel::Error, signals.error().message);
    return EXIT_FAILURE;
  }
  if (auto r = ev.enableWatchdog(); !r) {
    logf(LogLevel::Warning, r.error().message, ", continuing without watchdog");
  }

  daemon.connect();
  const auto& serving = daemon.session().options();
  logf(LogLevel::Notice, "iothubd ", IOTHUBD_VERSION, " serving device ",
       serving.deviceId.empty() ? "(assigned by DPS)" : serving.deviceId, " of ",
       serving.hubHostname.empty() ? "(assigned by DPS)" : serving.hubHostname, " as ",
       iothubd::dbusapi::kBusName);
  sd_notifyf(0, "READY=1\nSTATUS=%s", daemon.statusText().c_str());

  auto code = ev.run();
  ev.detachBus();
  daemon.stopServing();
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
  // Before any thread exists (libraries start some): every thread inherits the mask, so these
  // signals reach only the loop's signalfd instead of killing the process from a worker.
  if (auto r = iothubd::loop::blockSignals(kSignals); !r) {
    logf(LogLevel::Error, r.error().message);
    return EXIT_FAILURE;
  }
  // A peer that closes first must give EPIPE, not kill the daemon: the relay's TLS writes go
  // through OpenSSL's socket BIO, which cannot pass MSG_NOSIGNAL (libmosquitto sets this too).
  std::signal(SIGPIPE, SIG_IGN);
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
