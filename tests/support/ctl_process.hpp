// SPDX-License-Identifier: MIT
// Test support: runs the built iothubctl ($IOTHUBCTL_BINARY) as a real process against the test
// bus, with its stdin from a string and its stdout and stderr collected; waits are bounded and
// wake on output, never sleep.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace iothubd::testing {

struct CtlOutcome {
  int status = -1;  ///< exit status, 128 + signal if killed, -1 if it did not end in time
  std::string out;
  std::string err;
};

class CtlProcess {
 public:
  struct Options {
    std::string busAddress;  ///< DBUS_SYSTEM_BUS_ADDRESS
    std::string input;       ///< standard input (a file: ends after it)
    std::string user;        ///< run as this user (and its primary group only); "" = as the test
    std::string program;     ///< "" = iothubctl ($IOTHUBCTL_BINARY)
    std::string directory;   ///< its working directory; "" = the test's
  };
  CtlProcess(const std::vector<std::string>& args, const Options& options);
  ~CtlProcess();  // SIGKILL if still running
  CtlProcess(const CtlProcess&) = delete;
  CtlProcess& operator=(const CtlProcess&) = delete;

  /// Waits until stderr (or stdout) contains `text`; false if the process ended or time ran out.
  bool waitForErr(const std::string& text,
                  std::chrono::milliseconds timeout = std::chrono::seconds(10));
  bool waitForOut(const std::string& text,
                  std::chrono::milliseconds timeout = std::chrono::seconds(10),
                  std::size_t occurrences = 1);
  /// Waits for the exit (reading all output); SIGKILLs it after `timeout`.
  CtlOutcome wait(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  void signal(int signo);
  [[nodiscard]] const std::string& out() const { return out_; }
  [[nodiscard]] const std::string& err() const { return err_; }

 private:
  /// Reads what is there, waiting at most `timeout`; false once both pipes are at EOF.
  bool pump(std::chrono::milliseconds timeout);

  pid_t pid_ = -1;
  int outFd_ = -1;
  int errFd_ = -1;
  std::string out_;
  std::string err_;
};

/// iothubctl ARGS... to its end.
CtlOutcome runCtl(const std::vector<std::string>& args, const CtlProcess::Options& options);

}  // namespace iothubd::testing
