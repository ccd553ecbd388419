// SPDX-License-Identifier: MIT
// The documentation's promises, checked against a live daemon and the hub emulator: the README's
// iothubctl tour and busctl lines run verbatim, so do the example commands of the manual pages,
// and the Python example of examples/ claims a method, answers it and prints cloud-to-device
// messages.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>

#include "ctl_process.hpp"
#include "daemon_fixture.hpp"
#include "file_upload_fixture.hpp"

namespace iothubd::testing {
namespace {

std::string sourceFile(const std::string& relative) {
  return readFile(std::string(IOTHUBD_SOURCE_DIR) + "/" + relative);
}

/// The lines of README.md between `<!-- MARKER` and `<!-- end of MARKER -->`, without the code
/// fence; empty if there is no such block.
std::vector<std::string> readmeBlock(const std::string& marker) {
  const std::string readme = sourceFile("README.md");
  const auto start = readme.find("<!-- " + marker);
  const auto end = readme.find("<!-- end of " + marker + " -->");
  if (start == std::string::npos || end == std::string::npos) {
    return {};
  }
  const auto bodyStart = readme.find('\n', readme.find("```", start)) + 1;
  const auto fenceClose = readme.rfind("```", end);
  std::istringstream body(readme.substr(bodyStart, fenceClose - bodyStart));
  std::vector<std::string> lines;
  for (std::string line; std::getline(body, line);) {
    lines.push_back(line);
  }
  return lines;
}

/// The commands of a manual page between `.\" MARKER` and `.\" end of MARKER` (roff comments),
/// as a reader sees them: requests dropped, the escapes for '-', '\'', '"' and '\' undone.
std::vector<std::string> manBlock(const std::string& page, const std::string& marker) {
  std::istringstream in(sourceFile("man/" + page));
  std::vector<std::string> lines;
  bool inside = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(".\\\" ", 0) == 0) {
      std::string comment = std::regex_replace(line.substr(4), std::regex(R"(\\-)"), "-");
      if (comment.rfind(marker, 0) == 0) {
        inside = true;
      } else if (comment.rfind("end of " + marker, 0) == 0) {
        inside = false;
      }
      continue;
    }
    if (!inside || line.empty() || line[0] == '.') {
      continue;
    }
    for (auto [from, to] : {std::pair{R"(\-)", "-"}, {R"(\(aq)", "'"}, {R"(\(dq)", "\""}}) {
      for (auto at = line.find(from); at != std::string::npos; at = line.find(from, at + 1)) {
        line.replace(at, std::string(from).size(), to);
      }
    }
    for (auto at = line.find("\\e"); at != std::string::npos; at = line.find("\\e", at + 1)) {
      line.replace(at, 2, "\\");
    }
    lines.push_back(line);
  }
  EXPECT_FALSE(lines.empty()) << page << " has no " << marker << " block";
  return lines;
}

/// Runs `line` with sh as the operator would type it, with the test bus as the system bus and
/// the built iothubctl first in PATH.
CtlOutcome runLine(const std::string& line, const std::string& busAddress) {
  CtlProcess::Options o;
  o.busAddress = busAddress;
  o.program = "/bin/sh";
  return runCtl({"-c", line}, o);
}

/// PATH with the built iothubctl first, for as long as it lives.
class IothubctlOnPath {
 public:
  IothubctlOnPath() : saved_(std::getenv("PATH")) {
    const std::string binary = std::getenv("IOTHUBCTL_BINARY");
    ::setenv("PATH", (binary.substr(0, binary.rfind('/')) + ":" + saved_).c_str(), 1);
  }
  ~IothubctlOnPath() { ::setenv("PATH", saved_.c_str(), 1); }
  IothubctlOnPath(const IothubctlOnPath&) = delete;
  IothubctlOnPath& operator=(const IothubctlOnPath&) = delete;

 private:
  std::string saved_;
};

/// A line that needs something only the reader has: a request id, a token, a correlation id.
bool hasPlaceholder(const std::string& line) {
  static const std::regex kPlaceholder(R"(\b[A-Z][A-Z_]{4,}\b)");
  return std::regex_search(line, kPlaceholder);
}

class ReadmeTest : public DaemonTest {};

/// The README's busctl lines and every busctl example of org.iothubd.Device1(5) that needs no
/// placeholder and no file-upload endpoint.
TEST_F(ReadmeTest, BusctlLinesWorkVerbatim) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto lines = readmeBlock("busctl-examples");
  EXPECT_EQ(lines.size(), 2u);
  for (const auto& line : manBlock("org.iothubd.Device1.5", "busctl-examples")) {
    lines.push_back(line);
  }
  int ran = 0;
  for (const auto& line : lines) {
    if (line.rfind("busctl ", 0) != 0 || hasPlaceholder(line) ||
        line.find("UploadFileFromPath") != std::string::npos ||
        line.find("GetStorageInfoForBlob") != std::string::npos) {
      continue;
    }
    auto r = runLine(line, bus_->address());
    if (line.find("UnregisterMethodHandler") != std::string::npos) {
      // busctl's claim ended with busctl; the page says this answers InvalidArgs.
      EXPECT_NE(r.status, 0);
      EXPECT_NE(r.err.find("is not claimed by the caller"), std::string::npos) << r.err;
      continue;
    }
    EXPECT_EQ(r.status, 0) << line << "\n" << r.out << r.err;
    ++ran;
  }
  EXPECT_GE(ran, 12);
  auto telemetry = service.waitForTelemetry(
      [](const hubemu::Telemetry& t) { return t.payload == R"({"temperature":21.5})"; });
  ASSERT_TRUE(telemetry.has_value());
  EXPECT_EQ(telemetry->property("unit"), "C");
  EXPECT_TRUE(service.waitForTelemetry([](const auto& t) { return t.payload == R"({"seq":4})"; }));
}

/// iothubctl(1)'s examples that end by themselves (the watches, method serve, upload and check
/// are in the README's tour below).
TEST_F(ReadmeTest, IothubctlManPageExamplesWork) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  IothubctlOnPath path;
  int ran = 0;
  for (const auto& line : manBlock("iothubctl.1", "iothubctl-examples")) {
    if (line.rfind("iothubctl ", 0) != 0 || line.find(" watch") != std::string::npos ||
        line.find(" serve ") != std::string::npos || line.find(" upload ") != std::string::npos ||
        line.find(" check") != std::string::npos) {
      continue;
    }
    auto r = runLine(line, bus_->address());
    EXPECT_EQ(r.status, 0) << line << "\n" << r.out << r.err;
    ++ran;
  }
  EXPECT_GE(ran, 5);
  EXPECT_TRUE(
      service.waitForTelemetry([](const auto& t) { return t.payload == R"({"door":"open"})"; }));
}

TEST_F(ReadmeTest, PythonExampleAnswersAMethodAndPrintsCloudToDeviceMessages) {
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

/// The README's tour, every line verbatim as a newcomer types it in the shell `scripts/demo
/// --keep` opens: iothubctl first in PATH, the daemon's credentials, and /etc/iothubd showing
/// the daemon's configuration (scripts/lib/etc-overlay, as the demo does), here with the hub's
/// file-upload endpoint and Azurite so that `upload` goes through too. The lines that run until
/// Ctrl-C are started, given what they wait for from the hub's side, and stopped with SIGINT.
/// In the FileUploadTest suite, whose Azurite it shares.
TEST_F(FileUploadTest, ReadmeTourRunsVerbatim) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  IothubctlOnPath path;
  ::setenv("CREDENTIALS_DIRECTORY", credentialsDir_.c_str(), 1);
  const std::string tour = dir_.path() + "/tour";
  ASSERT_EQ(::mkdir(tour.c_str(), 0700), 0);
  auto start = [&](const std::string& line) {
    CtlProcess::Options o;
    o.busAddress = bus_->address();
    o.program = "/bin/bash";
    o.directory = tour;
    return std::make_unique<CtlProcess>(
        std::vector<std::string>{std::string(IOTHUBD_SOURCE_DIR) + "/scripts/lib/etc-overlay",
                                 dir_.path() + "/etc", configPath_,
                                 std::string(IOTHUBD_SOURCE_DIR) + "/dbus/org.iothubd.conf",
                                 "/bin/sh", "-c", line},
        o);
  };

  const auto lines = readmeBlock("iothubctl-tour");
  std::vector<std::unique_ptr<CtlProcess>> running;
  int ran = 0;
  for (const auto& line : lines) {
    ASSERT_EQ(line.rfind("iothubctl ", 0) == 0 || line.find("| iothubctl ") != std::string::npos ||
                  line.find("&& iothubctl ") != std::string::npos,
              true)
        << "the tour is iothubctl only: " << line;
    ++ran;
    if (line.find(" watch") != std::string::npos || line.find(" serve ") != std::string::npos) {
      // Until Ctrl-C: exec, so that the signal reaches iothubctl as a terminal's would.
      auto p = start("exec " + line);
      if (line.find("twin watch") != std::string::npos) {
        ASSERT_TRUE(p->waitForErr("watching desired-property patches")) << p->err();
        service.patchDesired(kDevice, R"({"mode":"eco"})");
        EXPECT_TRUE(p->waitForOut(R"({"mode":"eco","$version":2})")) << p->out() << p->err();
      } else if (line.find("c2d watch") != std::string::npos) {
        ASSERT_TRUE(p->waitForErr("watching cloud-to-device messages")) << p->err();
        service.sendC2d(kDevice, "hello");
        EXPECT_TRUE(p->waitForOut(R"({"body":"hello")")) << p->out() << p->err();
      } else if (line.find("method serve reboot") != std::string::npos) {
        ASSERT_TRUE(p->waitForErr("serving direct method reboot")) << p->err();
        auto answer = service.invokeMethod(kDevice, "reboot", "null", 10s);
        EXPECT_EQ(answer.status, 200);
        EXPECT_EQ(answer.payload, R"({"rebooting":true})");
      } else {
        ADD_FAILURE() << "the test does not know how to drive: " << line;
      }
      running.push_back(std::move(p));
      continue;
    }
    auto r = start(line)->wait();
    EXPECT_EQ(r.status, 0) << line << "\n" << r.out << r.err;
    if (line.find("method list") != std::string::npos) {
      EXPECT_NE(r.out.find("iothubctl method serve reboot"), std::string::npos) << r.out;
    } else if (line.find(" check") != std::string::npos) {
      EXPECT_NE(r.out.find(", 0 errors\n"), std::string::npos) << r.out;
      EXPECT_NE(r.out.find("/etc/iothubd/iothubd.conf loads"), std::string::npos) << r.out;
    }
  }
  ::unsetenv("CREDENTIALS_DIRECTORY");
  EXPECT_GE(ran, 12);
  for (auto& p : running) {  // Ctrl-C
    p->signal(SIGINT);
    EXPECT_EQ(p->wait().status, 0) << p->err();
  }
  for (const char* body : {R"({"temperature":21.5})", R"({"seq":2})", R"({"door":"open"})"}) {
    EXPECT_TRUE(service.waitForTelemetry([&](const auto& t) { return t.payload == body; })) << body;
  }
  EXPECT_NE(service.getTwin(kDevice).find(R"("firmware":"1.2.3")"), std::string::npos);
  const auto blob = files_->blob(std::string(kDevice) + "/greetings/hello.txt");
  EXPECT_TRUE(blob.exists);
  EXPECT_EQ(blob.sha256, sha256Hex("hello\n"));
}

}  // namespace iothubd::testing
