// SPDX-License-Identifier: MIT
// The bus fuzzer (issue 9). Short-lived clients call every member of org.iothubd.Device1 (and
// Properties Get/GetAll/Set, Introspect, Ping, unknown members) with random valid and invalid
// values: huge strings, invalid UTF-8 in byte arrays, deep and broken JSON, empty maps, thousands
// of properties, descriptors of every kind, wrong signatures; they vanish with calls outstanding
// while the hub invokes direct methods, sends cloud-to-device messages and desired patches (some
// beyond what the daemon passes on). Some clients connect as a member of group iothub instead of
// root, so admin-only calls meet the policy and file paths the caller-rights check; method names
// and paths go far beyond their bounds, and UploadFileFromPath has a listed directory full of
// links to reach out of. The daemon must answer a Ping every second, never answer with an
// internal error, and afterwards serve a normal SendMessage with its RSS and descriptor count
// back in their starting band.
//
//   IOTHUBD_BUS_FUZZ_SECONDS   fuzzing time (default 40; 20 in the sanitizer build)
//   IOTHUBD_BUS_FUZZ_SEED      the seed (default fixed); every failure prints it, and the same
//                              seed replays the same sequence of calls (their timing differs)
//
// Longer runs: `IOTHUBD_BUS_FUZZ_SECONDS=3600 meson test -C build bus-fuzz -t 0 --print-errorlogs`.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <grp.h>
#include <pwd.h>

#include "bus_peer.hpp"
#include "daemon_fixture.hpp"
#include "raw_bus.hpp"

namespace iothubd::testing {
namespace {

using Clock = std::chrono::steady_clock;

#if defined(__SANITIZE_ADDRESS__)
// ASan keeps freed memory in quarantine (256 MiB by default), so RSS says nothing there.
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

/// Resident memory may end this much above where it started once the daemon is idle again:
/// allocator arenas, SQLite's page cache and sd-bus buffers keep some of what they grew to.
/// Anything held per call, per client or per message would exceed it within the run.
constexpr long kRssBandKiB = 8 * 1024;

/// Descriptors may end this many above the baseline: a connection to the hub or an upload's
/// socket may be open or closed at either moment. A descriptor kept per call or per client
/// would exceed it by hundreds.
constexpr int kFdBand = 2;

constexpr std::size_t kMaxClients = 12;
/// Below dbus-daemon's 128 pending replies per connection, so that the bus does not refuse us.
constexpr std::size_t kMaxOutstandingPerClient = 64;

std::uint64_t envNumber(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 0) : fallback;
}

/// What the daemon holds.
struct Footprint {
  long rssKiB = 0;
  int fds = 0;
};

Footprint footprintOf(pid_t pid) {
  Footprint f;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) {
      f.rssKiB = std::strtol(line.c_str() + 6, nullptr, 10);
    }
  }
  DIR* dir = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str());
  if (dir != nullptr) {
    while (const dirent* e = ::readdir(dir)) {
      f.fds += e->d_name[0] != '.' ? 1 : 0;
    }
    ::closedir(dir);
  }
  return f;
}

std::string describe(const Footprint& f) {
  return std::to_string(f.rssKiB) + " KiB RSS, " + std::to_string(f.fds) + " fds";
}

/// Random values, from one seeded engine so that a seed names one sequence.
class Gen {
 public:
  explicit Gen(std::uint64_t seed) : rng_(seed) {}

  std::uint64_t below(std::uint64_t n) { return n == 0 ? 0 : rng_() % n; }
  bool percent(unsigned p) { return below(100) < p; }
  template <class T>
  T pick(const std::vector<T>& v) {
    return v[below(v.size())];
  }

  /// Mostly short, sometimes kilobytes, rarely far beyond every limit the daemon has.
  std::size_t length() {
    const auto r = below(1000);
    if (r < 600) {
      return below(17);
    }
    if (r < 850) {
      return 17 + below(240);
    }
    if (r < 960) {
      return 257 + below(16 * 1024);
    }
    if (r < 995) {
      return 16 * 1024 + below(300 * 1024);
    }
    return 300 * 1024 + below(3 * 1024 * 1024);
  }

  /// About `n` bytes of valid UTF-8 without NUL (what a D-Bus string may hold): control
  /// characters, every encoding length, no surrogates or noncharacters (sd-bus refuses them).
  std::string text(std::size_t n) {
    std::string out;
    out.reserve(n + 4);
    while (out.size() < n) {
      const auto r = below(100);
      std::uint32_t cp = 0;
      if (r < 70) {
        cp = 0x20 + static_cast<std::uint32_t>(below(0x5F));
      } else if (r < 75) {
        cp = 1 + static_cast<std::uint32_t>(below(0x7F));
      } else if (r < 85) {
        cp = 0x80 + static_cast<std::uint32_t>(below(0x780));
      } else if (r < 95) {
        cp = 0x800 + static_cast<std::uint32_t>(below(0xF000));
      } else {
        cp = 0x10000 + static_cast<std::uint32_t>(below(0x100000));
      }
      if ((cp >= 0xD800 && cp <= 0xDFFF) || (cp >= 0xFDD0 && cp <= 0xFDEF) ||
          (cp & 0xFFFE) == 0xFFFE) {
        cp = 'x';
      }
      appendUtf8(out, cp);
    }
    return out;
  }

  /// `n` arbitrary bytes (NUL, invalid UTF-8), for byte arrays.
  std::string bytes(std::size_t n) {
    std::string out(n, '\0');
    for (auto& c : out) {
      c = static_cast<char>(rng_());
    }
    return out;
  }

  /// A short string with characters that mean something somewhere (topics, URLs, JSON, paths).
  std::string word() {
    static const std::vector<std::string> kWords = {
        "",       "*",      "/",    "$x",    "iothub-x", "IoThub-Ack", "%",
        "&",      "=",      "#",    "+",     "\\",       "..",         "a/b",
        "ok",     "reboot", "fuzz", "fuzz2", "\t",       "\x01",       "\xc3\xa9t\xc3\xa9",
        "$.mid",  "to",     "ack",  "%24.x", "a=b&c=d",  "\x7f",       "../..",
        "?sig=x", "\"q\""};
    return percent(60) ? pick(kWords) : text(below(24));
  }

  /// Text that is sometimes JSON: small values of every kind, hostile numbers and escapes,
  /// deep nesting, truncated or corrupted documents, and large ones.
  std::string json() {
    switch (below(10)) {
      case 0:
        return deep(pick(std::vector<std::size_t>{31, 32, 33, 100, 5000, 200000}));
      case 1: {
        std::string s = value(3);
        if (!s.empty()) {
          s.resize(below(s.size()));  // truncated
        }
        return s;
      }
      case 2: {
        std::string s = value(3);
        s.insert(below(s.size() + 1), word());  // corrupted
        return s;
      }
      case 3:
        return pick(std::vector<std::string>{"", " ", "null", "{}", "[]", "0", "\"\"", "{}{}",
                                             "{\"a\":1}junk"});
      case 4: {
        std::string s = "{";
        const std::size_t members = pick(std::vector<std::size_t>{100, 1000, 20000});
        for (std::size_t i = 0; i < members; ++i) {
          // Small values: many members, not many megabytes.
          s += (i > 0 ? ",\"k" : "\"k") + std::to_string(i) +
               "\":" + pick(std::vector<std::string>{"1", "\"v\"", "null", "{}", "[]", "-0.5e3"});
        }
        return s + "}";
      }
      default:
        return "{" + member(3) + "}";
    }
  }

  std::map<std::string, std::string> properties() {
    std::map<std::string, std::string> props;
    switch (below(10)) {
      case 0:
      case 1:
      case 2:
      case 3:
        return props;
      case 4: {
        // Thousands of properties (and the counts around the limit).
        const std::size_t n = pick(std::vector<std::size_t>{246, 247, 256, 257, 1000, 5000});
        for (std::size_t i = 0; i < n; ++i) {
          props["p" + std::to_string(i)] = percent(90) ? "v" : text(below(64));
        }
        return props;
      }
      case 5:
        props[text(length())] = text(length());
        return props;
      default:
        for (std::size_t i = below(6); i > 0; --i) {
          props[word()] = percent(80) ? word() : text(length());
        }
        return props;
    }
  }

  std::map<std::string, std::string> systemProperties() {
    static const std::vector<std::string> kKeys = {"message-id",
                                                   "correlation-id",
                                                   "content-type",
                                                   "content-encoding",
                                                   "user-id",
                                                   "expiry-time-utc",
                                                   "output-name",
                                                   "component-name",
                                                   "creation-time-utc",
                                                   "to",
                                                   "ack",
                                                   "$.mid",
                                                   "",
                                                   "Message-Id"};
    std::map<std::string, std::string> props;
    if (percent(50)) {
      return props;
    }
    for (std::size_t i = 1 + below(4); i > 0; --i) {
      const std::string& key = pick(kKeys);
      std::string value;
      switch (below(6)) {
        case 0:
          value = "";
          break;
        case 1:
          value = std::string(pick(std::vector<std::size_t>{127, 128, 129}), 'm');
          break;
        case 2:
          value = pick(std::vector<std::string>{"2099-01-01T00:00:00Z", "1999-01-01T00:00:00Z",
                                                "2024-02-30T00:00:00Z", "9999-12-31T23:59:60Z",
                                                "2030-01-01T00:00:00.5+14:00", "now"});
          break;
        case 3:
          value = text(length());
          break;
        default:
          value = word();
          break;
      }
      props[key] = value;
    }
    return props;
  }

 private:
  static void appendUtf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  std::string deep(std::size_t depth) {
    const bool arrays = percent(50);
    std::string s;
    s.reserve(depth * 6);
    for (std::size_t i = 0; i < depth; ++i) {
      s += arrays ? "[" : "{\"a\":";
    }
    s += "1";
    for (std::size_t i = 0; i < depth; ++i) {
      s += arrays ? "]" : "}";
    }
    return arrays && percent(50) ? "{\"a\":" + s + "}" : s;
  }

  std::string member(int depth) {
    std::string s;
    for (std::size_t i = below(4); i > 0; --i) {
      s += (s.empty() ? "\"" : ",\"") + jsonEscape(word()) + "\":" + value(depth - 1);
    }
    return s;
  }

  std::string value(int depth) {
    switch (below(depth > 0 ? 9 : 6)) {
      case 0:
        return pick(std::vector<std::string>{"null", "true", "false"});
      case 1:
        return pick(std::vector<std::string>{"0", "-0", "1e999999", "184467440737095516155",
                                             "0e100", "-9223372036854775809", "1.5", "2e-400",
                                             "18446744073709551615", "123456789012345678901234"});
      case 2:
        return "\"" + jsonEscape(text(length() / 8)) + "\"";
      case 3:
        return pick(std::vector<std::string>{"\"\\u0000\"", "\"\\ud800\"", "\"\\udc00\"",
                                             "\"\\ud83d\\ude00\"", "\"\\\"\"", "\"\\/\""});
      case 4:
        return "\"" + std::to_string(below(1000000)) + "\"";
      case 5:
        return "{}";
      case 6:
      case 7:
        return "{" + member(depth) + "}";
      default: {
        std::string s = "[";
        for (std::size_t i = below(4); i > 0; --i) {
          s += (s.size() > 1 ? "," : "") + value(depth - 1);
        }
        return s + "]";
      }
    }
  }

  static std::string jsonEscape(const std::string& in) {
    std::string out;
    for (char c : in) {
      if (c == '"' || c == '\\') {
        out.push_back('\\');
        out.push_back(c);
      } else if (static_cast<unsigned char>(c) < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
        out += buf;
      } else {
        out.push_back(c);
      }
    }
    return out;
  }

  std::mt19937_64 rng_;
};

/// A descriptor the fuzzer owns.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    reset();
    fd_ = std::exchange(o.fd_, -1);
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  void reset() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = -1;
  }
  [[nodiscard]] int get() const { return fd_; }

 private:
  int fd_ = -1;
};

/// Who a fuzzing client connects as when it is not root.
struct Identity {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
};

Identity identityOf(const std::string& user) {
  passwd* pw = ::getpwnam(user.c_str());
  if (pw == nullptr) {
    throw std::runtime_error("no user " + user);
  }
  Identity id{pw->pw_uid, pw->pw_gid, std::vector<gid_t>(64)};
  int count = static_cast<int>(id.groups.size());
  ::getgrouplist(user.c_str(), pw->pw_gid, id.groups.data(), &count);
  id.groups.resize(static_cast<std::size_t>(std::max(count, 0)));
  return id;
}

/// The fuzzing clients and what they sent; runs on the test thread only.
class BusFuzzer {
 public:
  /// `uploadDir` is listed in upload_from_path_directories; `member` is who a third of the
  /// clients connect as.
  BusFuzzer(std::string address, std::uint64_t seed, std::string scratchDir, std::string uploadDir,
            Identity member, std::function<std::string(Gen&)> sasToken)
      : address_(std::move(address)),
        gen_(seed),
        scratch_(std::move(scratchDir)),
        uploadDir_(std::move(uploadDir)),
        member_(std::move(member)),
        sasToken_(std::move(sasToken)),
        watch_(openBus(address_)) {}

  ~BusFuzzer() { closeAll(); }
  BusFuzzer(const BusFuzzer&) = delete;
  BusFuzzer& operator=(const BusFuzzer&) = delete;

  /// Fuzzes until `deadline` or the first finding.
  void runUntil(Clock::time_point deadline) {
    auto nextPing = Clock::now();
    while (Clock::now() < deadline && findings_.empty()) {
      if (Clock::now() >= nextPing) {
        timed("Ping", [&] { liveness(); });
        nextPing = Clock::now() + std::chrono::seconds(1);
      }
      if (totalOutstanding() > 400) {
        pump(20);  // let the daemon catch up rather than fill dbus-daemon's queues
        continue;
      }
      timed("step", [&] { step(); });
      timed("pump", [&] { pump(0); });
    }
    liveness();
  }

  /// Every client vanishes (outstanding calls included).
  void closeAll() {
    while (!clients_.empty()) {
      vanish(clients_.size() - 1, true);
    }
  }

  [[nodiscard]] const std::vector<std::string>& findings() const { return findings_; }
  [[nodiscard]] std::uint64_t actions() const { return actionCount_; }

  /// Replies by error name ("" = success), for the log.
  [[nodiscard]] std::string summary() const {
    std::ostringstream out;
    out << actionCount_ << " actions, " << callsSent_ << " calls (" << noReplySent_
        << " without reply), " << clientsOpened_ << " clients opened; slowest: "
        << std::chrono::duration_cast<std::chrono::milliseconds>(slowest_).count() << " ms "
        << slowestWhat_ << "; replies:";
    for (const auto& [name, n] : replies_) {
      out << " " << (name.empty() ? "ok" : name) << "=" << n;
    }
    return out.str();
  }

  template <class Fn>
  void timed(const char* what, Fn&& fn) {
    const auto start = Clock::now();
    fn();
    const auto took = Clock::now() - start;
    if (took > slowest_) {
      slowest_ = took;
      slowestWhat_ = std::string(what) + " (" + (recent_.empty() ? "" : recent_.back()) + ")";
    }
  }

  /// The last actions, oldest first, for a failure message.
  [[nodiscard]] std::string recentActions() const {
    std::string out;
    for (const auto& a : recent_) {
      out += "  " + a + "\n";
    }
    return out;
  }

 private:
  struct Client {
    BusPtr bus;
    std::size_t outstanding = 0;
    std::vector<std::string> requestIds;  ///< from MethodRequestReceived signals it received
    std::vector<Fd> held;  ///< pipe and socket ends it keeps: closed when it vanishes, as at exit
  };
  struct Pending {
    BusFuzzer* fuzzer = nullptr;
    Client* client = nullptr;
    std::uint64_t action = 0;
    std::string what;
  };

  void note(std::string what) {
    ++actionCount_;
    recent_.push_back("#" + std::to_string(actionCount_) + " " + what);
    if (recent_.size() > 40) {
      recent_.pop_front();
    }
  }

  void finding(const std::string& what) {
    findings_.push_back(what + "\nlast actions:\n" + recentActions());
  }

  std::size_t totalOutstanding() const {
    std::size_t n = 0;
    for (const auto& c : clients_) {
      n += c->outstanding;
    }
    return n;
  }

  void liveness() {
    auto ping = newCall(watch_.get(), "Ping", "org.freedesktop.DBus.Peer", "/");
    auto outcome = callAndWait(watch_.get(), ping.get(), std::chrono::seconds(10));
    if (!outcome.errorName.empty()) {
      finding("the daemon did not answer Ping: " + outcome.errorName + ": " + outcome.errorMessage);
    }
  }

  void step() {
    const auto r = gen_.below(1000);
    if (clients_.empty() || (r < 40 && clients_.size() < kMaxClients)) {
      openClient();
      return;
    }
    if (r < 70) {
      // Vanish mid-call: usually after the calls reached the socket, sometimes before.
      vanish(gen_.below(clients_.size()), gen_.percent(80));
      return;
    }
    Client& c = *clients_[gen_.below(clients_.size())];
    if (c.outstanding >= kMaxOutstandingPerClient) {
      return;
    }
    call(c);
  }

  void openClient() {
    try {
      auto c = std::make_unique<Client>();
      const bool asMember = gen_.percent(33);
      c->bus = asMember ? openBusAs(address_, member_.uid, member_.gid, member_.groups)
                        : openBus(address_);
      // MethodRequestReceived is unicast to the claimer: no match rule needed, a filter sees it.
      if (sd_bus_add_filter(c->bus.get(), nullptr, &BusFuzzer::onIncoming, c.get()) < 0) {
        finding("sd_bus_add_filter failed");
        return;
      }
      clients_.push_back(std::move(c));
      ++clientsOpened_;
      note("open client " + std::to_string(clients_.size() - 1) +
           (asMember ? " (member of iothub)" : " (root)"));
    } catch (const std::exception& e) {
      finding(std::string("cannot open a client: ") + e.what());
    }
  }

  void vanish(std::size_t index, bool flush) {
    Client* c = clients_[index].get();
    note("client " + std::to_string(index) + " vanishes with " + std::to_string(c->outstanding) +
         " calls outstanding" + (flush ? "" : " (unflushed)"));
    if (flush) {
      (void)sd_bus_flush(c->bus.get());
    }
    c->bus.reset();
    std::erase_if(pending_, [&](const auto& p) { return p.second->client == c; });
    clients_.erase(clients_.begin() + static_cast<std::ptrdiff_t>(index));
  }

  static int onIncoming(sd_bus_message* m, void* userdata, sd_bus_error* /*error*/) {
    auto* c = static_cast<Client*>(userdata);
    if (sd_bus_message_is_signal(m, "org.iothubd.Device1", "MethodRequestReceived") > 0) {
      const char* rid = nullptr;
      if (sd_bus_message_read(m, "s", &rid) >= 0 && rid != nullptr && c->requestIds.size() < 32) {
        c->requestIds.emplace_back(rid);
      }
    }
    return 0;
  }

  static int onReply(sd_bus_message* m, void* userdata, sd_bus_error* /*error*/) {
    auto* p = static_cast<Pending*>(userdata);
    p->fuzzer->replied(*p, m);
    return 0;
  }

  void replied(const Pending& p, sd_bus_message* m) {
    std::string name;
    if (sd_bus_message_is_method_error(m, nullptr) > 0) {
      const sd_bus_error* e = sd_bus_message_get_error(m);
      name = e != nullptr && e->name != nullptr ? e->name : "?";
      const std::string message = e != nullptr && e->message != nullptr ? e->message : "";
      if (!expectedError(name)) {
        finding("call #" + std::to_string(p.action) + " (" + p.what + ") was answered " + name +
                ": " + message.substr(0, 300));
      }
    }
    ++replies_[name];
    --p.client->outstanding;
    pending_.erase(p.action);
  }

  /// What the daemon (or the bus, or our own sd-bus) may answer. Failed means an exception
  /// reached replyGuard (a bug), and a vanished name means the daemon died.
  static bool expectedError(const std::string& name) {
    static const std::set<std::string> kExpected = {
        "org.freedesktop.DBus.Error.InvalidArgs",
        "org.freedesktop.DBus.Error.AccessDenied",
        "org.freedesktop.DBus.Error.FileNotFound",
        "org.freedesktop.DBus.Error.IOError",
        "org.freedesktop.DBus.Error.UnknownMethod",
        "org.freedesktop.DBus.Error.UnknownInterface",
        "org.freedesktop.DBus.Error.UnknownObject",
        "org.freedesktop.DBus.Error.UnknownProperty",
        "org.freedesktop.DBus.Error.PropertyReadOnly",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.LimitsExceeded",
    };
    return name.rfind("org.iothubd.Error.", 0) == 0 || kExpected.contains(name);
  }

  /// Sends `m` from `c`: usually expecting a reply (then tracked), sometimes not.
  void send(Client& c, MessagePtr m, const std::string& what) {
    note(what);
    ++callsSent_;
    if (gen_.percent(5)) {
      ++noReplySent_;
      if (sd_bus_message_set_expect_reply(m.get(), 0) >= 0) {
        (void)sd_bus_send(c.bus.get(), m.get(), nullptr);
      }
      return;
    }
    auto p = std::make_unique<Pending>(Pending{this, &c, actionCount_, what});
    // 120 s: longer than any operation the daemon bounds (operation_timeout is 60 s).
    int r =
        sd_bus_call_async(c.bus.get(), nullptr, m.get(), &BusFuzzer::onReply, p.get(), 120'000'000);
    if (r < 0) {
      return;  // e.g. the bus closed us for an earlier message; the client will be replaced
    }
    ++c.outstanding;
    pending_.emplace(actionCount_, std::move(p));
  }

  /// A Device1 call with the right signature, or (sometimes) any member with a random one.
  void call(Client& c) {
    static const std::vector<std::string> kMembers = {"SendMessage",
                                                      "SendBinaryMessage",
                                                      "QueueMessage",
                                                      "QueueBinaryMessage",
                                                      "GetTwin",
                                                      "PatchTwinReportedProperties",
                                                      "RegisterMethodHandler",
                                                      "UnregisterMethodHandler",
                                                      "SendMethodResponse",
                                                      "UpdateSasToken",
                                                      "GetStorageInfoForBlob",
                                                      "NotifyBlobUploadStatus",
                                                      "UploadFile",
                                                      "UploadFileFromPath"};
    const auto r = gen_.below(1000);
    sd_bus* bus = c.bus.get();
    try {
      if (r < 3) {
        send(c, newCall(bus, "Disconnect"), "Disconnect");
      } else if (r < 15) {
        send(c, newCall(bus, "Connect"), "Connect");
      } else if (r < 60) {
        propertiesCall(c);
      } else if (r < 75) {
        otherCall(c);
      } else if (r < 150) {
        wrongSignature(c, gen_.percent(90) ? gen_.pick(kMembers) : gen_.word());
      } else {
        deviceCall(c, gen_.pick(kMembers));
      }
    } catch (const std::exception& e) {
      // sd-bus refused to build the message (a value it will not carry): not the daemon's doing.
      note(std::string("(not sent: ") + e.what() + ")");
    }
  }

  void deviceCall(Client& c, const std::string& member) {
    sd_bus* bus = c.bus.get();
    auto m = newCall(bus, member);
    sd_bus_message* raw = m.get();
    std::string what = member;
    auto check = [](int r) {
      if (r < 0) {
        throw std::runtime_error(std::string("append: ") + std::strerror(-r));
      }
    };
    if (member == "SendMessage" || member == "QueueMessage" || member == "SendBinaryMessage" ||
        member == "QueueBinaryMessage") {
      const bool binary = member.find("Binary") != std::string::npos;
      const std::size_t n = gen_.length();
      const std::string body =
          binary ? gen_.bytes(n) : (gen_.percent(30) ? gen_.json() : gen_.text(n));
      if (binary) {
        check(sd_bus_message_append_array(raw, 'y', body.data(), body.size()));
      } else {
        check(sd_bus_message_append(raw, "s", body.c_str()));
      }
      auto props = gen_.properties();
      auto system = gen_.systemProperties();
      check(appendStringMap(raw, props));
      check(appendStringMap(raw, system));
      what += " body " + std::to_string(body.size()) + " B, " + std::to_string(props.size()) +
              " properties, " + std::to_string(system.size()) + " system";
    } else if (member == "PatchTwinReportedProperties") {
      const std::string patch = gen_.json();
      check(sd_bus_message_append(raw, "s", patch.c_str()));
      what += " " + std::to_string(patch.size()) + " B: " + patch.substr(0, 40);
    } else if (member == "RegisterMethodHandler" || member == "UnregisterMethodHandler") {
      std::string name;
      const auto kind = gen_.below(100);
      if (kind < 60) {
        name = gen_.pick(std::vector<std::string>{"fuzz", "fuzz2", "reboot", "*", ""});
      } else if (kind < 80) {
        name = gen_.word() + std::to_string(gen_.below(80));
      } else if (kind < 95) {
        // Around and far beyond the 128-byte bound, printable or not.
        name = std::string(gen_.pick(std::vector<std::size_t>{127, 128, 129, 4096}), 'n');
        if (gen_.percent(30)) {
          name[gen_.below(name.size())] = static_cast<char>(1 + gen_.below(31));
        }
      } else {
        name = gen_.text(gen_.pick(std::vector<std::size_t>{64 * 1024, 1024 * 1024}));
      }
      check(sd_bus_message_append(raw, "s", name.c_str()));
      what += " " + name.substr(0, 40);
    } else if (member == "SendMethodResponse") {
      std::string rid;
      if (!c.requestIds.empty() && gen_.percent(60)) {
        rid = c.requestIds[gen_.below(c.requestIds.size())];
        if (gen_.percent(50)) {
          c.requestIds.erase(std::find(c.requestIds.begin(), c.requestIds.end(), rid));
        }
      } else {
        rid = gen_.percent(50) ? std::to_string(gen_.below(50)) : gen_.word();
      }
      const std::int32_t status =
          gen_.percent(70)
              ? static_cast<std::int32_t>(100 + gen_.below(500))
              : gen_.pick(std::vector<std::int32_t>{0, 99, 600, -1, INT32_MAX, INT32_MIN});
      const std::string payload = gen_.json();
      check(sd_bus_message_append(raw, "sis", rid.c_str(), status, payload.c_str()));
      what += " " + rid.substr(0, 20) + " " + std::to_string(status) + " payload " +
              std::to_string(payload.size()) + " B";
    } else if (member == "UpdateSasToken") {
      const std::string token = sasToken_(gen_);
      check(sd_bus_message_append(raw, "s", token.c_str()));
      what += " " + token.substr(0, 60);
    } else if (member == "GetStorageInfoForBlob") {
      const std::string name = gen_.percent(50) ? gen_.word() : gen_.text(gen_.length());
      check(sd_bus_message_append(raw, "s", name.c_str()));
      what += " name " + std::to_string(name.size()) + " B";
    } else if (member == "NotifyBlobUploadStatus") {
      const std::string id = gen_.percent(50) ? gen_.word() : gen_.text(gen_.length());
      const std::string text = gen_.text(gen_.length());
      check(sd_bus_message_append(raw, "sbis", id.c_str(), static_cast<int>(gen_.below(2)),
                                  static_cast<std::int32_t>(gen_.below(700)) - 50, text.c_str()));
      what += " id " + std::to_string(id.size()) + " B, description " +
              std::to_string(text.size()) + " B";
    } else if (member == "UploadFile") {
      const std::string name = gen_.word() + "x";
      Fd fd = someDescriptor(c);
      check(sd_bus_message_append(raw, "sh", name.c_str(), fd.get()));  // sd-bus sends a dup
      what += " " + name.substr(0, 20);
    } else if (member == "UploadFileFromPath") {
      const std::string name = gen_.word() + "y";
      const std::string path = somePath();
      check(sd_bus_message_append(raw, "ss", name.c_str(), path.c_str()));
      what += " " + path.substr(0, 60);
    }
    send(c, std::move(m), what);
  }

  /// A descriptor of some kind to pass to UploadFile; ends the client keeps go when it vanishes.
  Fd someDescriptor(Client& c) {
    int fds[2] = {-1, -1};
    switch (gen_.below(6)) {
      case 0:
        if (::pipe2(fds, O_CLOEXEC) == 0) {
          if (gen_.percent(50)) {
            std::string data = gen_.bytes(gen_.below(4096));
            (void)!::write(fds[1], data.data(), data.size());
          }
          if (gen_.percent(50)) {
            c.held.emplace_back(fds[1]);  // EOF only when the client vanishes
          } else {
            ::close(fds[1]);
          }
          return Fd(fds[0]);
        }
        break;
      case 1:
        if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0) {
          c.held.emplace_back(fds[1]);
          return Fd(fds[0]);
        }
        break;
      case 2:
        return Fd(::eventfd(0, EFD_CLOEXEC));
      case 3: {
        int fd = ::memfd_create("fuzz", MFD_CLOEXEC);
        std::string data = gen_.bytes(gen_.below(64 * 1024));
        (void)!::write(fd, data.data(), data.size());
        return Fd(fd);
      }
      case 4:
        return Fd(::open(scratch_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      default:
        break;
    }
    return Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  }

  std::string somePath() {
    static const std::vector<std::string> kPaths = {
        "/dev/null", "/dev/zero",   "/etc/shadow",      "/nonexistent/file", "/proc/self/status",
        "/",         "relative",    "/dev/stdin",       "/proc/self/fd/0",   "/dev/urandom",
        "",          "/etc/passwd", "/tmp/../etc/hosts"};
    // Inside the listed directory (BusFuzzTest::SetUp fills it): a file, a FIFO nobody writes
    // (it must not block the daemon's open()), links out of it, names that climb out.
    static const std::vector<std::string> kInside = {
        "/readable",    "/fifo",        "/root-only",         "/hardlink",
        "/link-shadow", "/link-proc",   "/link-dir/readable", "/../fifo",
        "/./readable",  "//etc/passwd", "/missing",           "/sub/../readable",
        "/link-fd/0"};
    const auto r = gen_.below(100);
    if (r < 10) {
      return "/" + std::string(gen_.pick(std::vector<std::size_t>{255, 4096, 70000}), 'p');
    }
    if (r < 15) {
      // Far beyond PATH_MAX, with bytes that quote four times as long.
      return uploadDir_ + "/" +
             std::string(gen_.pick(std::vector<std::size_t>{4096, 1 << 20}),
                         static_cast<char>(1 + gen_.below(31)));
    }
    if (r < 20) {
      return scratch_ + "/fifo";
    }
    if (r < 55) {
      return uploadDir_ + gen_.pick(kInside);
    }
    return gen_.percent(80) ? gen_.pick(kPaths) : gen_.word();
  }

  void propertiesCall(Client& c) {
    static const std::vector<std::string> kNames = {"Connected",
                                                    "ConnectionState",
                                                    "LastError",
                                                    "DeviceId",
                                                    "ModuleId",
                                                    "HostName",
                                                    "GatewayHostName",
                                                    "AuthenticationType",
                                                    "SasTokenExpiry",
                                                    "OutboxLength",
                                                    "OutboxBytes",
                                                    "MessagesDropped",
                                                    "MessagesDelivered",
                                                    "ProvisioningState",
                                                    "Nope",
                                                    ""};
    const std::string iface = gen_.percent(85) ? "org.iothubd.Device1" : gen_.word();
    sd_bus* bus = c.bus.get();
    switch (gen_.below(3)) {
      case 0: {
        auto m = newCall(bus, "GetAll", "org.freedesktop.DBus.Properties");
        if (sd_bus_message_append(m.get(), "s", iface.c_str()) >= 0) {
          send(c, std::move(m), "Properties.GetAll " + iface.substr(0, 30));
        }
        return;
      }
      case 1: {
        auto m = newCall(bus, "Get", "org.freedesktop.DBus.Properties");
        const std::string& name = gen_.pick(kNames);
        if (sd_bus_message_append(m.get(), "ss", iface.c_str(), name.c_str()) >= 0) {
          send(c, std::move(m), "Properties.Get " + name);
        }
        return;
      }
      default: {
        auto m = newCall(bus, "Set", "org.freedesktop.DBus.Properties");
        const std::string& name = gen_.pick(kNames);
        int r = sd_bus_message_append(m.get(), "ss", iface.c_str(), name.c_str());
        if (r >= 0) {
          r = appendRandom(m.get(), "v");
        }
        if (r >= 0) {
          send(c, std::move(m), "Properties.Set " + name);
        }
        return;
      }
    }
  }

  void otherCall(Client& c) {
    sd_bus* bus = c.bus.get();
    switch (gen_.below(5)) {
      case 0:
        send(c, newCall(bus, "Introspect", "org.freedesktop.DBus.Introspectable"), "Introspect");
        return;
      case 1:
        send(c, newCall(bus, "Introspect", "org.freedesktop.DBus.Introspectable", "/"),
             "Introspect /");
        return;
      case 2:
        send(c, newCall(bus, "Ping", "org.freedesktop.DBus.Peer"), "Ping");
        return;
      case 3:
        send(c, newCall(bus, "GetMachineId", "org.freedesktop.DBus.Peer"), "GetMachineId");
        return;
      default:
        send(c, newCall(bus, "NoSuchMember", "org.iothubd.Device1", "/org/iothubd/Nope"),
             "unknown object");
        return;
    }
  }

  /// `member` with 0..4 arguments of random types: sd-bus must refuse the signature before any
  /// of our code reads it, and nothing may break.
  void wrongSignature(Client& c, const std::string& member) {
    static const std::vector<std::string> kTypes = {
        "s",     "i",     "b",    "t",         "y",   "d",     "n",         "q",
        "u",     "x",     "o",    "g",         "h",   "v",     "ay",        "as",
        "a{ss}", "a{sv}", "(si)", "a{sa{ss}}", "aay", "a(sv)", "a{ss}a{ss}"};
    std::string signature;
    for (std::size_t i = gen_.below(5); i > 0; --i) {
      signature += gen_.pick(kTypes);
    }
    MessagePtr m;
    try {
      m = newCall(c.bus.get(), member);
    } catch (const std::exception&) {
      note("(not sent: invalid member name)");
      return;
    }
    // Nested arrays of long strings would otherwise multiply into gigabytes that take minutes
    // to build and that the bus refuses anyway: a budget keeps one message at a few MiB.
    budget_ = gen_.percent(5) ? 4 * 1024 * 1024 : 64 * 1024;
    if (appendRandom(m.get(), signature) < 0) {
      note("(not sent: " + signature + ")");
      return;
    }
    send(c, std::move(m), member + " with signature '" + signature + "'");
  }

  /// Appends one value for each complete type in `signature`; negative errno on failure.
  int appendRandom(sd_bus_message* m, std::string_view signature) {
    while (!signature.empty()) {
      const std::size_t n = completeTypeLength(signature);
      int r = appendOne(m, signature.substr(0, n));
      if (r < 0) {
        return r;
      }
      signature.remove_prefix(n);
    }
    return 0;
  }

  int appendOne(sd_bus_message* m, std::string_view type) {
    const std::string t(type);
    switch (type[0]) {
      case 'a': {
        const std::string element(type.substr(1));
        int r = sd_bus_message_open_container(m, 'a', element.c_str());
        for (std::size_t i = gen_.percent(20) ? gen_.below(2000) : gen_.below(4);
             r >= 0 && i > 0 && budget_ > 0; --i) {
          budget_ -= std::min<std::size_t>(budget_, 8);  // each element costs something
          r = appendOne(m, element);
        }
        return r < 0 ? r : sd_bus_message_close_container(m);
      }
      case '(':
      case '{': {
        const std::string inner(type.substr(1, type.size() - 2));
        int r = sd_bus_message_open_container(m, type[0] == '(' ? 'r' : 'e', inner.c_str());
        if (r >= 0) {
          r = appendRandom(m, inner);
        }
        return r < 0 ? r : sd_bus_message_close_container(m);
      }
      case 'v': {
        static const std::vector<std::string> kInner = {"s", "b", "t", "i", "as", "a{ss}", "v"};
        const std::string inner = gen_.pick(kInner);
        int r = sd_bus_message_open_container(m, 'v', inner.c_str());
        if (r >= 0) {
          r = appendOne(m, inner);
        }
        return r < 0 ? r : sd_bus_message_close_container(m);
      }
      case 's': {
        const std::string s =
            gen_.percent(50) ? gen_.word() : gen_.text(std::min(gen_.length(), budget_));
        budget_ -= std::min(budget_, s.size());
        return sd_bus_message_append_basic(m, 's', s.c_str());
      }
      case 'o':
        return sd_bus_message_append_basic(m, 'o', gen_.percent(50) ? "/" : "/org/iothubd/Device");
      case 'g':
        return sd_bus_message_append_basic(m, 'g', "a{sv}");
      case 'h': {
        const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        const int r = sd_bus_message_append_basic(m, 'h', &fd);  // appends a dup
        ::close(fd);
        return r;
      }
      case 'd': {
        const double d = static_cast<double>(gen_.below(1000)) / 7.0;
        return sd_bus_message_append_basic(m, 'd', &d);
      }
      case 'b': {
        const int b = static_cast<int>(gen_.below(2));
        return sd_bus_message_append_basic(m, 'b', &b);
      }
      default: {
        // y n q i u x t: the width sd-bus reads from the pointer; 8 bytes cover them all.
        const std::uint64_t v = gen_.percent(50) ? gen_.below(10) : gen_.below(UINT64_MAX);
        std::uint8_t y = static_cast<std::uint8_t>(v);
        std::uint16_t q = static_cast<std::uint16_t>(v);
        std::uint32_t u = static_cast<std::uint32_t>(v);
        switch (type[0]) {
          case 'y':
            return sd_bus_message_append_basic(m, 'y', &y);
          case 'n':
          case 'q':
            return sd_bus_message_append_basic(m, type[0], &q);
          case 'i':
          case 'u':
            return sd_bus_message_append_basic(m, type[0], &u);
          default:
            return sd_bus_message_append_basic(m, type[0], &v);
        }
      }
    }
  }

  /// Processes whatever the clients received; waits up to `timeoutMs` for something to arrive.
  void pump(int timeoutMs) {
    if (timeoutMs > 0) {
      std::vector<pollfd> fds;
      for (const auto& c : clients_) {
        const int events = sd_bus_get_events(c->bus.get());
        fds.push_back(pollfd{sd_bus_get_fd(c->bus.get()),
                             static_cast<short>(events < 0 ? POLLIN : events), 0});
      }
      (void)::poll(fds.data(), fds.size(), timeoutMs);
    }
    for (std::size_t i = 0; i < clients_.size();) {
      int r = 0;
      do {
        r = sd_bus_process(clients_[i]->bus.get(), nullptr);
      } while (r > 0);
      if (r < 0) {
        // The bus dropped this connection (e.g. a message over its limits): replace it.
        note("client " + std::to_string(i) + " lost its connection: " + std::strerror(-r));
        vanish(i, false);
        continue;
      }
      ++i;
    }
  }

  std::string address_;
  Gen gen_;
  std::size_t budget_ = 0;  ///< bytes a randomly typed message may still grow by
  std::string scratch_;
  std::string uploadDir_;
  Identity member_;
  std::function<std::string(Gen&)> sasToken_;
  BusPtr watch_;  ///< the liveness Ping's own connection
  std::vector<std::unique_ptr<Client>> clients_;
  std::map<std::uint64_t, std::unique_ptr<Pending>> pending_;  ///< by action number
  std::deque<std::string> recent_;
  std::vector<std::string> findings_;
  std::map<std::string, std::uint64_t> replies_;
  std::uint64_t actionCount_ = 0;
  std::uint64_t callsSent_ = 0;
  std::uint64_t noReplySent_ = 0;
  std::uint64_t clientsOpened_ = 0;
  Clock::duration slowest_{};
  std::string slowestWhat_;
};

/// The hub's traffic towards the device while the fuzzers run, on a thread of its own.
class CloudSide {
 public:
  CloudSide(const hubemu::HubEmulator& hub, std::string device, std::uint64_t seed)
      : thread_([this, &hub, device = std::move(device), seed] { run(hub, device, seed); }) {}
  ~CloudSide() { stop(); }
  CloudSide(const CloudSide&) = delete;
  CloudSide& operator=(const CloudSide&) = delete;

  void stop() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) {
      thread_.join();
    }
  }

 private:
  void run(const hubemu::HubEmulator& hub, const std::string& device, std::uint64_t seed) {
    hubemu::ServiceClient cloud(hub);
    std::mt19937_64 rng(seed ^ 0x5eedULL);
    const std::vector<std::string> names = {"fuzz", "fuzz2", "reboot", "nobody"};
    while (true) {
      try {
        // Now and then beyond what the daemon passes on (256 KiB): dropped or answered 413.
        const std::size_t size = rng() % 20 == 0 ? 300 * 1024 : rng() % 2048;
        switch (rng() % 5) {
          case 0:
            cloud.sendC2d(device, std::string(size, 'c'), {{"$.mid", "c2d"}}, {{"k", "v"}});
            break;
          case 1:
            (void)cloud.patchDesired(device, "{\"fuzz\":\"" + std::string(size, 'd') + "\"}");
            break;
          default:
            (void)cloud.invokeMethod(device, names[rng() % names.size()],
                                     "\"" + std::string(size, 'x') + "\"", 4s);
            break;
        }
      } catch (const std::exception&) {
        // A direct method nobody answered in time on the cloud's side: the daemon answers 504.
      }
      // Pacing, not waiting for an event: a call every 20 ms or so, until stopped.
      std::unique_lock lock(mutex_);
      if (cv_.wait_for(lock, 20ms, [this] { return stop_; })) {
        return;
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;  ///< last: started once the members it uses exist
};

class BusFuzzTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    // An operator-supplied token, so that UpdateSasToken really re-authorises; uploads go to a
    // port where nothing listens (their error paths); a short method timeout keeps the hub's
    // direct-method calls moving; notice-level logs keep the log readable.
    tokenExpiry_ = static_cast<std::int64_t>(std::time(nullptr)) + 2 * 24 * 3600;
    writeCredential("connection-string", "HostName=" + hub_.hubHost() + ";DeviceId=" + kDevice +
                                             ";SharedAccessSignature=" + goodToken() + "\n");
    // UploadFileFromPath gets a listed directory, with a file, a FIFO, a file only root may
    // read, a hard link and links out of it.
    const std::string up = dir_ / "up";
    ASSERT_EQ(::mkdir(up.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((up + "/sub").c_str(), 0755), 0);
    writeFile(up + "/readable", "fuzz", 0644);
    writeFile(up + "/root-only", "root's", 0600);
    ASSERT_EQ(::mkfifo((up + "/fifo").c_str(), 0666), 0);
    ASSERT_EQ(::link((up + "/readable").c_str(), (dir_ / "second-name").c_str()), 0);
    ASSERT_EQ(::link((up + "/root-only").c_str(), (up + "/hardlink").c_str()), 0);
    ASSERT_EQ(::symlink("/etc/shadow", (up + "/link-shadow").c_str()), 0);
    ASSERT_EQ(::symlink("/proc/self", (up + "/link-proc").c_str()), 0);
    ASSERT_EQ(::symlink(up.c_str(), (up + "/link-dir").c_str()), 0);
    ASSERT_EQ(::symlink("/proc/self/fd", (up + "/link-fd").c_str()), 0);
    writeConfig("[methods]\nmethod_response_timeout = 2\n[file_upload]\nhttps_port = " +
                std::to_string(hubemu::freeLoopbackPort()) +
                "\nupload_from_path_directories = " + up + "\n[daemon]\nlog_level = notice\n");
    const std::string fifo = dir_ / "fifo";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0666), 0);
    ensureTestUsers();
  }

  /// A valid token for the device (each call a different expiry, so a different token).
  std::string goodToken() {
    return hubemu::makeSasToken(hub_.hubHost(), kDevice, deviceKey_, tokenExpiry_ + tokenCount_++);
  }

  /// Tokens for UpdateSasToken: valid ones, and ones the daemon must refuse (other device or
  /// hub, expired, garbage); rarely one it cannot refuse (a wrong signature: the hub does).
  std::string fuzzToken(Gen& gen) {
    switch (gen.below(20)) {
      case 0:
        return hubemu::makeSasToken(hub_.hubHost(), "other", deviceKey_, tokenExpiry_);
      case 1:
        return hubemu::makeSasToken("other.example", kDevice, deviceKey_, tokenExpiry_);
      case 2:
        return hubemu::makeSasToken(hub_.hubHost(), kDevice, deviceKey_, 1000);
      case 3:
        return "SharedAccessSignature " + gen.word();
      case 4:
        return gen.text(gen.length());
      case 5:
        return gen.percent(10) ? hubemu::makeSasToken(hub_.hubHost(), kDevice, hubemu::randomKey(),
                                                      tokenExpiry_)
                               : "";
      default:
        return goodToken();
    }
  }

  /// Back to a settled daemon: fuzzers gone, a working connection, a normal SendMessage that
  /// reaches the hub, the outbox empty, descriptors settled to `expectedFds` (if >= 0).
  Footprint quiesce(hubemu::ServiceClient& service, const std::string& label, int expectedFds) {
    auto& c = client();
    // The last token the fuzzers sent may have been refused by the hub.
    c.UpdateSasToken(goodToken());
    c.Connect();
    const std::string mid = "final-" + label;
    EXPECT_EQ(
        c.SendMessage("{\"after\":\"" + label + "\"}", {{"check", "final"}}, {{"message-id", mid}}),
        mid);
    EXPECT_TRUE(service
                    .waitForTelemetry(
                        [&](const hubemu::Telemetry& t) { return t.property("$.mid") == mid; },
                        std::chrono::seconds(30))
                    .has_value())
        << "the normal message after the " << label << " did not reach the hub";
    // Everything the fuzzers queued is delivered or expired.
    const auto outboxDeadline = Clock::now() + std::chrono::seconds(60);
    while (c.OutboxLength() != 0 && Clock::now() < outboxDeadline) {
      (void)c.waitForSignal(
          "PropertiesChanged",
          [](const SignalRecord& r) { return r.changed.contains("OutboxLength"); }, 1s);
    }
    EXPECT_EQ(c.OutboxLength(), 0u) << "the outbox did not drain after the " << label;
    // Descriptors of vanished clients' uploads close as their steps fail; the kernel has no
    // event for another process closing one, so this polls (bounded).
    auto f = footprintOf(daemon_->pid());
    const auto fdDeadline = Clock::now() + std::chrono::seconds(20);
    while (expectedFds >= 0 && f.fds > expectedFds && Clock::now() < fdDeadline) {
      std::this_thread::sleep_for(100ms);
      f = footprintOf(daemon_->pid());
    }
    return f;
  }

  std::int64_t tokenExpiry_ = 0;
  std::int64_t tokenCount_ = 0;
};

TEST_F(BusFuzzTest, DaemonSurvivesHostileCallersAndReturnsToItsStartingBand) {
  const std::uint64_t seed = envNumber("IOTHUBD_BUS_FUZZ_SEED", 0x10717b5dULL);
  const std::uint64_t seconds =
      std::max<std::uint64_t>(envNumber("IOTHUBD_BUS_FUZZ_SECONDS", kSanitized ? 20 : 40), 6);
  const std::string replay = "replay: IOTHUBD_BUS_FUZZ_SEED=" + std::to_string(seed) +
                             " IOTHUBD_BUS_FUZZ_SECONDS=" + std::to_string(seconds);
  SCOPED_TRACE(replay);
  std::cout << "bus fuzzer: seed " << seed << ", " << seconds << " s\n";

  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();

  // The hub's side, on its own thread: direct methods (some claimed by fuzz clients), C2D
  // messages and desired patches, so that signals go out while clients come and go.
  CloudSide cloud(hub_, kDevice, seed);

  BusFuzzer fuzzer(bus_->address(), seed, dir_.path(), dir_ / "up", identityOf(kMemberUser),
                   [this](Gen& g) { return fuzzToken(g); });
  auto reportFindings = [&] {
    for (const auto& f : fuzzer.findings()) {
      ADD_FAILURE() << f;
    }
  };

  // Warm-up: the same mix, so that allocator arenas, SQLite's cache and sd-bus buffers reach
  // the size this kind of traffic needs before the baseline is taken.
  const auto warmUp = std::chrono::seconds(std::max<std::uint64_t>(seconds / 6, 3));
  fuzzer.runUntil(Clock::now() + warmUp);
  fuzzer.closeAll();
  reportFindings();
  ASSERT_TRUE(fuzzer.findings().empty());
  // libcurl (and the libraries it pulls in, several MB) is loaded with the first upload call
  // (src/http/lazy_http_client.cpp). Whether the warm-up's random mix made one decides the
  // baseline by that much, so one is made here: the band then measures growth, not a library.
  try {
    (void)client().GetStorageInfoForBlob("warm-up.bin");
  } catch (const sdbus::Error&) {  // no file-upload endpoint here: only the loading matters
  }
  const Footprint baseline = quiesce(service, "warm-up", -1);
  std::cout << "bus fuzzer: baseline after " << warmUp.count()
            << " s warm-up: " << describe(baseline) << "\n";

  fuzzer.runUntil(Clock::now() + std::chrono::seconds(seconds) - warmUp);
  fuzzer.closeAll();
  cloud.stop();
  std::cout << "bus fuzzer: " << fuzzer.summary() << "\n";
  reportFindings();
  ASSERT_TRUE(fuzzer.findings().empty());

  const Footprint after = quiesce(service, "run", baseline.fds + kFdBand);
  std::cout << "bus fuzzer: after the run: " << describe(after) << "\n";
  EXPECT_LE(after.fds, baseline.fds + kFdBand)
      << "descriptors: " << describe(baseline) << " before, " << describe(after) << " after";
  if (!kSanitized) {
    EXPECT_LE(after.rssKiB, baseline.rssKiB + kRssBandKiB)
        << "RSS grew beyond the band: " << describe(baseline) << " before, " << describe(after)
        << " after";
  }
}

}  // namespace
}  // namespace iothubd::testing
