// SPDX-License-Identifier: MIT
#include "ctl_process.hpp"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <stdexcept>

namespace iothubd::testing {
namespace {

std::string binary() {
  const char* path = std::getenv("IOTHUBCTL_BINARY");
  if (path == nullptr) {
    throw std::runtime_error("IOTHUBCTL_BINARY is not set (meson test sets it)");
  }
  return path;
}

}  // namespace

CtlProcess::CtlProcess(const std::vector<std::string>& args, const Options& options) {
  int input = ::memfd_create("ctl-input", MFD_CLOEXEC);
  if (input < 0 || ::write(input, options.input.data(), options.input.size()) !=
                       static_cast<ssize_t>(options.input.size())) {
    throw std::runtime_error("cannot prepare iothubctl's stdin");
  }
  ::lseek(input, 0, SEEK_SET);
  int out[2];
  int err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe2 failed");
  }
  std::vector<std::string> words{options.program.empty() ? binary() : options.program};
  words.insert(words.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& w : words) {
    argv.push_back(w.data());
  }
  argv.push_back(nullptr);
  const passwd* pw = options.user.empty() ? nullptr : ::getpwnam(options.user.c_str());
  if (!options.user.empty() && pw == nullptr) {
    throw std::runtime_error("no user " + options.user);
  }
  // Opened here, executed by descriptor: another user need not traverse the directories on the
  // way to the build tree (a clean clone under /root or in a `mktemp -d` directory), only be
  // allowed to execute the file itself.
  const int program = ::open(argv[0], O_PATH | O_CLOEXEC);
  if (program < 0) {
    throw std::runtime_error(std::string("cannot open ") + argv[0]);
  }
  pid_ = ::fork();
  if (pid_ < 0) {
    ::close(program);
    throw std::runtime_error("fork failed");
  }
  if (pid_ == 0) {
    ::dup2(input, STDIN_FILENO);
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(err[1], STDERR_FILENO);
    ::setenv("DBUS_SYSTEM_BUS_ADDRESS", options.busAddress.c_str(), 1);
    if (!options.directory.empty() && ::chdir(options.directory.c_str()) != 0) {
      ::_exit(126);
    }
    if (pw != nullptr) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(pw->pw_gid) != 0 || ::setuid(pw->pw_uid) != 0) {
        ::_exit(126);
      }
    }
    ::syscall(SYS_execveat, program, "", argv.data(), environ, AT_EMPTY_PATH);
    static constexpr char kFailed[] = "test harness: cannot execute iothubctl as this user\n";
    [[maybe_unused]] auto ignored = ::write(STDERR_FILENO, kFailed, sizeof kFailed - 1);
    ::_exit(127);
  }
  ::close(program);
  ::close(input);
  ::close(out[1]);
  ::close(err[1]);
  outFd_ = out[0];
  errFd_ = err[0];
}

CtlProcess::~CtlProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (outFd_ >= 0) {
    ::close(outFd_);
  }
  if (errFd_ >= 0) {
    ::close(errFd_);
  }
}

bool CtlProcess::pump(std::chrono::milliseconds timeout) {
  std::vector<pollfd> fds;
  if (outFd_ >= 0) {
    fds.push_back({outFd_, POLLIN, 0});
  }
  if (errFd_ >= 0) {
    fds.push_back({errFd_, POLLIN, 0});
  }
  if (fds.empty()) {
    return false;
  }
  if (::poll(fds.data(), fds.size(), static_cast<int>(timeout.count())) <= 0) {
    return true;
  }
  for (const auto& p : fds) {
    if (p.revents == 0) {
      continue;
    }
    char buf[8192];
    ssize_t n = ::read(p.fd, buf, sizeof buf);
    std::string& into = p.fd == outFd_ ? out_ : err_;
    if (n > 0) {
      into.append(buf, static_cast<size_t>(n));
    } else {
      ::close(p.fd);
      (p.fd == outFd_ ? outFd_ : errFd_) = -1;
    }
  }
  return true;
}

namespace {
template <class Done>
bool waitUntil(Done done, std::chrono::milliseconds timeout,
               const std::function<bool(std::chrono::milliseconds)>& step) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || !step(left)) {
      return done();
    }
  }
  return true;
}
}  // namespace

bool CtlProcess::waitForErr(const std::string& text, std::chrono::milliseconds timeout) {
  return waitUntil([&] { return err_.find(text) != std::string::npos; }, timeout,
                   [this](auto left) { return pump(left); });
}

bool CtlProcess::waitForOut(const std::string& text, std::chrono::milliseconds timeout,
                            std::size_t occurrences) {
  auto seen = [&] {
    std::size_t n = 0;
    for (auto at = out_.find(text); at != std::string::npos; at = out_.find(text, at + 1)) {
      ++n;
    }
    return n >= occurrences;
  };
  return waitUntil(seen, timeout, [this](auto left) { return pump(left); });
}

CtlOutcome CtlProcess::wait(std::chrono::milliseconds timeout) {
  waitUntil([&] { return outFd_ < 0 && errFd_ < 0; }, timeout,
            [this](auto left) { return pump(left); });
  CtlOutcome o;
  if (outFd_ >= 0 || errFd_ >= 0) {
    ::kill(pid_, SIGKILL);
  }
  int status = 0;
  ::waitpid(pid_, &status, 0);
  pid_ = -1;
  o.status = outFd_ >= 0 || errFd_ >= 0 ? -1
             : WIFEXITED(status)        ? WEXITSTATUS(status)
                                        : 128 + WTERMSIG(status);
  o.out = out_;
  o.err = err_;
  return o;
}

void CtlProcess::signal(int signo) {
  if (pid_ > 0) {
    ::kill(pid_, signo);
  }
}

CtlOutcome runCtl(const std::vector<std::string>& args, const CtlProcess::Options& options) {
  CtlProcess p(args, options);
  return p.wait();
}

}  // namespace iothubd::testing
