// SPDX-License-Identifier: MIT
#include "format.hpp"

#include <rapidjson/prettywriter.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstdio>
#include <ctime>
#include <sstream>

#include "iothubd/core/utf8.hpp"
#include "iothubd/proto/base64.hpp"

namespace iothubd::ctl {
namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

/// Numbers stay text (RapidJSON 1.1.0's own conversion has undefined behaviour on hostile numbers,
/// found by our fuzzer), nesting is parsed without recursion, UTF-8 is checked.
constexpr unsigned kParseFlags = rapidjson::kParseNumbersAsStringsFlag |
                                 rapidjson::kParseIterativeFlag |
                                 rapidjson::kParseValidateEncodingFlag;

std::string clean(std::string_view text) {
  return core::validUtf8(text, text.size() + 4);
}

void writeString(Writer& w, std::string_view text) {
  std::string s = clean(text);
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

void writeMap(Writer& w, const std::map<std::string, std::string>& map) {
  w.StartObject();
  for (const auto& [k, v] : map) {
    writeString(w, k);
    writeString(w, v);
  }
  w.EndObject();
}

std::string fixed1(double value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", value);
  return buf;
}

template <class T>
const T* get(const DaemonStatus& s, const char* name) {
  auto it = s.properties.find(name);
  return it == s.properties.end() ? nullptr : std::get_if<T>(&it->second);
}

std::string text(const DaemonStatus& s, const char* name) {
  const auto* v = get<std::string>(s, name);
  return v != nullptr ? *v : std::string();
}

std::uint64_t count(const DaemonStatus& s, const char* name) {
  const auto* v = get<std::uint64_t>(s, name);
  return v != nullptr ? *v : 0;
}

}  // namespace

std::string formatBytes(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB"};
  if (bytes < 1024) {
    return std::to_string(bytes) + " B";
  }
  double value = static_cast<double>(bytes) / 1024.0;
  std::size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < std::size(kUnits)) {
    value /= 1024.0;
    ++unit;
  }
  return fixed1(value) + " " + kUnits[unit];
}

std::string formatDuration(std::chrono::seconds duration) {
  auto s = duration.count() < 0 ? 0 : duration.count();
  const long long days = s / 86400;
  const long long hours = (s % 86400) / 3600;
  const long long minutes = (s % 3600) / 60;
  const long long seconds = s % 60;
  if (days > 0) {
    return std::to_string(days) + (days == 1 ? " day" : " days") +
           (hours > 0 ? " " + std::to_string(hours) + " h" : "");
  }
  if (hours > 0) {
    return std::to_string(hours) + " h" +
           (minutes > 0 ? " " + std::to_string(minutes) + " min" : "");
  }
  if (minutes > 0) {
    return std::to_string(minutes) + " min" +
           (seconds > 0 ? " " + std::to_string(seconds) + " s" : "");
  }
  return std::to_string(seconds) + " s";
}

std::string formatUtc(std::uint64_t unixSeconds) {
  auto t = static_cast<std::time_t>(unixSeconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::string progressBar(std::string_view name, std::uint64_t done, std::uint64_t total,
                        std::size_t barWidth) {
  std::string line(name);
  if (total == 0) {
    return line + " " + formatBytes(done);
  }
  const std::uint64_t shown = done > total ? total : done;
  const auto filled = static_cast<std::size_t>(shown * barWidth / total);
  const auto percent = static_cast<unsigned>(shown * 100 / total);
  line += " [" + std::string(filled, '#') + std::string(barWidth - filled, '.') + "] ";
  std::string pct = std::to_string(percent) + "%";
  line += std::string(4 - std::min<std::size_t>(4, pct.size()), ' ') + pct;
  line += "  " + formatBytes(shown) + " of " + formatBytes(total);
  return line;
}

std::string progressLine(std::string_view name, std::uint64_t done, std::uint64_t total) {
  std::string line = "upload " + std::string(name) + ": " + std::to_string(done);
  if (total == 0) {
    return line + " bytes";
  }
  return line + " of " + std::to_string(total) + " bytes (" +
         std::to_string((done > total ? total : done) * 100 / total) + "%)";
}

std::string jsonString(std::string_view text) {
  rapidjson::StringBuffer buf;
  Writer w(buf);
  writeString(w, text);
  return buf.GetString();
}

std::string jsonStringMap(const std::map<std::string, std::string>& map) {
  rapidjson::StringBuffer buf;
  Writer w(buf);
  writeMap(w, map);
  return buf.GetString();
}

bool isJson(std::string_view text) {
  return compactJson(text).has_value();
}

namespace {

/// Passes the reader's events to a writer, numbers as the text they were: RapidJSON 1.1.0's
/// Writer::RawNumber would quote them.
template <class Out>
struct Forward : rapidjson::BaseReaderHandler<rapidjson::UTF8<>, Forward<Out>> {
  explicit Forward(Out& o) : out(o) {}
  // RapidJSON's Handler concept fixes these names.
  // NOLINTBEGIN(readability-identifier-naming)
  bool Null() { return out.Null(); }
  bool Bool(bool b) { return out.Bool(b); }
  bool RawNumber(const char* s, rapidjson::SizeType n, bool) {
    return out.RawValue(s, n, rapidjson::kNumberType);
  }
  bool String(const char* s, rapidjson::SizeType n, bool) { return out.String(s, n); }
  bool StartObject() { return out.StartObject(); }
  bool Key(const char* s, rapidjson::SizeType n, bool) { return out.Key(s, n); }
  bool EndObject(rapidjson::SizeType n) { return out.EndObject(n); }
  bool StartArray() { return out.StartArray(); }
  bool EndArray(rapidjson::SizeType n) { return out.EndArray(n); }
  // NOLINTEND(readability-identifier-naming)
  Out& out;
};

template <class Out>
core::Result<std::string> reformat(std::string_view json) {
  rapidjson::StringBuffer buf;
  Out out(buf);
  if constexpr (std::is_same_v<Out, rapidjson::PrettyWriter<rapidjson::StringBuffer>>) {
    out.SetIndent(' ', 2);
  }
  Forward<Out> forward(out);
  rapidjson::Reader reader;
  rapidjson::MemoryStream ms(json.data(), json.size());
  rapidjson::EncodedInputStream<rapidjson::UTF8<>, rapidjson::MemoryStream> in(ms);
  if (reader.Parse<kParseFlags>(in, forward).IsError()) {
    return core::fail(core::Errc::InvalidArgument,
                      "not JSON (at byte " + std::to_string(reader.GetErrorOffset()) + ")");
  }
  return std::string(buf.GetString(), buf.GetSize());
}
}  // namespace

core::Result<std::string> prettyJson(std::string_view json) {
  return reformat<rapidjson::PrettyWriter<rapidjson::StringBuffer>>(json);
}

core::Result<std::string> compactJson(std::string_view json) {
  return reformat<Writer>(json);
}

std::string formatStatus(const DaemonStatus& s, std::uint64_t nowUnix) {
  std::ostringstream os;
  std::string version = text(s, "Version");
  os << "iothubd" << (version.empty() ? "" : " " + version);
  if (s.pid || s.uptime) {
    os << " (";
    if (s.pid) {
      os << "pid " << *s.pid;
    }
    if (s.uptime) {
      os << (s.pid ? ", " : "") << "up " << formatDuration(*s.uptime);
    }
    os << ")";
  }
  os << "\n";
  auto line = [&os](const char* label, const std::string& value) {
    std::string l(label);
    os << std::string(l.size() < 10 ? 10 - l.size() : 0, ' ') << l << ": " << value << "\n";
  };
  line("State", text(s, "ConnectionState"));
  std::string hub = text(s, "HostName");
  if (!text(s, "GatewayHostName").empty()) {
    hub += " via gateway " + text(s, "GatewayHostName");
  }
  line("Hub", hub);
  if (std::string dps = text(s, "ProvisioningState"); !dps.empty() && dps != "not-configured") {
    line("DPS", dps);
  }
  line("Device", text(s, "DeviceId"));
  if (!text(s, "ModuleId").empty()) {
    line("Module", text(s, "ModuleId"));
  }
  std::string auth = text(s, "AuthenticationType");
  if (std::uint64_t expiry = count(s, "SasTokenExpiry"); expiry != 0) {
    auth += "; token expires " + formatUtc(expiry);
    if (expiry > nowUnix) {
      auth += " (in " + formatDuration(std::chrono::seconds(expiry - nowUnix)) + ")";
    } else {
      auth += " (expired)";
    }
  }
  line("Auth", auth);
  const std::uint64_t length = count(s, "OutboxLength");
  line("Outbox", std::to_string(length) + (length == 1 ? " message, " : " messages, ") +
                     formatBytes(count(s, "OutboxBytes")));
  line("Messages", std::to_string(count(s, "MessagesDelivered")) + " delivered, " +
                       std::to_string(count(s, "MessagesDropped")) + " dropped since start");
  if (const auto* handlers = get<std::map<std::string, std::string>>(s, "MethodHandlers")) {
    std::string names;
    for (const auto& [name, owner] : *handlers) {
      names += (names.empty() ? "" : ", ") + name;
    }
    line("Methods", names.empty() ? "none claimed" : names);
  }
  std::string lastError = text(s, "LastError");
  line("Last error", lastError.empty() ? "none" : lastError);
  return os.str();
}

std::string formatStatusJson(const DaemonStatus& s) {
  rapidjson::StringBuffer buf;
  Writer w(buf);
  w.StartObject();
  for (const auto& [name, value] : s.properties) {
    writeString(w, name);
    std::visit(
        [&w](const auto& v) {
          using T = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<T, bool>) {
            w.Bool(v);
          } else if constexpr (std::is_same_v<T, std::uint64_t>) {
            w.Uint64(v);
          } else if constexpr (std::is_same_v<T, std::string>) {
            writeString(w, v);
          } else {
            writeMap(w, v);
          }
        },
        value);
  }
  if (s.pid) {
    w.Key("Pid");
    w.Uint(*s.pid);
  }
  if (s.uptime) {
    w.Key("UptimeSeconds");
    w.Int64(s.uptime->count());
  }
  w.EndObject();
  return buf.GetString();
}

std::string formatMethodClaims(const std::vector<MethodClaim>& claims) {
  if (claims.empty()) {
    return "No direct method is claimed: the hub's requests are answered 501.\n";
  }
  std::size_t width = 6;
  for (const auto& c : claims) {
    width = std::max(width, c.method.size());
  }
  std::ostringstream os;
  os << "METHOD" << std::string(width - 6 + 2, ' ') << "CLAIMED BY\n";
  for (const auto& c : claims) {
    os << c.method << std::string(width - c.method.size() + 2, ' ') << c.owner;
    if (c.pid) {
      os << " (pid " << *c.pid << (c.command.empty() ? "" : ": " + c.command) << ")";
    }
    os << "\n";
  }
  return os.str();
}

std::string formatMethodClaimsJson(const std::vector<MethodClaim>& claims) {
  rapidjson::StringBuffer buf;
  Writer w(buf);
  w.StartArray();
  for (const auto& c : claims) {
    w.StartObject();
    w.Key("method");
    writeString(w, c.method);
    w.Key("owner");
    writeString(w, c.owner);
    if (c.pid) {
      w.Key("pid");
      w.Uint(*c.pid);
    }
    if (!c.command.empty()) {
      w.Key("command");
      writeString(w, c.command);
    }
    w.EndObject();
  }
  w.EndArray();
  return buf.GetString();
}

std::string formatCloudMessage(std::string_view body,
                               const std::map<std::string, std::string>& properties,
                               const std::map<std::string, std::string>& system) {
  rapidjson::StringBuffer buf;
  Writer w(buf);
  w.StartObject();
  if (clean(body) == body) {
    w.Key("body");
    writeString(w, body);
  } else {
    w.Key("bodyBase64");
    writeString(w, proto::base64Encode(body));
  }
  w.Key("properties");
  writeMap(w, properties);
  w.Key("systemProperties");
  writeMap(w, system);
  w.EndObject();
  return buf.GetString();
}

}  // namespace iothubd::ctl
