// SPDX-License-Identifier: MIT
// The pure half of `iothubctl check`: verdicts from facts, and the report. See check.hpp.
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <array>
#include <charconv>
#include <cstdlib>
#include <ctime>
#include <sstream>

#include "check.hpp"
#include "format.hpp"

namespace iothubd::ctl {
namespace {

std::string skewText(std::int64_t skew) {
  return formatDuration(std::chrono::seconds(skew < 0 ? -skew : skew)) +
         (skew < 0 ? " behind" : " ahead of");
}

constexpr const char* kClockFix =
    "synchronise the clock: timedatectl set-ntp true (systemd-timesyncd), then timedatectl "
    "timesync-status";

int parseInt(std::string_view text) {
  int value = -1;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  return ec == std::errc() && end == text.data() + text.size() ? value : -1;
}

}  // namespace

const char* levelName(Level level) {
  switch (level) {
    case Level::Warning:
      return "warning";
    case Level::Error:
      return "error";
    case Level::Ok:
      break;
  }
  return "ok";
}

std::string formatCheckReport(const std::vector<CheckResult>& results) {
  std::size_t idWidth = 0;
  for (const auto& r : results) {
    idWidth = std::max(idWidth, r.id.size());
  }
  std::ostringstream os;
  std::array<int, 3> counts{};
  for (const auto& r : results) {
    ++counts[static_cast<std::size_t>(r.level)];
    std::string level = levelName(r.level);
    os << level << std::string(9 - level.size(), ' ') << r.id
       << std::string(idWidth - r.id.size() + 2, ' ') << r.message << "\n";
    if (!r.fix.empty()) {
      os << std::string(9 + idWidth + 2, ' ') << "fix: " << r.fix << "\n";
    }
  }
  os << "\n"
     << counts[0] << " ok, " << counts[1] << (counts[1] == 1 ? " warning, " : " warnings, ")
     << counts[2] << (counts[2] == 1 ? " error" : " errors") << "\n";
  return os.str();
}

std::string formatCheckReportJson(const std::vector<CheckResult>& results) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  std::array<unsigned, 3> counts{};
  w.StartObject();
  w.Key("checks");
  w.StartArray();
  for (const auto& r : results) {
    ++counts[static_cast<std::size_t>(r.level)];
    w.StartObject();
    w.Key("id");
    w.String(r.id.c_str());
    w.Key("result");
    w.String(levelName(r.level));
    for (const auto& [key, value] : {std::pair{"message", &r.message}, {"fix", &r.fix}}) {
      const std::string quoted = jsonString(*value);  // valid UTF-8 whatever the peer sent
      w.Key(key);
      w.RawValue(quoted.c_str(), quoted.size(), rapidjson::kStringType);
    }
    w.EndObject();
  }
  w.EndArray();
  w.Key("ok");
  w.Uint(counts[0]);
  w.Key("warnings");
  w.Uint(counts[1]);
  w.Key("errors");
  w.Uint(counts[2]);
  w.EndObject();
  return buf.GetString();
}

std::optional<std::int64_t> parseHttpDate(std::string_view text) {
  // "Sun, 06 Nov 1994 08:49:37 GMT": 29 characters at fixed places (RFC 7231 7.1.1.1).
  static constexpr std::array<std::string_view, 12> kMonths{
      "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  if (text.size() != 29 || text.substr(3, 2) != ", " || text[7] != ' ' || text[11] != ' ' ||
      text[16] != ' ' || text[19] != ':' || text[22] != ':' || text.substr(25) != " GMT") {
    return std::nullopt;
  }
  std::tm tm{};
  tm.tm_mday = parseInt(text.substr(5, 2));
  tm.tm_mon = -1;
  for (std::size_t i = 0; i < kMonths.size(); ++i) {
    if (kMonths[i] == text.substr(8, 3)) {
      tm.tm_mon = static_cast<int>(i);
    }
  }
  const int year = parseInt(text.substr(12, 4));
  tm.tm_hour = parseInt(text.substr(17, 2));
  tm.tm_min = parseInt(text.substr(20, 2));
  tm.tm_sec = parseInt(text.substr(23, 2));
  if (tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_mon < 0 || year < 1970 || tm.tm_hour < 0 ||
      tm.tm_hour > 23 || tm.tm_min < 0 || tm.tm_min > 59 || tm.tm_sec < 0 || tm.tm_sec > 60) {
    return std::nullopt;
  }
  tm.tm_year = year - 1900;
  return static_cast<std::int64_t>(timegm(&tm));
}

CheckResult judgeClock(std::int64_t hubUnix, std::int64_t localUnix, std::string_view where) {
  const std::int64_t skew = localUnix - hubUnix;
  const std::int64_t magnitude = std::llabs(skew);
  const std::string source = "the hub's clock (Date of " + std::string(where) + ")";
  if (magnitude > kMaxClockSkew.count()) {
    return errorResult("clock",
                       "the system clock is " + skewText(skew) + " " + source +
                           ": the hub refuses SAS tokens more than 5 minutes off",
                       kClockFix);
  }
  if (magnitude > kClockSkewWarning.count()) {
    return warningResult("clock",
                         "the system clock is " + skewText(skew) + " " + source +
                             " (the hub refuses SAS tokens beyond 5 minutes)",
                         kClockFix);
  }
  return okResult("clock", "the system clock agrees with " + source + " within " +
                               std::to_string(kClockSkewWarning.count()) + " s");
}

CheckResult judgeSasTokenExpiry(std::uint64_t expiry, std::uint64_t nowUnix) {
  constexpr const char* kFix =
      "give iothubd a new token: an app calls UpdateSasToken, or replace the credential "
      "sas-token and systemctl restart iothubd; a device key (authentication = symmetric-key) "
      "never expires";
  if (expiry <= nowUnix) {
    return errorResult("expiry", "the SAS token expired at " + formatUtc(expiry), kFix);
  }
  auto left = std::chrono::seconds(expiry - nowUnix);
  std::string text = "the SAS token expires at " + formatUtc(expiry) + " (in " +
                     formatDuration(left) + "); iothubd cannot renew it";
  if (left < std::chrono::hours(24)) {
    return warningResult("expiry", text, kFix);
  }
  return okResult("expiry", text);
}

CheckResult judgeCertificate(std::string_view file, std::int64_t notBefore, std::int64_t notAfter,
                             std::int64_t nowUnix) {
  const std::string what = "the device certificate " + std::string(file);
  constexpr const char* kRenew =
      "issue a new device certificate, install it as credential x509-cert (or x509_cert_file), "
      "then systemctl restart iothubd";
  if (nowUnix < notBefore) {
    return errorResult(
        "expiry", what + " is not valid before " + formatUtc(static_cast<std::uint64_t>(notBefore)),
        "check the system clock (timedatectl), or the certificate's validity period");
  }
  if (nowUnix >= notAfter) {
    return errorResult(
        "expiry", what + " expired at " + formatUtc(static_cast<std::uint64_t>(notAfter)), kRenew);
  }
  auto left = std::chrono::seconds(notAfter - nowUnix);
  std::string text = what + " is valid until " + formatUtc(static_cast<std::uint64_t>(notAfter)) +
                     " (" + formatDuration(left) + " left)";
  if (left < std::chrono::hours(24 * 30)) {
    return warningResult("expiry", text, kRenew);
  }
  return okResult("expiry", text);
}

CheckResult judgeTcp(const std::vector<AddressAttempt>& attempts, std::string_view target,
                     bool viaProxy, bool websockets) {
  std::string connected;
  std::string failed;
  for (const auto& a : attempts) {
    if (a.error.empty()) {
      connected += (connected.empty() ? "" : ", ") + a.address;
    } else {
      failed += (failed.empty() ? "" : "; ") + a.address + ": " + a.error;
    }
  }
  const std::string where(target);
  if (attempts.empty()) {
    return errorResult("tcp", "no address to connect to for " + where, "see dns above");
  }
  if (connected.empty()) {
    std::string fix =
        viaProxy ? "check [proxy] proxy_address and proxy_port, and that the proxy runs"
        : websockets
            ? "check [hub] port and the firewalls on the way to the hub (HTTPS port 443)"
            : "check [hub] port (8883) and the firewalls on the way; where only 443 is open, "
              "set [connection] websockets = true";
    return errorResult("tcp", "no address of " + where + " accepts TCP: " + failed, fix);
  }
  if (!failed.empty()) {
    return warningResult(
        "tcp", where + " accepts TCP at " + connected + ", but " + failed,
        "a connection attempt to the failing address waits for its timeout first; "
        "make the name resolve only to addresses that answer (/etc/hosts, DNS), or "
        "open the port there");
  }
  return okResult("tcp", where + " accepts TCP (" + connected + ")");
}

CheckResult judgeOutboxSpace(const FileSystemSpace& space, std::uint64_t outboxMaxBytes) {
  constexpr std::uint64_t kMinimum = 8 * 1024 * 1024;
  if (!space.exists) {
    return warningResult("outbox", space.directory + " does not exist yet",
                         "systemd creates it when iothubd starts (StateDirectory=iothubd); if "
                         "outbox_path points elsewhere, create that directory for user iothubd");
  }
  if (space.readOnly) {
    return errorResult("outbox", "the file system of " + space.directory + " is read-only",
                       "iothubd can then deliver stored messages but store no new ones: put "
                       "[outbox] outbox_path on a writable file system");
  }
  if (space.freeBytes < kMinimum || space.freeInodes == 0) {
    return errorResult(
        "outbox",
        "only " + formatBytes(space.freeBytes) + " free on the file system of " + space.directory,
        "free space there (the outbox keeps messages while the hub is unreachable)");
  }
  std::string text = formatBytes(space.freeBytes) + " free on the file system of " +
                     space.directory + " (outbox_max_bytes " + formatBytes(outboxMaxBytes) + ")";
  if (space.freeBytes < outboxMaxBytes) {
    return warningResult(
        "outbox", text,
        "a full outbox would not fit: free space or lower [outbox] outbox_max_bytes");
  }
  return okResult("outbox", text);
}

}  // namespace iothubd::ctl
