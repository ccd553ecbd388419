// SPDX-License-Identifier: MIT
// Support for the integration binaries that run in private namespaces (netns_test.cpp,
// fallback_test.cpp): entering the namespaces from main(), running tools, proxy processes.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace iothubd::testing {

/// From main(), before any thread exists: moves this process and all its children into a
/// private network namespace with `lo` up (::1 and 127.0.0.1). Returns 0, 77 (skip: not root or
/// no namespaces here) or 1 (error), having said why on stderr.
int enterPrivateNetwork();

/// From main(), like enterPrivateNetwork(): moves this process into a private mount namespace
/// whose mounts do not propagate back to the machine's. Same returns.
int enterPrivateMounts();

/// From main(), like enterPrivateNetwork(): moves this process into a private mount namespace
/// in which /etc/hosts is a file with `hosts` as its content (readable by everyone), so that
/// name resolution is what the test needs without touching the machine's file. Same returns.
int useHostsFile(const std::string& hosts);

/// Runs `argv` (PATH lookup) to completion; its exit status (128 if it did not exit).
int run(const std::vector<std::string>& argv);

/// Runs `argv` and returns what it wrote to stdout.
std::string runForOutput(const std::vector<std::string>& argv);

/// A TCP port on 127.0.0.1 that was free a moment ago.
int freeTcpPort();

/// A server (a proxy) run for one test, its output in `logPath`.stderr; SIGTERM and reaped on
/// destruction. The constructor returns once 127.0.0.1:`port` accepts connections (within 5 s).
class ProxyProcess {
 public:
  ProxyProcess(std::vector<std::string> argv, std::string logPath, int port);
  ~ProxyProcess();
  ProxyProcess(const ProxyProcess&) = delete;
  ProxyProcess& operator=(const ProxyProcess&) = delete;
  [[nodiscard]] std::string log() const;

 private:
  std::string logPath_;
  int port_;
  pid_t pid_ = -1;
};

}  // namespace iothubd::testing
