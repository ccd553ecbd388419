// SPDX-License-Identifier: MIT
// The README's promises, checked against a live daemon: its busctl lines work verbatim, and its
// Python example claims a method, answers it and prints cloud-to-device messages.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "daemon_fixture.hpp"

namespace iothubd::testing {
namespace {

std::string sourceFile(const std::string& relative) {
  return readFile(std::string(IOTHUBD_SOURCE_DIR) + "/" + relative);
}

/// The text between `<!-- begin -->` and `<!-- end of begin -->`, without the code fence.
std::string readmeBlock(const std::string& marker) {
  std::string readme = sourceFile("README.md");
  auto start = readme.find("<!-- " + marker);
  auto end = readme.find("<!-- end of " + marker + " -->");
  if (start == std::string::npos || end == std::string::npos) {
    return {};
  }
  auto fenceOpen = readme.find("```", start);
  auto bodyStart = readme.find('\n', fenceOpen) + 1;
  auto fenceClose = readme.rfind("```", end);
  return readme.substr(bodyStart, fenceClose - bodyStart);
}

/// Runs `command` through sh with the test bus as the system bus; returns exit status + output.
std::pair<int, std::string> run(const std::string& command, const std::string& busAddress) {
  std::string full = "DBUS_SYSTEM_BUS_ADDRESS='" + busAddress + "' " + command + " 2>&1";
  FILE* p = ::popen(full.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) {
    out.append(buf, n);
  }
  int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

class ReadmeTest : public DaemonTest {};

TEST_F(ReadmeTest, BusctlLinesWorkVerbatim) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  std::istringstream lines(readmeBlock("busctl-examples"));
  std::string line;
  int ran = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("busctl ", 0) != 0) {
      continue;
    }
    // Lines with placeholders need a request id or a token-configured device (README says so).
    if (line.find("REQUEST_ID") != std::string::npos || line.find("…") != std::string::npos ||
        line.find("# needs") != std::string::npos) {
      continue;
    }
    if (line.find("UnregisterMethodHandler") != std::string::npos) {
      // busctl's claim ended with busctl; the README says this answers InvalidArgs.
      auto [status, out] = run(line, bus_->address());
      EXPECT_NE(status, 0);
      EXPECT_NE(out.find("is not claimed by the caller"), std::string::npos) << out;
      continue;
    }
    auto [status, out] = run(line, bus_->address());
    EXPECT_EQ(status, 0) << line << "\n" << out;
    ++ran;
  }
  EXPECT_GE(ran, 8);
  auto telemetry = service.waitForTelemetry(
      [](const hubemu::Telemetry& t) { return t.payload == R"({"temperature":21.5})"; });
  ASSERT_TRUE(telemetry.has_value());
  EXPECT_EQ(telemetry->property("alert level"), "high");
}

TEST_F(ReadmeTest, PythonExampleAnswersAMethodAndPrintsCloudToDeviceMessages) {
  std::string example = sourceFile("examples/iothubd_app.py");
  ASSERT_EQ(readmeBlock("python-example"), example) << "README's copy of the example is stale";
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();

  int out[2];
  ASSERT_EQ(::pipe2(out, O_CLOEXEC), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(out[1], STDERR_FILENO);
    ::setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_->address().c_str(), 1);
    std::string script = std::string(IOTHUBD_SOURCE_DIR) + "/examples/iothubd_app.py";
    ::execl("/usr/bin/python3", "python3", script.c_str(), "--exit-after", "2",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(out[1]);
  std::string printed;
  auto readUntil = [&](const std::string& text) {
    pollfd p{out[0], POLLIN, 0};
    while (printed.find(text) == std::string::npos) {
      if (::poll(&p, 1, 10000) <= 0) {
        return false;
      }
      char buf[1024];
      ssize_t n = ::read(out[0], buf, sizeof buf);
      if (n <= 0) {
        return printed.find(text) != std::string::npos;
      }
      printed.append(buf, static_cast<size_t>(n));
    }
    return true;
  };
  ASSERT_TRUE(readUntil("ready\n")) << printed;
  auto result = service.invokeMethod(kDevice, "reboot", R"({"delay":0})", 10s);
  EXPECT_EQ(result.status, 200);
  EXPECT_EQ(result.payload, R"({"rebooting": true})");
  service.sendC2d(kDevice, "hello app", {{"$.mid", "m-1"}}, {{"colour", "red"}});
  EXPECT_TRUE(readUntil("message hello app")) << printed;
  int status = 0;
  ::waitpid(pid, &status, 0);
  // The rest of the output, up to EOF (the example has exited).
  for (char buf[1024];;) {
    ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n <= 0) {
      break;
    }
    printed.append(buf, static_cast<size_t>(n));
  }
  ::close(out[0]);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << printed;
  EXPECT_NE(printed.find("method reboot {\"delay\":0}"), std::string::npos) << printed;
  EXPECT_NE(printed.find("'colour': 'red'"), std::string::npos) << printed;
  EXPECT_NE(printed.find("'message-id': 'm-1'"), std::string::npos) << printed;
}

}  // namespace
}  // namespace iothubd::testing
