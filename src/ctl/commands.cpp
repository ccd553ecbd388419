// SPDX-License-Identifier: MIT
// The subcommands of iothubctl(1) that are one call, or a watch, on org.iothubd.Device1.
#include "commands.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <ctime>
#include <iostream>

#include "bus_client.hpp"
#include "check.hpp"
#include "exit_codes.hpp"
#include "format.hpp"
#include "iothubd/core/unique_fd.hpp"
#include "iothubd/loop/event_loop.hpp"

namespace iothubd::ctl {
namespace {

/// A message line longer than this is refused before it is sent (IoT Hub takes 256 KiB).
constexpr std::size_t kMaxLine = 1024 * 1024;
/// One SendMessages/QueueMessages call: at most this many messages (the daemon's limit) and
/// about this many bytes (far below the system bus's 32 MiB per message).
constexpr std::size_t kMaxBatch = 1000;
constexpr std::size_t kMaxBatchBytes = 4 * 1024 * 1024;

std::chrono::seconds hubTimeout(const Invocation& inv) {
  return inv.timeout.value_or(kHubCall);
}

std::uint64_t nowUnix() {
  return static_cast<std::uint64_t>(std::time(nullptr));
}

/// Reads standard input to its end, at most `max` bytes (more: nullopt).
std::optional<std::string> readStdin(std::size_t max) {
  std::string data;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    data.append(buf, static_cast<std::size_t>(n));
    if (data.size() > max) {
      return std::nullopt;
    }
  }
  return data;
}

/// True when standard input has bytes (or its end) ready now.
bool stdinReady() {
  pollfd p{STDIN_FILENO, POLLIN, 0};
  return ::poll(&p, 1, 0) > 0;
}

/// A loop that dispatches the bus and ends on SIGINT/SIGTERM (exit status 0), for the watches.
class WatchLoop {
 public:
  explicit WatchLoop(BusClient& bus) : bus_(bus) {
    auto loop = loop::EventLoop::create();
    if (!loop) {
      throw std::runtime_error(loop.error().message);
    }
    loop_ = std::move(*loop);
    if (auto r = loop_->attachBus(bus_.connection()); !r) {
      throw std::runtime_error(r.error().message);
    }
    auto signals = loop_->handleSignals({SIGINT, SIGTERM}, [this](int) { loop_->exit(0); });
    if (!signals) {
      throw std::runtime_error(signals.error().message);
    }
  }
  ~WatchLoop() { loop_->detachBus(); }
  WatchLoop(const WatchLoop&) = delete;
  WatchLoop& operator=(const WatchLoop&) = delete;

  loop::EventLoop& loop() { return *loop_; }
  int run() {
    auto code = loop_->run();
    return code ? *code : exitcode::kSoftware;
  }

 private:
  BusClient& bus_;
  std::unique_ptr<loop::EventLoop> loop_;
};

void noteIfNotRunning(BusClient& bus, std::ostream& err) {
  if (!bus.daemonRunning()) {
    err << "iothubctl: iothubd is not running; waiting for it\n" << std::flush;
  }
}

int printSent(std::ostream& out, const Invocation& inv, const std::vector<std::string>& ids) {
  for (const auto& id : ids) {
    if (inv.json) {
      out << R"({"messageId":)" << jsonString(id) << R"(,"queued":)"
          << (inv.send.queue ? "true" : "false") << "}\n";
    } else {
      out << (inv.send.queue ? "queued " : "sent ") << id << "\n";
    }
  }
  out << std::flush;
  return exitcode::kOk;
}

using BusMessage = sdbus::Struct<std::string, StringMap, StringMap>;

/// The daemon names a refused element of a batch "message N: ..."; the user knows lines.
std::string inLineTerms(const std::string& message, const std::vector<std::size_t>& lineOf) {
  constexpr std::string_view kPrefix = "message ";
  std::size_t index = 0;
  auto colon = message.find(": ");
  if (message.rfind(kPrefix, 0) != 0 || colon == std::string::npos ||
      std::from_chars(message.data() + kPrefix.size(), message.data() + colon, index).ec !=
          std::errc() ||
      index >= lineOf.size()) {
    return message;
  }
  return "line " + std::to_string(lineOf[index]) + message.substr(colon);
}

/// `send -`: every line of standard input is a message; the lines ready at once go in one
/// SendMessages/QueueMessages call, so a pipe that trickles sends each line promptly and a file
/// goes up in batches of up to 1000.
int sendLines(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err) {
  std::string pending;
  bool eof = false;
  std::size_t lineNumber = 0;
  char buf[65536];
  while (!eof || !pending.empty()) {
    std::vector<BusMessage> batch;
    std::vector<std::size_t> lineOf;  // the input line of each message in the batch
    std::size_t batchBytes = 0;
    // Wait for at least one line, then take what else is ready without waiting.
    bool wait = true;
    while (batch.size() < kMaxBatch && batchBytes < kMaxBatchBytes) {
      auto nl = pending.find('\n');
      if (nl == std::string::npos && eof && !pending.empty()) {
        nl = pending.size();  // a last line without a newline
      }
      if (nl != std::string::npos) {
        std::string line = pending.substr(0, nl);
        pending.erase(0, std::min(nl + 1, pending.size()));
        ++lineNumber;
        if (line.empty()) {
          continue;  // a blank line is no message
        }
        batchBytes += line.size();
        batch.emplace_back(std::move(line), inv.send.properties, inv.send.systemProperties);
        lineOf.push_back(lineNumber);
        wait = false;
        continue;
      }
      if (eof) {
        break;
      }
      if (pending.size() > kMaxLine) {
        err << "iothubctl: line " << lineNumber + 1 << " is longer than " << kMaxLine << " bytes\n";
        return exitcode::kDataError;
      }
      if (!wait && !stdinReady()) {
        break;
      }
      ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        eof = true;
        continue;
      }
      pending.append(buf, static_cast<std::size_t>(n));
    }
    if (batch.empty()) {
      continue;
    }
    std::vector<std::string> ids;
    try {
      ids = bus.withTimeout(hubTimeout(inv), [&](DeviceProxy& d) {
        return inv.send.queue ? d.QueueMessages(batch) : d.SendMessages(batch);
      });
    } catch (const sdbus::Error& e) {
      throw sdbus::Error(e.getName(), inLineTerms(e.getMessage(), lineOf));
    }
    printSent(out, inv, ids);
  }
  return exitcode::kOk;
}

}  // namespace

int status(BusClient& bus, const Invocation& inv, std::ostream& out) {
  // Asking a stopped service for its properties would start it (bus activation): ask the bus.
  if (!bus.daemonRunning()) {
    out << (inv.json ? R"({"Running":false})" : "iothubd is not running.") << "\n";
    return exitcode::kUnavailable;
  }
  DaemonStatus s;
  s.properties = bus.properties();
  s.pid = bus.pidOf(kBusName);
  if (s.pid) {
    s.uptime = uptimeOf(*s.pid);
  }
  out << (inv.json ? formatStatusJson(s) + "\n" : formatStatus(s, nowUnix()));
  auto connected = s.properties.find("Connected");
  bool isConnected = connected != s.properties.end() && std::get_if<bool>(&connected->second) &&
                     std::get<bool>(connected->second);
  return isConnected ? exitcode::kOk : exitcode::kNotConnected;
}

int send(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err) {
  const auto& a = inv.send;
  if (a.fromStdin() && !a.binary) {
    return sendLines(bus, inv, out, err);
  }
  std::string body = a.body;
  if (a.fromStdin()) {
    auto all = readStdin(kMaxLine);
    if (!all) {
      err << "iothubctl: standard input holds more than " << kMaxLine
          << " bytes, more than IoT Hub takes in one message\n";
      return exitcode::kDataError;
    }
    body = std::move(*all);
  }
  std::string id = bus.withTimeout(hubTimeout(inv), [&](DeviceProxy& d) {
    if (a.binary) {
      std::vector<uint8_t> bytes(body.begin(), body.end());
      return a.queue ? d.QueueBinaryMessage(bytes, a.properties, a.systemProperties)
                     : d.SendBinaryMessage(bytes, a.properties, a.systemProperties);
    }
    return a.queue ? d.QueueMessage(body, a.properties, a.systemProperties)
                   : d.SendMessage(body, a.properties, a.systemProperties);
  });
  return printSent(out, inv, {id});
}

int twinGet(BusClient& bus, const Invocation& inv, std::ostream& out) {
  std::string twin = bus.withTimeout(hubTimeout(inv), [](DeviceProxy& d) { return d.GetTwin(); });
  auto shown = inv.json ? compactJson(twin) : prettyJson(twin);
  out << (shown ? *shown : twin) << "\n";
  return exitcode::kOk;
}

int twinPatch(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err) {
  std::string patch = inv.patch;
  if (patch == "-") {
    auto all = readStdin(kMaxLine);
    if (!all) {
      err << "iothubctl: the patch on standard input is longer than " << kMaxLine << " bytes\n";
      return exitcode::kDataError;
    }
    patch = std::move(*all);
  }
  std::uint64_t version = bus.withTimeout(
      hubTimeout(inv), [&](DeviceProxy& d) { return d.PatchTwinReportedProperties(patch); });
  if (inv.json) {
    out << R"({"version":)" << version << "}\n";
  } else {
    out << "reported properties updated: version " << version << "\n";
  }
  return exitcode::kOk;
}

int twinWatch(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err) {
  WatchLoop watch(bus);
  std::uint64_t seen = 0;
  bus.device().onDesiredPatch = [&](const std::string& patch) {
    auto line = compactJson(patch);
    out << (line ? *line : patch) << "\n" << std::flush;
    if (inv.count && ++seen >= *inv.count) {
      watch.loop().exit(exitcode::kOk);
    }
  };
  noteIfNotRunning(bus, err);
  err << "iothubctl: watching desired-property patches; Ctrl-C stops\n" << std::flush;
  return watch.run();
}

int c2dWatch(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err) {
  WatchLoop watch(bus);
  std::uint64_t seen = 0;
  bus.device().onMessage = [&](const std::vector<uint8_t>& body, const StringMap& properties,
                               const StringMap& system) {
    out << formatCloudMessage(
               std::string_view(reinterpret_cast<const char*>(body.data()), body.size()),
               properties, system)
        << "\n"
        << std::flush;
    if (inv.count && ++seen >= *inv.count) {
      watch.loop().exit(exitcode::kOk);
    }
  };
  noteIfNotRunning(bus, err);
  err << "iothubctl: watching cloud-to-device messages; Ctrl-C stops\n" << std::flush;
  return watch.run();
}

int methodList(BusClient& bus, const Invocation& inv, std::ostream& out) {
  if (!bus.daemonRunning()) {
    out << (inv.json ? "[]" : "iothubd is not running: no method is claimed.") << "\n";
    return exitcode::kUnavailable;
  }
  auto handlers = bus.withTimeout(kQuickCall, [](DeviceProxy& d) { return d.MethodHandlers(); });
  std::vector<MethodClaim> claims;
  for (const auto& [method, owner] : handlers) {
    MethodClaim c{method, owner, bus.pidOf(owner), ""};
    if (c.pid) {
      c.command = commandLineOf(*c.pid);
    }
    claims.push_back(std::move(c));
  }
  out << (inv.json ? formatMethodClaimsJson(claims) + "\n" : formatMethodClaims(claims));
  return exitcode::kOk;
}

int upload(BusClient& bus, const Invocation& inv, std::ostream& out, std::ostream& err) {
  // Opened here, with the caller's rights: the kernel decides whether this user may read it,
  // and iothubd only ever sees the descriptor.
  core::UniqueFd file;
  std::string blob = inv.blobName;
  if (inv.uploadFile == "-") {
    if (::isatty(STDIN_FILENO) == 1) {
      err << "iothubctl: upload -: standard input is a terminal; pipe the data in\n";
      return exitcode::kUsage;
    }
    file.reset(::fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3));
  } else {
    file.reset(::open(inv.uploadFile.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
    if (blob.empty()) {
      auto slash = inv.uploadFile.find_last_of('/');
      blob = slash == std::string::npos ? inv.uploadFile : inv.uploadFile.substr(slash + 1);
    }
  }
  if (!file) {
    err << "iothubctl: cannot open " << inv.uploadFile << ": " << std::strerror(errno) << "\n";
    return exitcode::kNoInput;
  }
  struct stat st {};
  if (::fstat(file.get(), &st) != 0 || S_ISDIR(st.st_mode)) {
    err << "iothubctl: " << inv.uploadFile << " is a directory\n";
    return exitcode::kNoInput;
  }
  const std::uint64_t size = S_ISREG(st.st_mode) ? static_cast<std::uint64_t>(st.st_size) : 0;

  WatchLoop watch(bus);
  const bool terminal = ::isatty(STDERR_FILENO) == 1;
  bool drawn = false;
  bus.device().onProgress = [&](const std::string& name, std::uint64_t done, std::uint64_t total) {
    // The daemon names the blob as given, or as stored ("<device>/<name>").
    if (name != blob && !(name.size() > blob.size() && name.ends_with("/" + blob))) {
      return;
    }
    std::uint64_t whole = total != 0 ? total : size;
    if (terminal) {
      err << "\r" << progressBar(blob, done, whole) << "\x1b[K" << std::flush;
      drawn = true;
    } else {
      err << progressLine(blob, done, whole) << "\n" << std::flush;
    }
  };
  int code = exitcode::kOk;
  std::string correlationId;
  std::optional<sdbus::Error> failure;
  bus.connection().setMethodCallTimeout(inv.timeout.value_or(kUploadCall));
  auto pending = bus.device()
                     .raw()
                     .callMethodAsync("UploadFile")
                     .onInterface(kInterface)
                     .withTimeout(inv.timeout.value_or(kUploadCall))
                     .withArguments(blob, sdbus::UnixFd(file.get()))
                     .uponReplyInvoke([&](const sdbus::Error* e, const std::string& id) {
                       if (e != nullptr) {
                         failure = *e;
                       } else {
                         correlationId = id;
                       }
                       watch.loop().exit(exitcode::kOk);
                     });
  file.reset();  // sdbus::UnixFd sent a duplicate
  if (watch.run() != exitcode::kOk) {
    code = exitcode::kSoftware;
  }
  if (drawn) {
    err << "\n";
  }
  if (!failure && correlationId.empty()) {
    err << "iothubctl: interrupted; iothubd finishes the upload of " << blob << " on its own\n";
    return exitcode::kInterrupted;
  }
  if (failure) {
    throw *failure;
  }
  if (inv.json) {
    out << R"({"blobName":)" << jsonString(blob) << R"(,"correlationId":)"
        << jsonString(correlationId) << "}\n";
  } else {
    out << "uploaded " << blob << (size != 0 ? " (" + formatBytes(size) + ")" : "")
        << ", correlation id " << correlationId << "\n";
  }
  return code;
}

int check(const Invocation& inv, std::ostream& out) {
  CheckOptions options;
  options.configPath = inv.configPath;
  options.credentialsDirectory = inv.credentialsDirectory;
  if (inv.timeout) {
    options.timeout = *inv.timeout;
  }
  auto results = runChecks(options);
  out << (inv.json ? formatCheckReportJson(results) + "\n" : formatCheckReport(results));
  for (const auto& r : results) {
    if (r.level == Level::Error) {
      return exitcode::kFailed;
    }
  }
  return exitcode::kOk;
}

}  // namespace iothubd::ctl
