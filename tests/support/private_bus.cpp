// SPDX-License-Identifier: MIT
#include "private_bus.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "temp_dir.hpp"

namespace iothubd::testing {
namespace {

/// The default policy of Debian's /usr/share/dbus-1/system.conf, with our policy included the
/// way /etc/dbus-1/system.d includes it on a real system.
std::string busConfig(const std::string& socketPath, const std::string& policyFile,
                      const std::vector<std::string>& extraPolicyFiles) {
  std::string includes = "  <include>" + policyFile + "</include>\n";
  for (const auto& extra : extraPolicyFiles) {
    includes += "  <include>" + extra + "</include>\n";
  }
  return R"(<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path=)" +
         socketPath + R"(</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
)" + includes +
         R"(</busconfig>
)";
}

}  // namespace

std::string policyFilePath() {
  const char* p = std::getenv("IOTHUBD_DBUS_POLICY");
  if (p == nullptr || *p == '\0') {
    throw std::runtime_error("IOTHUBD_DBUS_POLICY is not set (run the tests with meson test)");
  }
  return p;
}

PrivateBus::PrivateBus(const std::string& dir, const std::string& policyFile,
                       const std::vector<std::string>& extraPolicyFiles) {
  ::mkdir(dir.c_str(), 0755);
  ::chmod(dir.c_str(), 0755);
  std::string conf = dir + "/bus.conf";
  writeFile(conf, busConfig(dir + "/system_bus_socket", policyFile, extraPolicyFiles));
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe failed");
  }
  pid_ = ::fork();
  if (pid_ < 0) {
    throw std::runtime_error("fork failed");
  }
  if (pid_ == 0) {
    ::dup2(fds[1], 3);
    // Its chatter ("Failed to set fd limit" when not really root) goes to a log beside it.
    int log = ::open((dir + "/dbus-daemon.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (log >= 0) {
      ::dup2(log, 1);
      ::dup2(log, 2);
    }
    ::execlp("dbus-daemon", "dbus-daemon", ("--config-file=" + conf).c_str(), "--nofork",
             "--print-address=3", "--nopidfile", "--nosyslog", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  // dbus-daemon prints the address once its socket listens: that is the readiness signal.
  std::string out;
  pollfd pfd{fds[0], POLLIN, 0};
  while (out.find('\n') == std::string::npos) {
    if (::poll(&pfd, 1, 10000) <= 0) {
      break;
    }
    char buf[512];
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n <= 0) {
      break;
    }
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  auto nl = out.find('\n');
  if (nl == std::string::npos) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
    throw std::runtime_error("dbus-daemon did not start (config " + conf + ")");
  }
  address_ = out.substr(0, nl);
}

PrivateBus::~PrivateBus() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
}

}  // namespace iothubd::testing
