// SPDX-License-Identifier: MIT
#include "netns_support.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <thread>

#include "temp_dir.hpp"

namespace iothubd::testing {
namespace {

using namespace std::chrono_literals;
using Steady = std::chrono::steady_clock;

/// In a forked child: replaces the process with `argv` (PATH lookup), or exits 127.
[[noreturn]] void execOrExit(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) {
    args.push_back(const_cast<char*>(a.c_str()));
  }
  args.push_back(nullptr);
  ::execvp(args[0], args.data());
  ::_exit(127);
}

}  // namespace

int enterPrivateNetwork() {
  if (::geteuid() != 0) {
    std::cerr << "a private network namespace needs root; skipped\n";
    return 77;
  }
  if (::unshare(CLONE_NEWNET) != 0) {
    std::cerr << "unshare(CLONE_NEWNET) failed: " << std::strerror(errno) << "; skipped\n";
    return 77;
  }
  int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (s < 0 || ::ioctl(s, SIOCGIFFLAGS, &ifr) != 0 ||
      (ifr.ifr_flags |= IFF_UP, ::ioctl(s, SIOCSIFFLAGS, &ifr) != 0)) {
    std::cerr << "cannot bring up lo in the new namespace: " << std::strerror(errno) << "\n";
    return 1;
  }
  ::close(s);
  return 0;
}

int enterPrivateMounts() {
  if (::geteuid() != 0) {
    std::cerr << "a private mount namespace needs root; skipped\n";
    return 77;
  }
  if (::unshare(CLONE_NEWNS) != 0) {
    std::cerr << "unshare(CLONE_NEWNS) failed: " << std::strerror(errno) << "; skipped\n";
    return 77;
  }
  // Nothing mounted here may leak back to the machine's namespace.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    std::cerr << "cannot make the mounts private: " << std::strerror(errno) << "\n";
    return 1;
  }
  return 0;
}

int useHostsFile(const std::string& hosts) {
  if (int r = enterPrivateMounts(); r != 0) {
    return r;
  }
  const char* base = std::getenv("TMPDIR");
  std::string path =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/iothubd-hosts-XXXXXX";
  const int fd = ::mkstemp(path.data());
  if (fd < 0) {
    std::cerr << "cannot create a hosts file: " << std::strerror(errno) << "\n";
    return 1;
  }
  ::close(fd);
  writeFile(path, hosts, 0644);
  const bool mounted = ::mount(path.c_str(), "/etc/hosts", nullptr, MS_BIND, nullptr) == 0;
  const int err = errno;
  // The mount keeps the file alive; its name is not needed any more.
  ::unlink(path.c_str());
  if (!mounted) {
    std::cerr << "cannot bind a hosts file over /etc/hosts: " << std::strerror(err) << "\n";
    return 1;
  }
  return 0;
}

int run(const std::vector<std::string>& argv) {
  pid_t pid = ::fork();
  if (pid == 0) {
    execOrExit(argv);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

std::string runForOutput(const std::vector<std::string>& argv) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe2 failed");
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(pipefd[1], STDOUT_FILENO);
    execOrExit(argv);
  }
  ::close(pipefd[1]);
  std::string out;
  char buf[4096];
  ssize_t n = 0;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) {
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(pipefd[0]);
  ::waitpid(pid, nullptr, 0);
  return out;
}

int freeTcpPort() {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::getsockname(s, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(s);
  return ntohs(addr.sin_port);
}

ProxyProcess::ProxyProcess(std::vector<std::string> argv, std::string logPath, int port)
    : logPath_(std::move(logPath)), port_(port) {
  pid_ = ::fork();
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    int out = ::open((logPath_ + ".stderr").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out >= 0) {
      ::dup2(out, STDOUT_FILENO);
      ::dup2(out, STDERR_FILENO);
    }
    execOrExit(argv);
  }
  // A proxy says nothing when it is ready: try to connect, bounded (5 s).
  const auto deadline = Steady::now() + 5s;
  while (Steady::now() < deadline) {
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool up = ::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(s);
    if (up) {
      return;
    }
    if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error(argv[0] + " exited at start-up:\n" + log());
    }
    std::this_thread::sleep_for(20ms);
  }
  throw std::runtime_error(argv[0] + " did not listen on port " + std::to_string(port_) + ":\n" +
                           log());
}

ProxyProcess::~ProxyProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
}

std::string ProxyProcess::log() const {
  std::string out;
  for (const std::string& p : {logPath_, logPath_ + ".stderr"}) {
    try {
      out += readFile(p);
    } catch (const std::exception&) {
    }
  }
  return out;
}

}  // namespace iothubd::testing
