// SPDX-License-Identifier: MIT
#include "daemon_process.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <vector>

#include "temp_dir.hpp"

namespace iothubd::testing {
namespace {

using Clock = std::chrono::steady_clock;

int remainingMs(Clock::time_point deadline) {
  auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

int decodeStatus(int status) {
  if (WIFEXITED(status)) {
    return WEXITSTATUS(status);
  }
  if (WIFSIGNALED(status)) {
    return 128 + WTERMSIG(status);
  }
  return -1;
}

}  // namespace

std::string daemonBinaryPath() {
  const char* p = std::getenv("IOTHUBD_BINARY");
  if (p == nullptr || *p == '\0') {
    throw std::runtime_error("IOTHUBD_BINARY is not set (run the tests with meson test)");
  }
  return p;
}

ServiceUser serviceUser(const std::string& name) {
  passwd* pw = ::getpwnam(name.c_str());
  if (pw == nullptr) {
    throw std::runtime_error("user '" + name +
                             "' does not exist: scripts/test creates it (useradd --system " + name +
                             "); the D-Bus policy lets only this user own org.iothubd");
  }
  return ServiceUser{pw->pw_uid, pw->pw_gid};
}

DaemonProcess::DaemonProcess(std::string workDir, DaemonOptions options)
    : workDir_(std::move(workDir)), options_(std::move(options)) {
  if (options_.binary.empty()) {
    options_.binary = daemonBinaryPath();
  }
  logPath_ = workDir_ + "/iothubd.log";
}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  stopReader();
  if (pidFd_ >= 0) {
    ::close(pidFd_);
  }
  if (notifyFd_ >= 0) {
    ::close(notifyFd_);
  }
}

void DaemonProcess::start() {
  std::string socketPath = workDir_ + "/notify.sock";
  ::unlink(socketPath.c_str());
  notifyFd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socketPath.c_str(), sizeof addr.sun_path - 1);
  if (::bind(notifyFd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    throw std::runtime_error("cannot bind notify socket " + socketPath + ": " +
                             std::strerror(errno));
  }
  ::chmod(socketPath.c_str(), 0777);  // the daemon runs as another user

  std::optional<ServiceUser> user;
  if (!options_.user.empty()) {
    user = serviceUser(options_.user);
  }
  int logFd = ::open(logPath_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (logFd < 0) {
    throw std::runtime_error("cannot create " + logPath_);
  }
  pid_ = ::fork();
  if (pid_ < 0) {
    throw std::runtime_error("fork failed");
  }
  if (pid_ == 0) {
    ::dup2(logFd, STDERR_FILENO);
    ::dup2(logFd, STDOUT_FILENO);
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, STDIN_FILENO);
    ::setenv("NOTIFY_SOCKET", socketPath.c_str(), 1);
    if (!options_.busAddress.empty()) {
      ::setenv("DBUS_SYSTEM_BUS_ADDRESS", options_.busAddress.c_str(), 1);
    }
    if (!options_.credentialsDirectory.empty()) {
      ::setenv("CREDENTIALS_DIRECTORY", options_.credentialsDirectory.c_str(), 1);
    } else {
      ::unsetenv("CREDENTIALS_DIRECTORY");
    }
    for (const auto& [k, v] : options_.extraEnv) {
      ::setenv(k.c_str(), v.c_str(), 1);
    }
    if (user) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(user->gid) != 0 || ::setuid(user->uid) != 0) {
        std::perror("cannot switch to the service user");
        ::_exit(126);
      }
    }
    std::vector<std::string> args = options_.wrapper;
    args.push_back(options_.binary);
    if (!options_.configPath.empty()) {
      args.push_back("--config");
      args.push_back(options_.configPath);
    }
    std::vector<char*> argv;
    for (auto& a : args) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    ::execv(args.front().c_str(), argv.data());
    std::perror("exec iothubd");
    ::_exit(127);
  }
  ::close(logFd);
  pidFd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
  if (pidFd_ < 0) {
    throw std::runtime_error("pidfd_open failed: " + std::string(std::strerror(errno)));
  }
  stopFd_ = ::eventfd(0, EFD_CLOEXEC);
  reader_ = std::thread([this] { readNotifications(); });
}

void DaemonProcess::readNotifications() {
  pollfd fds[2] = {{notifyFd_, POLLIN, 0}, {stopFd_, POLLIN, 0}};
  char buf[4096];
  for (;;) {
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) {
      return;
    }
    if (fds[1].revents != 0) {
      return;
    }
    for (;;) {
      ssize_t n = ::recv(notifyFd_, buf, sizeof buf - 1, 0);
      if (n <= 0) {
        break;
      }
      handleNotification(std::string(buf, static_cast<size_t>(n)));
    }
  }
}

void DaemonProcess::handleNotification(const std::string& msg) {
  std::lock_guard lock(mutex_);
  size_t pos = 0;
  while (pos < msg.size()) {
    size_t end = msg.find('\n', pos);
    std::string line = msg.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    if (line == "READY=1") {
      ready_ = true;
      if (reloading_) {
        reloading_ = false;
        ++reloadsDone_;
      }
    } else if (line == "RELOADING=1") {
      reloading_ = true;
    } else if (line.rfind("STATUS=", 0) == 0) {
      status_ = line.substr(7);
    }
    if (end == std::string::npos) {
      break;
    }
    pos = end + 1;
  }
  cv_.notify_all();
}

void DaemonProcess::stopReader() {
  if (reader_.joinable()) {
    std::uint64_t one = 1;
    ssize_t n = ::write(stopFd_, &one, sizeof one);
    (void)n;
    reader_.join();
  }
  if (stopFd_ >= 0) {
    ::close(stopFd_);
    stopFd_ = -1;
  }
}

std::string DaemonProcess::lastStatus() const {
  std::lock_guard lock(mutex_);
  return status_;
}

bool DaemonProcess::waitReady(std::chrono::milliseconds timeout) {
  return waitFor([this] { return ready_; }, timeout);
}

bool DaemonProcess::waitStatus(const std::string& status, std::chrono::milliseconds timeout) {
  return waitFor([this, &status] { return status_ == status; }, timeout);
}

bool DaemonProcess::reload(std::chrono::milliseconds timeout) {
  int before = 0;
  {
    // Counted before the signal: a daemon quick enough to finish the reload before this thread
    // looked again would otherwise be waited for in vain.
    std::lock_guard lock(mutex_);
    before = reloadsDone_;
  }
  if (pid_ <= 0 || ::kill(pid_, SIGHUP) != 0) {
    return false;
  }
  return waitFor([this, before] { return reloadsDone_ > before; }, timeout);
}

bool DaemonProcess::waitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  std::unique_lock lock(mutex_);
  while (!done()) {
    int left = remainingMs(deadline);
    if (left == 0) {
      return false;
    }
    // Notifications wake us; a process that exited sends nothing more, so look at that too
    // (at most every 100 ms).
    cv_.wait_for(lock, std::chrono::milliseconds(std::min(left, 100)));
    if (!done()) {
      pollfd p{pidFd_, POLLIN, 0};
      if (pidFd_ < 0 || ::poll(&p, 1, 0) > 0) {
        return false;
      }
    }
  }
  return true;
}

std::optional<int> DaemonProcess::waitExit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) {
    return std::nullopt;
  }
  pollfd p{pidFd_, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) {
    return std::nullopt;
  }
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  return decodeStatus(status);
}

std::optional<int> DaemonProcess::stop(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) {
    return std::nullopt;
  }
  ::kill(pid_, SIGTERM);
  return waitExit(timeout);
}

std::string DaemonProcess::log() const {
  return readFile(logPath_);
}

bool DaemonProcess::waitForLog(const std::string& text, std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  struct Inotify {
    int fd = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    ~Inotify() {
      if (fd >= 0) {
        ::close(fd);
      }
    }
    [[nodiscard]] int get() const { return fd; }
  } watch;
  if (watch.get() < 0 || ::inotify_add_watch(watch.get(), logPath_.c_str(), IN_MODIFY) < 0) {
    throw std::runtime_error("cannot watch " + logPath_ + " with inotify");
  }
  // Watching first, then reading: a line written in between wakes the poll below.
  while (log().find(text) == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd pfd{watch.get(), POLLIN, 0};
    if (left.count() <= 0 || ::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) {
      return log().find(text) != std::string::npos;
    }
    char events[4096];
    while (::read(watch.get(), events, sizeof events) > 0) {
    }
  }
  return true;
}

std::string DaemonProcess::sanitizerReport() const {
  const std::string text = log();
  std::size_t first = std::string::npos;
  for (const char* marker : {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                             "WARNING: AddressSanitizer", "ERROR: UndefinedBehaviorSanitizer"}) {
    first = std::min(first, text.find(marker));
  }
  if (first == std::string::npos) {
    return "";
  }
  const std::size_t lineStart = text.rfind('\n', first);
  return text.substr(lineStart == std::string::npos ? 0 : lineStart + 1);
}

void DaemonProcess::printLogIf(bool failed) const {
  if (failed) {
    std::cerr << "----- iothubd log (" << logPath_ << ") -----\n"
              << log() << "----- end of iothubd log -----\n";
  }
}

}  // namespace iothubd::testing
