// SPDX-License-Identifier: MIT
// Test support: runs the built iothubd as a real process (as the unprivileged user the package
// creates), awaits its READY=1 on a NOTIFY_SOCKET the harness owns, and collects its log.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <iosfwd>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace iothubd::testing {

struct DaemonOptions {
  std::string binary;                ///< default: $IOTHUBD_BINARY
  std::string configPath;            ///< --config
  std::string busAddress;            ///< DBUS_SYSTEM_BUS_ADDRESS
  std::string credentialsDirectory;  ///< CREDENTIALS_DIRECTORY, if set
  std::string user = "iothubd";      ///< run as this user; empty = as the test process
  std::map<std::string, std::string> extraEnv;
  /// Runs the daemon under this command (e.g. valgrind and its options): argv starts with it.
  std::vector<std::string> wrapper;
};

/// Looks up the service user; throws with a hint when it does not exist (scripts/test creates
/// it: the bus policy only lets user "iothubd" own org.iothubd).
struct ServiceUser {
  uid_t uid;
  gid_t gid;
};
[[nodiscard]] ServiceUser serviceUser(const std::string& name = "iothubd");

class DaemonProcess {
 public:
  /// `workDir` must exist and be writable by the test; the notify socket and log go there.
  DaemonProcess(std::string workDir, DaemonOptions options);
  ~DaemonProcess();  // SIGKILL if still running
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  /// Forks and execs the daemon.
  void start();
  /// True once READY=1 arrived; false if the process exited first or `timeout` passed.
  [[nodiscard]] bool waitReady(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  /// SIGTERM and wait; returns the exit status (128 + signal if killed by one), nullopt on
  /// timeout.
  [[nodiscard]] std::optional<int> stop(
      std::chrono::milliseconds timeout = std::chrono::seconds(10));
  /// Waits for the process to exit by itself.
  [[nodiscard]] std::optional<int> waitExit(
      std::chrono::milliseconds timeout = std::chrono::seconds(10));
  [[nodiscard]] bool running() const { return pid_ > 0; }
  [[nodiscard]] pid_t pid() const { return pid_; }
  /// The last STATUS= text received so far.
  [[nodiscard]] std::string lastStatus() const;
  /// Waits until the last STATUS= text is `status`.
  [[nodiscard]] bool waitStatus(const std::string& status,
                                std::chrono::milliseconds timeout = std::chrono::seconds(10));
  /// Sends SIGHUP and waits until the daemon reported the reload done (RELOADING=1 then READY=1).
  [[nodiscard]] bool reload(std::chrono::milliseconds timeout = std::chrono::seconds(10));

  [[nodiscard]] std::string log() const;
  /// Waits until the log contains `text` (woken by inotify as the daemon writes, no polling);
  /// false if `timeout` passed first. For what the daemon tells no one but its log.
  [[nodiscard]] bool waitForLog(const std::string& text,
                                std::chrono::milliseconds timeout = std::chrono::seconds(10)) const;
  /// The first sanitizer report in the log (AddressSanitizer, LeakSanitizer or an
  /// UndefinedBehaviorSanitizer "runtime error:") with what follows it, or "" if there is none.
  /// Only a sanitizer build (scripts/test --sanitize) writes them; any report fails the test.
  [[nodiscard]] std::string sanitizerReport() const;
  void printLogIf(bool failed) const;

 private:
  /// Reads the notify socket for the whole life of the process, as the service manager does: a
  /// socket nobody reads fills up and then blocks the daemon's sd_notify() and its event loop.
  void readNotifications();
  void stopReader();
  void handleNotification(const std::string& message);
  [[nodiscard]] bool waitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout);

  std::string workDir_;
  DaemonOptions options_;
  pid_t pid_ = -1;
  int pidFd_ = -1;
  int notifyFd_ = -1;
  int stopFd_ = -1;  ///< eventfd that ends the reader thread
  std::thread reader_;
  mutable std::mutex mutex_;  ///< guards what the reader thread records below
  std::condition_variable cv_;
  bool ready_ = false;
  bool reloading_ = false;
  int reloadsDone_ = 0;
  std::string status_;
  std::string logPath_;
};

/// Path of the built daemon: $IOTHUBD_BINARY (set by meson for the test).
[[nodiscard]] std::string daemonBinaryPath();

}  // namespace iothubd::testing
