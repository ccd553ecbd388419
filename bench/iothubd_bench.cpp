// SPDX-License-Identifier: MIT
// scripts/bench (issue 8): iothubd against the limit of its own stack and against the official
// SDK, in one run on one machine. Starts the hub emulator, a private system bus with our policy,
// the daemon (as user iothubd) and the references, runs every scenario against each, repeats,
// and prints a table (median and min–max over the repetitions) with the target ratios, plus a
// JSON file of every figure.
//
//   iothubd-bench [--smoke] [--reps N] [--json FILE] [--readme FILE] [--no-node] [--no-callgrind]
//
// With --readme, the block between "<!-- bench-results -->" and "<!-- end of bench-results -->"
// in FILE (bench/README.md, the latest figures) is replaced by this run's tables.
//
// Needs root (the daemon runs as user iothubd). The programs it starts are those of its own build
// (bench_paths.hpp); each can be replaced through the environment: IOTHUBD_BINARY,
// IOTHUBD_DBUS_POLICY, IOTHUBD_EMULATOR_PLUGIN, IOTHUBD_BENCH_RAW_MQTT, IOTHUBD_BENCH_ECHO,
// IOTHUBD_BENCH_ECHO_POLICY, IOTHUBD_BENCH_NODE_DIR (bench/node with node_modules installed).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "bench_paths.hpp"
#include "bench_util.hpp"
#include "bus_client.hpp"
#include "daemon_process.hpp"
#include "hub_emulator.hpp"
#include "private_bus.hpp"
#include "temp_dir.hpp"

namespace iothubd::bench {
namespace {

using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::PrivateBus;
using testing::TempDir;
using testing::writeFile;

constexpr const char* kDevice = "dev1";      // iothubd's identity
constexpr const char* kRawDevice = "raw";    // the libmosquitto reference
constexpr const char* kNodeDevice = "node";  // the Node SDK reference
/// The window of the pipelined scenarios that the CPU, callgrind and rate targets compare.
constexpr std::size_t kWindow = 100;
constexpr std::size_t kPayloadRing = 1000;

// Scenario and subject names shared by the runs, the targets and the tables.
constexpr const char* kSequential = "SendMessage sequential";
constexpr const char* kW100 = "SendMessage pipelined W=100";
constexpr const char* kBatch100 = "SendMessages x100, 2 calls in flight";
constexpr const char* kQueueSequential = "QueueMessage sequential";
constexpr const char* kQueueW100 = "QueueMessage pipelined W=100";
constexpr const char* kDrain = "backlog drain after reconnect";
constexpr const char* kFsync = "fsync: 4 KiB appended + fdatasync";
constexpr const char* kFsyncInPlace = "fsync: 4 KiB overwritten + fdatasync";
constexpr const char* kIothubd = "iothubd";
constexpr const char* kEcho = "sdbus-c++ echo";
constexpr const char* kRaw = "raw libmosquitto";
constexpr const char* kNode = "Node SDK";
constexpr const char* kFileSystem = "outbox file system";

/// printf into a std::string.
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list again;
  va_copy(again, args);
  const int n = std::vsnprintf(nullptr, 0, fmt, args);
  va_end(args);
  std::string out(static_cast<std::size_t>(std::max(n, 0)) + 1, '\0');
  std::vsnprintf(out.data(), out.size(), fmt, again);
  va_end(again);
  out.resize(static_cast<std::size_t>(std::max(n, 0)));
  return out;
}

const BusTarget kDaemonTarget{"org.iothubd", "/org/iothubd/Device", "org.iothubd.Device1"};
const BusTarget kEchoTarget{"org.iothubd.BenchEcho", "/org/iothubd/BenchEcho",
                            "org.iothubd.BenchEcho1"};

std::string env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    throw std::runtime_error(std::string(name) +
                             " is empty: unset it to use the program of this build");
  }
  return v;
}

// --- options, counts --------------------------------------------------------------------------

struct Options {
  bool smoke = false;
  int reps = 3;
  std::string jsonPath = "bench-results.json";
  bool node = true;
  bool callgrind = true;
  /// Keep the callgrind profiles here (for callgrind_annotate) instead of the temporary dir.
  std::string profileDir;
  std::size_t callgrindMessages = 0;  ///< N, if not the default
  /// Where to write the README block (see the file comment); empty: nowhere.
  std::string readmePath;
};

/// Messages per scenario and repetition. The full run sizes each so that the daemon's CPU time
/// is several seconds of clock ticks (10 ms each) and the whole run fits the budget.
struct Counts {
  std::size_t sequential = 1000;
  std::size_t pipelined10 = 5000;
  std::size_t pipelined100 = 10000;
  std::size_t batch10 = 10000;
  std::size_t batch100 = 20000;
  std::size_t queued = 10000;
  std::size_t queuedSequential = 300;  ///< each waits for one fsync
  std::size_t fsyncSamples = 100;
  std::size_t backlog = 100000;
  std::size_t callgrind = 1000;  ///< N (and 2N) for the instruction counts
  int startups = 5;
  int backlogReps = 2;

  static Counts smoke() {
    Counts c;
    c.sequential = 50;
    c.pipelined10 = 200;
    c.pipelined100 = 400;
    c.batch10 = 200;
    c.batch100 = 400;
    c.queued = 400;
    c.queuedSequential = 20;
    c.fsyncSamples = 20;
    c.backlog = 2000;
    c.callgrind = 20;
    c.startups = 1;
    c.backlogReps = 1;
    return c;
  }
};

// --- statistics ---------------------------------------------------------------------------------

struct Stat {
  double median = std::nan("");
  double min = std::nan("");
  double max = std::nan("");
};

Stat summarize(std::vector<double> values) {
  std::erase_if(values, [](double v) { return !std::isfinite(v); });
  Stat s;
  if (values.empty()) {
    return s;
  }
  std::sort(values.begin(), values.end());
  s.min = values.front();
  s.max = values.back();
  const std::size_t n = values.size();
  s.median = n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
  return s;
}

/// One repetition of one scenario for one subject.
struct Sample {
  double rate = std::nan("");      ///< messages per second
  double p50Us = std::nan("");     ///< per call
  double p99Us = std::nan("");     ///< per call
  double cpuUs = std::nan("");     ///< the subject's own process, per message
  double busCpuUs = std::nan("");  ///< dbus-daemon, per message
  double clientUs = std::nan("");  ///< the benchmark's client thread, per message
};

struct Series {
  std::string scenario;
  std::string subject;
  std::size_t messages = 0;  ///< per repetition
  std::vector<Sample> samples;

  [[nodiscard]] Stat stat(double Sample::*field) const {
    std::vector<double> v;
    for (const auto& s : samples) {
      v.push_back(s.*field);
    }
    return summarize(v);
  }
};

/// A target: a ratio per repetition (paired, so both sides saw the same load), or a plain value.
struct Target {
  std::string name;
  std::string unit;  ///< "x" for ratios, "MB"
  bool atMost = true;
  double limit = 0;
  std::vector<double> values;
  std::string note;
};

struct Report {
  std::vector<Series> series;
  std::vector<Target> targets;
  std::map<std::string, Stat> figures;  ///< start-up, RSS, callgrind: name -> stat
  std::map<std::string, std::string> notes;

  Series& at(const std::string& scenario, const std::string& subject, std::size_t messages) {
    for (auto& s : series) {
      if (s.scenario == scenario && s.subject == subject) {
        return s;
      }
    }
    series.push_back(Series{scenario, subject, messages, {}});
    return series.back();
  }
  [[nodiscard]] const Series* find(const std::string& scenario, const std::string& subject) const {
    for (const auto& s : series) {
      if (s.scenario == scenario && s.subject == subject) {
        return &s;
      }
    }
    return nullptr;
  }
};

// --- child processes -----------------------------------------------------------------------------

struct Captured {
  int status = -1;
  std::string out;
};

/// Starts `argv` (searched on PATH) with `extraEnv` added and its stdout into a pipe; returns
/// its pid and the pipe's reading end (stderr passes through).
std::pair<pid_t, int> spawn(const std::vector<std::string>& argv,
                            const std::map<std::string, std::string>& extraEnv) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    throw std::runtime_error("pipe failed");
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    for (const auto& [k, v] : extraEnv) {
      ::setenv(k.c_str(), v.c_str(), 1);
    }
    std::vector<char*> args;
    for (const auto& a : argv) {
      args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    std::perror(args[0]);
    ::_exit(127);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

/// Runs `argv` to completion with stdout captured (stderr passes through).
Captured runCapture(const std::vector<std::string>& argv,
                    const std::map<std::string, std::string>& extraEnv = {}) {
  auto [pid, out] = spawn(argv, extraEnv);
  Captured c;
  char buf[4096];
  for (ssize_t n; (n = ::read(out, buf, sizeof buf)) > 0;) {
    c.out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(out);
  int status = 0;
  ::waitpid(pid, &status, 0);
  c.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return c;
}

/// A long-running helper (the echo service): started, awaited ("ready" on stdout), stopped
/// with SIGTERM.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::map<std::string, std::string>& extraEnv,
        double readyTimeout) {
    int fd = -1;
    std::tie(pid_, fd) = spawn(argv, extraEnv);
    std::string out;
    pollfd p{fd, POLLIN, 0};
    const double deadline = nowSeconds() + readyTimeout;
    while (out.find("ready\n") == std::string::npos && nowSeconds() < deadline) {
      if (::poll(&p, 1, 100) <= 0) {
        continue;
      }
      char buf[256];
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n <= 0) {
        break;
      }
      out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(fd);
    if (out.find("ready\n") == std::string::npos) {
      stop(5);
      throw std::runtime_error(argv.back() + " did not become ready");
    }
  }
  ~Child() { stop(5); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  [[nodiscard]] pid_t pid() const { return pid_; }

  /// SIGTERM, then SIGKILL after `timeout` seconds; the exit status.
  int stop(double timeout) {
    if (pid_ <= 0) {
      return -1;
    }
    ::kill(pid_, SIGTERM);
    int status = 0;
    const double deadline = nowSeconds() + timeout;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (nowSeconds() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      ::usleep(10000);
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
};

/// Instructions (Ir) in a callgrind profile: its "totals:" (or "summary:") line.
double callgrindInstructions(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  double total = std::nan("");
  while (std::getline(in, line)) {
    if (line.rfind("totals:", 0) == 0 || (line.rfind("summary:", 0) == 0 && std::isnan(total))) {
      total = std::strtod(line.c_str() + line.find(':') + 1, nullptr);
    }
  }
  if (std::isnan(total)) {
    throw std::runtime_error("no instruction count in " + path);
  }
  return total;
}

/// The absolute path of `name` found on PATH (execv does not search it).
std::string onPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/bin:/bin";
  for (std::size_t start = 0; start <= dirs.size();) {
    std::size_t end = dirs.find(':', start);
    if (end == std::string::npos) {
      end = dirs.size();
    }
    std::string candidate = dirs.substr(start, end - start) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    start = end + 1;
  }
  throw std::runtime_error(name + " is not installed (scripts/bench installs it)");
}

std::vector<std::string> callgrindCommand(const std::string& outFile) {
  return {onPath("valgrind"), "--tool=callgrind",      "--callgrind-out-file=" + outFile,
          "--dump-instr=no",  "--compress-strings=no", "-q"};
}

// --- the rig
// --------------------------------------------------------------------------------------

class Bench {
 public:
  explicit Bench(Options options)
      : options_(std::move(options)),
        counts_(options_.smoke ? Counts::smoke() : Counts()),
        hub_(hubOptions()) {
    daemonBinary_ = env("IOTHUBD_BINARY");
    rawMqtt_ = env("IOTHUBD_BENCH_RAW_MQTT");
    echo_ = env("IOTHUBD_BENCH_ECHO");
    echoPolicy_ = env("IOTHUBD_BENCH_ECHO_POLICY");
    nodeDir_ = std::getenv("IOTHUBD_BENCH_NODE_DIR") ? std::getenv("IOTHUBD_BENCH_NODE_DIR") : "";
    for (std::size_t i = 0; i < kPayloadRing; ++i) {
      bodies_.push_back(payload(i));
    }
  }

  int run() {
    machine();
    std::printf(
        "iothubd benchmark (%s): %d repetition%s, 200-byte JSON bodies, QoS 1, TLS on "
        "loopback\n",
        options_.smoke ? "smoke" : "full", options_.reps, options_.reps == 1 ? "" : "s");
    setUp();
    startup();
    mainPhase();
    if (options_.node) {
      nodePhase();
    }
    if (options_.callgrind) {
      callgrindPhase();
    }
    machineEnd();
    computeTargets();
    if (!options_.readmePath.empty()) {
      writeReadme();
    }
    print();
    writeJson();
    return 0;
  }

 private:
  static hubemu::HubEmulator::Options hubOptions() {
    hubemu::HubEmulator::Options o;
    o.logEveryPacket = false;
    return o;
  }

  void log(const std::string& what) {
    std::printf("  [%6.1f s] %s\n", nowSeconds() - started_, what.c_str());
    std::fflush(stdout);
  }

  void machine() {
    std::ifstream cpuinfo("/proc/cpuinfo");
    for (std::string line; std::getline(cpuinfo, line);) {
      if (line.rfind("model name", 0) == 0) {
        cpuModel_ = line.substr(line.find(':') + 2);
        break;
      }
    }
    cpus_ = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
    loadStart_ = loadAverage();
    utsname u{};
    ::uname(&u);
    kernel_ = std::string(u.sysname) + " " + u.release;
  }
  void machineEnd() { loadEnd_ = loadAverage(); }
  static std::string loadAverage() {
    std::ifstream in("/proc/loadavg");
    std::string one, five, fifteen;
    in >> one >> five >> fifteen;
    return one + " " + five + " " + fifteen;
  }

  void setUp() {
    deviceKey_ = hub_.addDevice(kDevice);
    rawKey_ = hub_.addDevice(kRawDevice);
    nodeKey_ = hub_.addDevice(kNodeDevice);
    hub_.start();
    bus_ = std::make_unique<PrivateBus>(root_ / "bus", testing::policyFilePath(),
                                        std::vector<std::string>{echoPolicy_});
    client_ = std::make_unique<BusClient>(bus_->address());

    // The daemon's own directory, as systemd's StateDirectory/credentials would give it.
    auto user = testing::serviceUser();
    daemonDir_ = root_ / "daemon";
    ::mkdir(daemonDir_.c_str(), 0700);
    credentials_ = daemonDir_ + "/credentials";
    ::mkdir(credentials_.c_str(), 0700);
    if (::chown(daemonDir_.c_str(), user.uid, user.gid) != 0 ||
        ::chown(credentials_.c_str(), user.uid, user.gid) != 0) {
      throw std::runtime_error("cannot chown " + daemonDir_);
    }
    writeFile(daemonDir_ + "/ca.pem", testing::readFile(hub_.caFile()), 0644);
    writeFile(credentials_ + "/connection-string",
              "HostName=" + hub_.hubHost() + ";DeviceId=" + kDevice +
                  ";SharedAccessKey=" + deviceKey_ + "\n",
              0600, static_cast<int>(user.uid), static_cast<int>(user.gid));
    log("emulator on port " + std::to_string(hub_.port()) + ", private bus up");
  }

  /// Writes the configuration for the next launch: its own outbox file, `port` as the hub.
  std::string writeConfig(const std::string& name, int port) {
    std::string path = daemonDir_ + "/" + name + ".conf";
    writeFile(path,
              "[hub]\nauthentication = connection-string\nport = " + std::to_string(port) +
                  "\n[connection]\nserver_verification_cert = " + daemonDir_ +
                  "/ca.pem\nconnection_retry_interval = 1\n"
                  "[outbox]\noutbox_path = " +
                  daemonDir_ + "/" + name +
                  ".db\noutbox_max_messages = 1000000\n"
                  "outbox_max_bytes = 1073741824\nmax_inflight = " +
                  std::to_string(kWindow) + "\n[daemon]\nlog_level = info\n",
              0644);
    return path;
  }

  std::unique_ptr<DaemonProcess> launch(const std::string& config,
                                        std::vector<std::string> wrapper = {}) {
    DaemonOptions o;
    o.binary = daemonBinary_;
    o.configPath = config;
    o.busAddress = bus_->address();
    o.credentialsDirectory = credentials_;
    o.wrapper = std::move(wrapper);
    const std::string dir = root_ / ("run-" + std::to_string(++launches_));
    ::mkdir(dir.c_str(), 0755);
    auto d = std::make_unique<DaemonProcess>(dir, o);
    d->start();
    return d;
  }

  [[nodiscard]] std::string connectedStatus() const {
    return "connected to " + hub_.hubHost() + " as " + kDevice;
  }

  void stopDaemon(std::unique_ptr<DaemonProcess>& d, std::chrono::seconds timeout) {
    auto status = d->stop(timeout);
    if (status != 0) {
      d->printLogIf(true);
      throw std::runtime_error("iothubd did not exit cleanly (status " +
                               (status ? std::to_string(*status) : std::string("timeout")) + ")");
    }
    d.reset();
  }

  // --- start-up
  // -----------------------------------------------------------------------------------

  void startup() {
    log("start-up: exec -> READY=1 without a reachable hub, exec -> Connected");
    const int closedPort = hubemu::freeLoopbackPort();
    const std::string offline = writeConfig("startup-offline", closedPort);
    const std::string online = writeConfig("startup-online", hub_.port());
    std::vector<double> ready, connected;
    for (int i = 0; i < counts_.startups; ++i) {
      double t0 = nowSeconds();
      auto d = launch(offline);
      if (!d->waitReady(std::chrono::seconds(30))) {
        d->printLogIf(true);
        throw std::runtime_error("iothubd did not report READY=1");
      }
      ready.push_back((nowSeconds() - t0) * 1e3);
      stopDaemon(d, std::chrono::seconds(10));

      t0 = nowSeconds();
      d = launch(online);
      if (!d->waitReady(std::chrono::seconds(30)) ||
          !d->waitStatus(connectedStatus(), std::chrono::seconds(30))) {
        d->printLogIf(true);
        throw std::runtime_error("iothubd did not connect");
      }
      connected.push_back((nowSeconds() - t0) * 1e3);
      stopDaemon(d, std::chrono::seconds(10));
    }
    report_.figures["startup_ready_ms"] = summarize(ready);
    report_.figures["startup_connected_ms"] = summarize(connected);
  }

  // --- the scenarios
  // ------------------------------------------------------------------------------

  /// `messages` messages through `member` of `target`, `perCall` per call, `window` calls in
  /// flight; CPU of `server` and of the bus per message.
  Sample calls(const BusTarget& target, const char* member, std::size_t messages,
               std::size_t window, std::size_t perCall, pid_t server) {
    const std::size_t count = messages / perCall;
    BusClient::Build build;
    std::vector<const std::string*> batch(perCall);
    if (perCall == 1 && std::strcmp(member, "SendMessages") != 0 &&
        std::strcmp(member, "QueueMessages") != 0) {
      build = [this](sd_bus_message* m, std::size_t i) {
        return appendMessage(m, bodies_[(next_ + i) % kPayloadRing]);
      };
    } else {
      build = [this, perCall, &batch](sd_bus_message* m, std::size_t i) {
        for (std::size_t j = 0; j < perCall; ++j) {
          batch[j] = &bodies_[(next_ + i * perCall + j) % kPayloadRing];
        }
        return appendBatch(m, batch);
      };
    }
    // Every thread of the server (iothubd's commit worker lives as long as the daemon), to the
    // nanosecond; dbus-daemon is single-threaded.
    const auto serverTime = [server] { return tasksCpuMicros(server); };
    const double serverCpu = serverTime();
    const double busCpu = threadCpuMicros(bus_->pid());
    CallStats stats = client_->run(target, member, count, window, build);
    const double serverCpuAfter = serverTime();
    const double busCpuAfter = threadCpuMicros(bus_->pid());
    next_ += messages;
    if (stats.errors > 0) {
      throw std::runtime_error(std::string(member) + ": " + std::to_string(stats.errors) +
                               " calls failed, the first with " + stats.firstError);
    }
    const auto n = static_cast<double>(count * perCall);
    Sample s;
    s.rate = n / stats.seconds;
    s.p50Us = quantile(stats.latencyUs, 0.5);
    s.p99Us = quantile(stats.latencyUs, 0.99);
    s.cpuUs = (serverCpuAfter - serverCpu) / n;
    s.busCpuUs = (busCpuAfter - busCpu) / n;
    s.clientUs = stats.clientCpuUs / n;
    return s;
  }

  Sample rawMqtt(std::size_t messages, std::size_t window,
                 const std::vector<std::string>& wrapper = {}) {
    std::vector<std::string> argv = wrapper;
    for (const std::string& a :
         {rawMqtt_, std::string("--port"), std::to_string(hub_.port()), std::string("--ca"),
          hub_.caFile(), std::string("--device"), std::string(kRawDevice), std::string("--key"),
          rawKey_, std::string("--count"), std::to_string(messages), std::string("--window"),
          std::to_string(window)}) {
      argv.push_back(a);
    }
    auto c = runCapture(argv);
    if (c.status != 0) {
      throw std::runtime_error("bench-raw-mqtt failed (status " + std::to_string(c.status) + ")");
    }
    Sample s;
    s.rate = jsonNumber(c.out, "rate");
    s.p50Us = jsonNumber(c.out, "p50_us");
    s.p99Us = jsonNumber(c.out, "p99_us");
    s.cpuUs = jsonNumber(c.out, "cpu_us_per_msg");
    return s;
  }

  std::unique_ptr<Child> startEcho(const std::vector<std::string>& wrapper = {},
                                   double readyTimeout = 10) {
    std::vector<std::string> argv = wrapper;
    argv.push_back(echo_);
    return std::make_unique<Child>(
        argv, std::map<std::string, std::string>{{"DBUS_SYSTEM_BUS_ADDRESS", bus_->address()}},
        readyTimeout);
  }

  void mainPhase() {
    auto echo = startEcho();
    auto daemon = launch(writeConfig("main", hub_.port()));
    if (!daemon->waitReady(std::chrono::seconds(30)) ||
        !daemon->waitStatus(connectedStatus(), std::chrono::seconds(30))) {
      daemon->printLogIf(true);
      throw std::runtime_error("iothubd did not connect");
    }
    const pid_t pid = daemon->pid();
    // Idle and connected: the subscriptions and the twin fetch that follow CONNACK are done well
    // within a second.
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const long rssIdle = residentKib(pid);
    log("iothubd connected, RSS " + std::to_string(rssIdle) + " KiB");
    const RssParts partsIdle = rssComposition(pid, "RSS idle, connected");

    const auto& c = counts_;
    for (int rep = 1; rep <= options_.reps; ++rep) {
      log("repetition " + std::to_string(rep) + "/" + std::to_string(options_.reps));
      struct Pipelined {
        const char* scenario;
        std::size_t messages;
        std::size_t window;
      };
      for (const Pipelined& p :
           {Pipelined{"SendMessage sequential", c.sequential, 1},
            Pipelined{"SendMessage pipelined W=10", c.pipelined10, 10},
            Pipelined{"SendMessage pipelined W=100", c.pipelined100, kWindow}}) {
        add(p.scenario, "iothubd", p.messages,
            calls(kDaemonTarget, "SendMessage", p.messages, p.window, 1, pid));
        add(p.scenario, "sdbus-c++ echo", p.messages,
            calls(kEchoTarget, "SendMessage", p.messages, p.window, 1, echo->pid()));
        add(p.scenario, "raw libmosquitto", p.messages, rawMqtt(p.messages, p.window));
      }
      // Batches: enough calls in flight to keep about 100 messages outstanding.
      add("SendMessages x10, 10 calls in flight", "iothubd", c.batch10,
          calls(kDaemonTarget, "SendMessages", c.batch10, 10, 10, pid));
      add("SendMessages x10, 10 calls in flight", "sdbus-c++ echo", c.batch10,
          calls(kEchoTarget, "SendMessages", c.batch10, 10, 10, echo->pid()));
      add("SendMessages x100, 2 calls in flight", "iothubd", c.batch100,
          calls(kDaemonTarget, "SendMessages", c.batch100, 2, 100, pid));
      add("SendMessages x100, 2 calls in flight", "sdbus-c++ echo", c.batch100,
          calls(kEchoTarget, "SendMessages", c.batch100, 2, 100, echo->pid()));
      // The floor of a durable message: what the outbox's file system takes to make one commit
      // durable, measured in the outbox's own directory just before the QueueMessage calls that
      // each wait for one. A WAL grows with each commit until a checkpoint lets it start over,
      // so its commits extend the file (the target's floor) or, recycled, overwrite in place.
      for (const bool append : {true, false}) {
        auto latencies = fsyncLatenciesUs(daemonDir_, c.fsyncSamples, append);
        Sample f;
        f.p50Us = quantile(latencies, 0.5);
        f.p99Us = quantile(latencies, 0.99);
        add(append ? kFsync : kFsyncInPlace, kFileSystem, c.fsyncSamples, f);
      }
      add(kQueueSequential, kIothubd, c.queuedSequential,
          calls(kDaemonTarget, "QueueMessage", c.queuedSequential, 1, 1, pid));
      add(kQueueW100, kIothubd, c.queued,
          calls(kDaemonTarget, "QueueMessage", c.queued, kWindow, 1, pid));
      waitDrained(std::chrono::seconds(60));
    }
    // Growth from the traffic itself (the target), before any backlog: a backlog is held in the
    // outbox's index while it lasts, and what the allocator keeps of it afterwards is shown apart.
    const long rssAfter = residentKib(pid);
    const std::uint64_t delivered = client_->propertyU64(kDaemonTarget, "MessagesDelivered");
    const RssParts partsAfter = rssComposition(pid, "RSS after the traffic");
    report_.notes["RSS growth"] = format(
        "%+.2f MB shared libraries (code first used by the traffic), %+.2f MB iothubd's own "
        "code, %+.2f MB heap and other anonymous memory, %+.2f MB mapped data files",
        static_cast<double>(partsAfter.libraries - partsIdle.libraries) / 1024,
        static_cast<double>(partsAfter.ownCode - partsIdle.ownCode) / 1024,
        static_cast<double>(partsAfter.anonymous - partsIdle.anonymous) / 1024,
        static_cast<double>(partsAfter.files - partsIdle.files) / 1024);
    log("RSS after " + std::to_string(delivered) + " messages: " + std::to_string(rssAfter) +
        " KiB");
    for (int rep = 1; rep <= counts_.backlogReps; ++rep) {
      backlog(rep, pid);
    }
    const long rssBacklog = residentKib(pid);
    log("RSS after the backlog runs: " + std::to_string(rssBacklog) + " KiB");
    const auto one = [](double v) { return Stat{v, v, v}; };
    report_.figures["rss_idle_kib"] = one(double(rssIdle));
    report_.figures["rss_after_kib"] = one(double(rssAfter));
    report_.figures["messages_before_rss_after"] = one(double(delivered));
    report_.figures["rss_after_backlog_kib"] = one(double(rssBacklog));
    stopDaemon(daemon, std::chrono::seconds(30));
    if (int status = echo->stop(10); status != 0) {
      throw std::runtime_error("the echo service exited with " + std::to_string(status));
    }
  }

  /// What the daemon's resident memory is made of: the shared libraries it cannot run without
  /// (the floor of the RSS target), its own code, and its heap and other anonymous memory, in
  /// KiB; noted under `label`.
  struct RssParts {
    long libraries = 0;
    long ownCode = 0;
    long anonymous = 0;
    long files = 0;
  };
  RssParts rssComposition(pid_t pid, const std::string& label) {
    const std::string exe = daemonBinary_.substr(daemonBinary_.rfind('/') + 1);
    long binary = 0;
    long anonymous = 0;
    long libraries = 0;
    long files = 0;  // mapped data files: SQLite's WAL index (-shm)
    long heap = 0;
    long otherAnonymous = 0;  // the commit worker's malloc arena, stacks
    std::vector<std::pair<long, std::string>> libs;
    for (const auto& [name, kib] : residentByMapping(pid)) {
      if (name == exe) {
        binary += kib;
      } else if (name == "[anonymous]" || name == "[heap]") {
        anonymous += kib;
        (name == "[heap]" ? heap : otherAnonymous) += kib;
      } else if (name.find(".so") != std::string::npos) {
        libraries += kib;
        libs.emplace_back(kib, name);
      } else {
        files += kib;
      }
    }
    std::sort(libs.rbegin(), libs.rend());
    std::string largest;
    for (std::size_t i = 0; i < libs.size() && i < 6; ++i) {
      largest += format("%s%s %.1f", i == 0 ? "" : ", ", libs[i].second.c_str(),
                        static_cast<double>(libs[i].first) / 1024);
    }
    const auto mb = [](long kib) { return static_cast<double>(kib) / 1024; };
    report_.notes[label] = format(
        "%.1f MB shared libraries (%zu; %s ...), %.1f MB iothubd's own code, %.1f MB heap and "
        "other anonymous memory (heap %.1f, threads' arenas and stacks %.1f), %.1f MB mapped data "
        "files",
        mb(libraries), libs.size(), largest.c_str(), mb(binary), mb(anonymous), mb(heap),
        mb(otherAnonymous), mb(files));
    return {libraries, binary, anonymous, files};
  }

  void add(const std::string& scenario, const std::string& subject, std::size_t messages,
           const Sample& s) {
    report_.at(scenario, subject, messages).samples.push_back(s);
  }

  bool waitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout,
               std::chrono::milliseconds interval) {
    const double deadline = nowSeconds() + std::chrono::duration<double>(timeout).count();
    while (!done()) {
      if (nowSeconds() > deadline) {
        return false;
      }
      std::this_thread::sleep_for(interval);
    }
    return true;
  }

  void waitDrained(std::chrono::seconds timeout) {
    if (!waitFor([&] { return client_->propertyU64(kDaemonTarget, "OutboxLength") == 0; }, timeout,
                 std::chrono::milliseconds(10))) {
      throw std::runtime_error("the outbox did not drain");
    }
  }

  /// Queue a backlog with the hub stopped, restart the hub (same port) and time the drain from
  /// the moment the daemon is connected again until the outbox is empty.
  void backlog(int rep, pid_t pid) {
    const std::size_t n = counts_.backlog;
    log("backlog " + std::to_string(rep) + ": queueing " + std::to_string(n) +
        " messages with the hub stopped");
    hub_.stop();
    if (!waitFor([&] { return !client_->propertyBool(kDaemonTarget, "Connected"); },
                 std::chrono::seconds(30), std::chrono::milliseconds(10))) {
      throw std::runtime_error("iothubd did not notice the hub going away");
    }
    add("QueueMessages x1000 into a stopped hub", "iothubd", n,
        calls(kDaemonTarget, "QueueMessages", n, 4, std::min<std::size_t>(1000, n), pid));
    if (auto length = client_->propertyU64(kDaemonTarget, "OutboxLength"); length != n) {
      throw std::runtime_error("the outbox holds " + std::to_string(length) + " messages, not " +
                               std::to_string(n));
    }
    const double cpu0 = tasksCpuMicros(pid);
    const double bus0 = threadCpuMicros(bus_->pid());
    hub_.restart();
    if (!waitFor([&] { return client_->propertyBool(kDaemonTarget, "Connected"); },
                 std::chrono::seconds(30), std::chrono::milliseconds(2))) {
      throw std::runtime_error("iothubd did not reconnect");
    }
    const double t0 = nowSeconds();
    waitDrained(std::chrono::seconds(600));
    const double seconds = nowSeconds() - t0;
    Sample s;
    s.rate = static_cast<double>(n) / seconds;
    s.cpuUs = (tasksCpuMicros(pid) - cpu0) / static_cast<double>(n);
    s.busCpuUs = (threadCpuMicros(bus_->pid()) - bus0) / static_cast<double>(n);
    add("backlog drain after reconnect", "iothubd", n, s);
    log("drained in " + std::to_string(seconds) + " s");
  }

  // --- Node SDK
  // -----------------------------------------------------------------------------------

  void nodePhase() {
    if (nodeDir_.empty() ||
        ::access((nodeDir_ + "/node_modules/azure-iot-device").c_str(), F_OK) != 0) {
      report_.notes["node"] =
          "skipped: bench/node/node_modules is missing (scripts/bench runs npm ci)";
      log("Node SDK " + report_.notes["node"]);
      return;
    }
    const auto& c = counts_;
    const std::string cs = "HostName=" + hub_.hubHost() + ";DeviceId=" + kNodeDevice +
                           ";SharedAccessKey=" + nodeKey_ +
                           ";GatewayHostName=localhost:" + std::to_string(hub_.port());
    std::vector<double> rssIdle, rssAfter;
    for (int rep = 1; rep <= options_.reps; ++rep) {
      log("Node SDK, repetition " + std::to_string(rep));
      auto out = runCapture({"node", nodeDir_ + "/bench.js", cs, hub_.caFile(),
                             std::to_string(c.sequential), std::to_string(c.pipelined10),
                             std::to_string(c.pipelined100)});
      if (out.status != 0) {
        throw std::runtime_error("the Node SDK benchmark failed (status " +
                                 std::to_string(out.status) + ")");
      }
      struct Run {
        const char* scenario;
        const char* prefix;
        std::size_t messages;
      };
      for (const Run& r : {Run{"SendMessage sequential", "w1_", c.sequential},
                           Run{"SendMessage pipelined W=10", "w10_", c.pipelined10},
                           Run{"SendMessage pipelined W=100", "w100_", c.pipelined100}}) {
        const std::string p = r.prefix;
        Sample s;
        s.rate = jsonNumber(out.out, p + "rate");
        s.p50Us = jsonNumber(out.out, p + "p50_us");
        s.p99Us = jsonNumber(out.out, p + "p99_us");
        s.cpuUs = jsonNumber(out.out, p + "cpu_us_per_msg");
        add(r.scenario, "Node SDK", r.messages, s);
      }
      rssIdle.push_back(jsonNumber(out.out, "rss_idle_kib"));
      rssAfter.push_back(jsonNumber(out.out, "rss_after_kib"));
      report_.figures["node_messages_per_run"] =
          Stat{jsonNumber(out.out, "messages"), jsonNumber(out.out, "messages"),
               jsonNumber(out.out, "messages")};
    }
    report_.figures["node_rss_idle_kib"] = summarize(rssIdle);
    report_.figures["node_rss_after_kib"] = summarize(rssAfter);
  }

  // --- callgrind
  // ----------------------------------------------------------------------------------

  /// Instructions per message: each subject runs under callgrind for N and for 2N messages
  /// (pipelined, W=100); the difference over N leaves out start-up, connect and shutdown.
  void callgrindPhase() {
    const std::size_t n =
        options_.callgrindMessages > 0 ? options_.callgrindMessages : counts_.callgrind;
    counts_.callgrind = n;
    // The daemon runs as its service user and writes its own profile: a directory it owns.
    const std::string dir = options_.profileDir.empty() ? root_ / "callgrind" : options_.profileDir;
    ::mkdir(dir.c_str(), 0755);
    if (auto user = testing::serviceUser(); ::chown(dir.c_str(), user.uid, user.gid) != 0) {
      throw std::runtime_error("cannot chown " + dir);
    }
    std::map<std::string, std::vector<double>> totals;
    for (std::size_t messages : {n, 2 * n}) {
      log("callgrind, " + std::to_string(messages) + " messages each");
      const std::string suffix = std::to_string(messages);
      // The daemon, started by the harness under valgrind (its user must write the profile).
      {
        const std::string out = dir + "/callgrind.daemon." + suffix;
        auto d = launch(writeConfig("callgrind-" + suffix, hub_.port()), callgrindCommand(out));
        if (!d->waitReady(std::chrono::seconds(120)) ||
            !d->waitStatus(connectedStatus(), std::chrono::seconds(120))) {
          d->printLogIf(true);
          throw std::runtime_error("iothubd under callgrind did not connect");
        }
        (void)calls(kDaemonTarget, "SendMessage", messages, kWindow, 1, d->pid());
        stopDaemon(d, std::chrono::seconds(120));
        totals["iothubd"].push_back(callgrindInstructions(out));
      }
      {
        const std::string out = dir + "/callgrind.echo." + suffix;
        auto echo = startEcho(callgrindCommand(out), 120);
        (void)calls(kEchoTarget, "SendMessage", messages, kWindow, 1, echo->pid());
        if (int status = echo->stop(120); status != 0) {
          throw std::runtime_error("the echo service under callgrind exited with " +
                                   std::to_string(status));
        }
        totals["sdbus-c++ echo"].push_back(callgrindInstructions(out));
      }
      {
        const std::string out = dir + "/callgrind.raw." + suffix;
        (void)rawMqtt(messages, kWindow, callgrindCommand(out));
        totals["raw libmosquitto"].push_back(callgrindInstructions(out));
      }
    }
    for (const auto& [subject, t] : totals) {
      const double perMessage = (t[1] - t[0]) / static_cast<double>(n);
      report_.figures["callgrind_ir_per_msg " + subject] = Stat{perMessage, perMessage, perMessage};
    }
  }

  // --- targets, table, JSON
  // -----------------------------------------------------------------------

  /// Per-repetition ratio of `field`: series `a` over the sum of the series `b` (each paired with
  /// the repetition of the same index, or its last one: backlog and Node runs may be fewer).
  /// Empty if a series is missing.
  std::vector<double> ratios(const std::pair<std::string, std::string>& a,
                             const std::vector<std::pair<std::string, std::string>>& b,
                             double Sample::*field) const {
    std::vector<double> out;
    const Series* numerator = report_.find(a.first, a.second);
    std::vector<const Series*> denominators;
    for (const auto& [scenario, subject] : b) {
      denominators.push_back(report_.find(scenario, subject));
      if (denominators.back() == nullptr || denominators.back()->samples.empty()) {
        return out;
      }
    }
    if (numerator == nullptr) {
      return out;
    }
    for (std::size_t i = 0; i < numerator->samples.size(); ++i) {
      double sum = 0;
      for (const Series* d : denominators) {
        sum += d->samples[std::min(i, d->samples.size() - 1)].*field;
      }
      out.push_back(numerator->samples[i].*field / sum);
    }
    return out;
  }

  /// The targets (issue 13), each measured in this run.
  void computeTargets() {
    using P = std::pair<std::string, std::string>;
    const P seq{kSequential, kIothubd};
    const P w100{kW100, kIothubd};
    const P rawW100{kW100, kRaw};
    auto& t = report_.targets;
    t.push_back({"SendMessage sequential p50 / (raw libmosquitto + sdbus-c++ echo sequential p50)",
                 "x", true, 1.5,
                 ratios(seq, {{kSequential, kRaw}, {kSequential, kEcho}}, &Sample::p50Us), ""});
    t.push_back({"SendMessage sequential p50 / Node SDK sequential p50", "x", true, 1.0,
                 ratios(seq, {{kSequential, kNode}}, &Sample::p50Us), ""});
    t.push_back({"SendMessage W=100 msgs/s / Node SDK W=100", "x", false, 1.0,
                 ratios(w100, {{kW100, kNode}}, &Sample::rate), ""});
    t.push_back({"SendMessage W=100 msgs/s / raw libmosquitto W=100", "x", false, 0.5,
                 ratios(w100, {rawW100}, &Sample::rate), ""});
    t.push_back({"iothubd CPU per message, SendMessage W=100 / (raw libmosquitto + sdbus-c++ echo)",
                 "x", true, 1.25, ratios(w100, {rawW100, {kW100, kEcho}}, &Sample::cpuUs), ""});
    if (options_.callgrind) {
      const auto& f = report_.figures;
      t.push_back(
          {"callgrind instructions per message, iothubd / (raw libmosquitto + sdbus-c++ echo)",
           "x",
           true,
           1.25,
           {f.at("callgrind_ir_per_msg iothubd").median /
            (f.at("callgrind_ir_per_msg raw libmosquitto").median +
             f.at("callgrind_ir_per_msg sdbus-c++ echo").median)},
           ""});
    }
    t.push_back({"SendMessages x100 msgs/s / raw libmosquitto W=100", "x", false, 0.8,
                 ratios({kBatch100, kIothubd}, {rawW100}, &Sample::rate), ""});
    t.push_back({"QueueMessage sequential p50 / fsync p50 (4 KiB appended, outbox's file system)",
                 "x", true, 2.0,
                 ratios({kQueueSequential, kIothubd}, {{kFsync, kFileSystem}}, &Sample::p50Us),
                 ""});
    t.push_back({"QueueMessage W=100 msgs/s / raw libmosquitto W=100", "x", false, 0.4,
                 ratios({kQueueW100, kIothubd}, {rawW100}, &Sample::rate), ""});
    t.push_back({"backlog drain msgs/s / raw libmosquitto W=100", "x", false, 0.7,
                 ratios({kDrain, kIothubd}, {rawW100}, &Sample::rate), ""});
    {
      // The floor of the W=100 rate on a machine whose cores the client, dbus-daemon, iothubd
      // and the broker share: the D-Bus hop (the echo service's rate) and the MQTT hop (raw
      // libmosquitto's) one after the other, each costing what it costs alone.
      const Series* echo = report_.find(kW100, kEcho);
      const Series* raw = report_.find(kW100, kRaw);
      const Series* daemon = report_.find(kW100, kIothubd);
      std::vector<double> floors;
      std::vector<double> reached;
      for (std::size_t i = 0; echo && raw && daemon && i < daemon->samples.size(); ++i) {
        const double f = 1 / (1 / echo->samples[i].rate + 1 / raw->samples[i].rate);
        floors.push_back(f);
        reached.push_back(daemon->samples[i].rate / f);
      }
      if (!floors.empty()) {
        report_.notes["SendMessage W=100, two-hop floor"] = format(
            "1 / (1/echo + 1/raw) = %s msgs/s (the D-Bus hop and the MQTT hop back to back on "
            "the same CPUs); iothubd reaches %sx of it",
            range(summarize(floors), 0).c_str(), range(summarize(reached), 2).c_str());
      }
    }
    const double idle = report_.figures["rss_idle_kib"].median / 1024;
    const double after = report_.figures["rss_after_kib"].median / 1024;
    t.push_back({"RSS idle, connected", "MB", true, 12, {idle}, ""});
    t.push_back({"RSS growth after " +
                     std::to_string(static_cast<long long>(
                         report_.figures["messages_before_rss_after"].median)) +
                     " messages",
                 "MB",
                 true,
                 2,
                 {after - idle},
                 ""});
  }

  static std::string number(double v, int decimals = 0) {
    if (!std::isfinite(v)) {
      return "-";
    }
    return format("%.*f", decimals, v);
  }

  static std::string range(const Stat& s, int decimals, double scale = 1) {
    if (!std::isfinite(s.median)) {
      return "-";
    }
    std::string out = number(s.median * scale, decimals);
    if (s.max > s.min) {
      out += " (" + number(s.min * scale, decimals) + "-" + number(s.max * scale, decimals) + ")";
    }
    return out;
  }

  /// A latency for the summary table: µs below a millisecond, else ms.
  static std::string latency(double us) {
    if (!std::isfinite(us)) {
      return "-";
    }
    return us < 1000 ? format("%.0f µs", us) : format("%.2f ms", us / 1000);
  }

  /// "measured limit met" of a target.
  static std::tuple<std::string, std::string, std::string> verdict(const Target& t) {
    const Stat s = summarize(t.values);
    const bool x = t.unit == "x";
    std::string limit = (t.atMost ? "<= " : ">= ") + number(t.limit, x ? 2 : 0) + (x ? "x" : " MB");
    if (!std::isfinite(s.median)) {
      return {"-", limit, "skipped"};
    }
    const bool met = t.atMost ? s.median <= t.limit : s.median >= t.limit;
    return {range(s, 2) + (x ? "x" : " MB"), limit, met ? "yes" : "NO"};
  }

  [[nodiscard]] std::string nodeVersion() const {
    std::ifstream in(nodeDir_ + "/node_modules/azure-iot-device/package.json");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto key = text.find("\"version\"");
    const auto open = text.find('"', text.find(':', key) + 1);
    if (key == std::string::npos || open == std::string::npos) {
      return "";
    }
    return text.substr(open + 1, text.find('"', open + 1) - open - 1);
  }

  [[nodiscard]] std::string machineLine() const {
    return format("machine: %d CPUs, %s, %s; load average %s at start, %s at end", cpus_,
                  cpuModel_.c_str(), kernel_.c_str(), loadStart_.c_str(), loadEnd_.c_str());
  }

  /// Everything measured, as text (what scripts/bench prints).
  [[nodiscard]] std::string text() const {
    std::string out = "\n" + machineLine() + "\n";
    out += format(
        "figures: median (min-max) over %d repetitions; latency per call; CPU per message "
        "from /proc/<pid>/task/*/schedstat\n\n",
        options_.reps);
    out += format("%-40s %-18s %-22s %-17s %-19s %-19s %-14s\n", "scenario", "subject", "msgs/s",
                  "p50 ms", "p99 ms", "CPU us/msg", "bus us/msg");
    std::string last;
    for (const auto& s : report_.series) {
      out += format(
          "%-40s %-18s %-22s %-17s %-19s %-19s %-14s\n",
          s.scenario == last ? "" : s.scenario.c_str(), s.subject.c_str(),
          range(s.stat(&Sample::rate), 0).c_str(), range(s.stat(&Sample::p50Us), 2, 1e-3).c_str(),
          range(s.stat(&Sample::p99Us), 2, 1e-3).c_str(), range(s.stat(&Sample::cpuUs), 1).c_str(),
          range(s.stat(&Sample::busCpuUs), 1).c_str());
      last = s.scenario;
    }
    const auto& f = report_.figures;
    out += format("\nstart-up: exec -> READY=1 (hub unreachable) %s ms, exec -> Connected %s ms\n",
                  range(f.at("startup_ready_ms"), 1).c_str(),
                  range(f.at("startup_connected_ms"), 1).c_str());
    out += format(
        "RSS iothubd: idle connected %s KiB, after %s messages %s KiB, after %s-message "
        "backlogs %s KiB\n",
        number(f.at("rss_idle_kib").median).c_str(),
        number(f.at("messages_before_rss_after").median).c_str(),
        number(f.at("rss_after_kib").median).c_str(),
        number(static_cast<double>(counts_.backlog)).c_str(),
        number(f.at("rss_after_backlog_kib").median).c_str());
    if (f.count("node_rss_idle_kib") != 0) {
      out += format("RSS Node SDK: idle connected %s KiB, after %s messages %s KiB\n",
                    range(f.at("node_rss_idle_kib"), 0).c_str(),
                    number(f.at("node_messages_per_run").median).c_str(),
                    range(f.at("node_rss_after_kib"), 0).c_str());
    }
    if (options_.callgrind) {
      out += format(
          "callgrind instructions per message (W=100, (2N - N) / N, N = %zu): "
          "iothubd %s, raw libmosquitto %s, sdbus-c++ echo %s\n",
          counts_.callgrind, number(f.at("callgrind_ir_per_msg iothubd").median).c_str(),
          number(f.at("callgrind_ir_per_msg raw libmosquitto").median).c_str(),
          number(f.at("callgrind_ir_per_msg sdbus-c++ echo").median).c_str());
    }
    for (const auto& [what, note] : report_.notes) {
      out += what + ": " + note + "\n";
    }
    out += format("\n%-84s %-20s %-9s %s\n", "target (issue 13)", "measured", "limit", "met");
    for (const auto& t : report_.targets) {
      const auto [measured, limit, met] = verdict(t);
      out += format("%-84s %-20s %-9s %s\n", t.name.c_str(), measured.c_str(), limit.c_str(),
                    met.c_str());
    }
    return out;
  }

  /// The comparison table and the targets, in Markdown, then text() as a code block:
  /// the latest figures in bench/README.md.
  [[nodiscard]] std::string readmeBlock() const {
    const auto median = [this](const char* scenario, const char* subject, double Sample::*field) {
      const Series* s = report_.find(scenario, subject);
      return s == nullptr ? std::nan("") : s->stat(field).median;
    };
    const auto rate = [&](const char* scenario, const char* subject) {
      const double v = median(scenario, subject, &Sample::rate);
      return std::isfinite(v) ? (v >= 10000 ? format("%.1fk", v / 1000) : format("%.0f", v))
                              : std::string("—");
    };
    const auto p50 = [&](const char* scenario, const char* subject) {
      const double v = median(scenario, subject, &Sample::p50Us);
      return std::isfinite(v) ? latency(v) : std::string("—");
    };
    const auto cpu = [&](const char* subject) {
      const double v = median(kW100, subject, &Sample::cpuUs);
      return std::isfinite(v) ? format("%.1f", v) : std::string("—");
    };
    const std::string node = nodeVersion();
    std::string out = format(
        "%d repetitions of 200-byte JSON bodies, QoS 1, TLS on loopback, one broker, one private "
        "bus; medians. `%s`.\n\n",
        options_.reps, machineLine().c_str());
    out += "| | raw libmosquitto | D-Bus floor (echo service) | Node SDK" +
           (node.empty() ? std::string() : " " + node) + " | iothubd |\n";
    out += "|---|---|---|---|---|\n";
    out += "| SendMessage sequential msgs/s | " + rate(kSequential, kRaw) + " | " +
           rate(kSequential, kEcho) + " | " + rate(kSequential, kNode) + " | " +
           rate(kSequential, kIothubd) + " |\n";
    out += "| SendMessage sequential p50 | " + p50(kSequential, kRaw) + " | " +
           p50(kSequential, kEcho) + " | " + p50(kSequential, kNode) + " | " +
           p50(kSequential, kIothubd) + " |\n";
    out += "| SendMessage W=100 msgs/s | " + rate(kW100, kRaw) + " | " + rate(kW100, kEcho) +
           " | " + rate(kW100, kNode) + " | " + rate(kW100, kIothubd) + " |\n";
    const double bus = median(kW100, kIothubd, &Sample::busCpuUs);
    out += "| CPU µs/msg, W=100 (own process) | " + cpu(kRaw) + " | " + cpu(kEcho) + " | " +
           cpu(kNode) + " | " + cpu(kIothubd) +
           (std::isfinite(bus) ? format(" (+%.1f in dbus-daemon)", bus) : std::string()) + " |\n";
    if (options_.callgrind) {
      const auto& f = report_.figures;
      out += format("| callgrind instructions/msg, W=100 | %.0f | %.0f | — | %.0f |\n",
                    f.at("callgrind_ir_per_msg raw libmosquitto").median,
                    f.at("callgrind_ir_per_msg sdbus-c++ echo").median,
                    f.at("callgrind_ir_per_msg iothubd").median);
    }
    out += "| SendMessages batch 100 × 2 in flight msgs/s | — | " + rate(kBatch100, kEcho) +
           " | — | " + rate(kBatch100, kIothubd) + " |\n";
    out += "| QueueMessage sequential p50 (fsync p50: " + p50(kFsync, kFileSystem) +
           " appending, " + p50(kFsyncInPlace, kFileSystem) + " in place) | — | — | — | " +
           p50(kQueueSequential, kIothubd) + " |\n";
    out += "| QueueMessage W=100 msgs/s | — | — | — | " + rate(kQueueW100, kIothubd) + " |\n";
    out += "| backlog drain msgs/s | — | — | — | " + rate(kDrain, kIothubd) + " |\n";
    const auto& f = report_.figures;
    out +=
        format("| RSS idle connected / after %s messages | — | — | %s / %s | %.1f / %.1f MB |\n\n",
               number(f.at("messages_before_rss_after").median).c_str(),
               f.count("node_rss_idle_kib") != 0
                   ? format("%.1f MB", f.at("node_rss_idle_kib").median / 1024).c_str()
                   : "—",
               f.count("node_rss_after_kib") != 0
                   ? format("%.1f MB", f.at("node_rss_after_kib").median / 1024).c_str()
                   : "—",
               f.at("rss_idle_kib").median / 1024, f.at("rss_after_kib").median / 1024);
    out += "| target (issue 13) | measured | limit | met |\n|---|---|---|---|\n";
    for (const auto& t : report_.targets) {
      const auto [measured, limit, met] = verdict(t);
      out += "| " + t.name + " | " + measured + " | " + limit + " | " + met + " |\n";
    }
    out += "\nEvery figure of the run (`scripts/bench` prints the same):\n\n```" + text() + "```\n";
    return out;
  }

  /// Replaces the bench-results block of bench/README.md with this run's readmeBlock().
  void writeReadme() const {
    static constexpr std::string_view kBegin = "<!-- bench-results -->";
    static constexpr std::string_view kEnd = "<!-- end of bench-results -->";
    std::string readme = testing::readFile(options_.readmePath);
    const auto begin = readme.find(kBegin);
    const auto end = readme.find(kEnd);
    if (begin == std::string::npos || end == std::string::npos || end < begin) {
      throw std::runtime_error(options_.readmePath + " has no \"" + std::string(kBegin) +
                               "\" ... \"" + std::string(kEnd) + "\" block");
    }
    const auto from = begin + kBegin.size();
    readme.replace(from, end - from, "\n" + readmeBlock());
    writeFile(options_.readmePath, readme, 0644);
  }

  void print() const {
    std::fputs(text().c_str(), stdout);
    const Series* node = report_.find(kW100, kNode);
    const Series* daemon = report_.find(kW100, kIothubd);
    if (node != nullptr && daemon != nullptr) {
      std::printf(
          "beside them, the Node SDK at W=100: %s msgs/s and %s CPU us/msg (iothubd: %s "
          "msgs/s, %s CPU us/msg)\n",
          range(node->stat(&Sample::rate), 0).c_str(), range(node->stat(&Sample::cpuUs), 1).c_str(),
          range(daemon->stat(&Sample::rate), 0).c_str(),
          range(daemon->stat(&Sample::cpuUs), 1).c_str());
    }
    std::printf("\nfigures written to %s%s%s (%.0f s in all)\n", options_.jsonPath.c_str(),
                options_.readmePath.empty() ? "" : " and ", options_.readmePath.c_str(),
                nowSeconds() - started_);
  }

  static void stat(Json& j, std::string_view key, const Stat& s) {
    j.beginObject(key)
        .value("median", s.median)
        .value("min", s.min)
        .value("max", s.max)
        .endObject();
  }

  void writeJson() {
    Json j;
    j.beginObject();
    j.beginObject("machine")
        .value("cpus", cpus_)
        .value("cpu_model", cpuModel_)
        .value("kernel", kernel_)
        .value("load_start", loadStart_)
        .value("load_end", loadEnd_)
        .endObject();
    j.beginObject("run")
        .value("mode", options_.smoke ? "smoke" : "full")
        .value("repetitions", options_.reps)
        .value("payload_bytes", static_cast<std::uint64_t>(kPayloadBytes))
        .value("window", static_cast<std::uint64_t>(kWindow))
        .endObject();
    j.beginArray("scenarios");
    for (const auto& s : report_.series) {
      j.beginObject()
          .value("scenario", s.scenario)
          .value("subject", s.subject)
          .value("messages_per_repetition", static_cast<std::uint64_t>(s.messages));
      stat(j, "msgs_per_s", s.stat(&Sample::rate));
      stat(j, "p50_us", s.stat(&Sample::p50Us));
      stat(j, "p99_us", s.stat(&Sample::p99Us));
      stat(j, "cpu_us_per_msg", s.stat(&Sample::cpuUs));
      stat(j, "bus_cpu_us_per_msg", s.stat(&Sample::busCpuUs));
      stat(j, "client_cpu_us_per_msg", s.stat(&Sample::clientUs));
      j.beginArray("repetitions");
      for (const auto& r : s.samples) {
        j.beginObject()
            .value("msgs_per_s", r.rate)
            .value("p50_us", r.p50Us)
            .value("p99_us", r.p99Us)
            .value("cpu_us_per_msg", r.cpuUs)
            .value("bus_cpu_us_per_msg", r.busCpuUs)
            .endObject();
      }
      j.endArray().endObject();
    }
    j.endArray();
    j.beginObject("figures");
    for (const auto& [name, s] : report_.figures) {
      stat(j, name, s);
    }
    j.endObject();
    j.beginArray("targets");
    for (const auto& t : report_.targets) {
      const Stat s = summarize(t.values);
      j.beginObject().value("target", t.name).value("unit", t.unit);
      stat(j, "measured", s);
      j.value("limit", t.limit)
          .value("at_most", t.atMost)
          .value("met",
                 std::isfinite(s.median) && (t.atMost ? s.median <= t.limit : s.median >= t.limit))
          .endObject();
    }
    j.endArray();
    j.beginObject("notes");
    for (const auto& [what, note] : report_.notes) {
      j.value(what, note);
    }
    j.endObject();
    j.endObject();
    writeFile(options_.jsonPath, j.text() + "\n", 0644);
  }

  Options options_;
  Counts counts_;
  double started_ = nowSeconds();
  TempDir root_{"iothubd-bench", 0711};
  hubemu::HubEmulator hub_;
  std::unique_ptr<PrivateBus> bus_;
  std::unique_ptr<BusClient> client_;
  std::string daemonBinary_, rawMqtt_, echo_, echoPolicy_, nodeDir_;
  std::string deviceKey_, rawKey_, nodeKey_;
  std::string daemonDir_, credentials_;
  std::vector<std::string> bodies_;
  std::size_t next_ = 0;  ///< payload ring position
  int launches_ = 0;
  Report report_;
  std::string cpuModel_, kernel_, loadStart_, loadEnd_;
  int cpus_ = 0;
};

}  // namespace
}  // namespace iothubd::bench

int main(int argc, char** argv) {
  iothubd::bench::Options options;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--smoke") {
      options.smoke = true;
      options.reps = 1;
    } else if (a == "--reps" && i + 1 < argc) {
      options.reps = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--json" && i + 1 < argc) {
      options.jsonPath = argv[++i];
    } else if (a == "--readme" && i + 1 < argc) {
      options.readmePath = argv[++i];
    } else if (a == "--no-node") {
      options.node = false;
    } else if (a == "--no-callgrind") {
      options.callgrind = false;
    } else if (a == "--profile-dir" && i + 1 < argc) {
      options.profileDir = argv[++i];
    } else if (a == "--callgrind-messages" && i + 1 < argc) {
      options.callgrindMessages = std::strtoul(argv[++i], nullptr, 10);
    } else {
      std::fprintf(
          stderr,
          "usage: iothubd-bench [--smoke] [--reps N] [--json FILE] [--readme FILE] [--no-node] "
          "[--no-callgrind] [--profile-dir DIR] [--callgrind-messages N]\n");
      return 64;
    }
  }
  // The test support code and the emulator read these from the environment (as under meson test).
  for (const auto& [name, path] :
       std::initializer_list<std::pair<const char*, const char*>>{IOTHUBD_BENCH_PATHS}) {
    ::setenv(name, path, 0);
  }
  if (::geteuid() != 0) {
    std::fprintf(stderr, "iothubd-bench: run as root (the daemon runs as user iothubd)\n");
    return 77;
  }
  try {
    iothubd::bench::Bench bench(options);
    return bench.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "iothubd-bench: %s\n", e.what());
    return 1;
  }
}
