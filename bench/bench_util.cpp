// SPDX-License-Identifier: MIT
#include "bench_util.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace iothubd::bench {

std::string payload(std::uint64_t seq) {
  char head[160];
  // Plausible sensor telemetry; the padding makes every body exactly kPayloadBytes long.
  int n = std::snprintf(
      head, sizeof head,
      R"({"deviceId":"bench","seq":%llu,"temperature":%.2f,"humidity":%.1f,)"
      R"("pressure":%.1f,"status":"ok","pad":")",
      static_cast<unsigned long long>(seq), 20.0 + static_cast<double>(seq % 1000) / 100.0,
      40.0 + static_cast<double>(seq % 200) / 10.0, 1000.0 + static_cast<double>(seq % 300) / 10.0);
  std::string body(head, static_cast<std::size_t>(n));
  body.append(kPayloadBytes - body.size() - 2, 'x');
  body += "\"}";
  return body;
}

double quantile(std::vector<double>& samples, double q) {
  if (samples.empty()) {
    return 0;
  }
  std::sort(samples.begin(), samples.end());
  auto index = static_cast<std::size_t>(q * static_cast<double>(samples.size() - 1) + 0.5);
  return samples[std::min(index, samples.size() - 1)];
}

double processCpuMicros(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name (field 2) may contain spaces: count fields after its closing parenthesis.
  auto close = text.rfind(')');
  if (close == std::string::npos) {
    return -1;
  }
  std::istringstream fields(text.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; fields >> field; ++i) {
    if (i == 14) {
      utime = std::strtoull(field.c_str(), nullptr, 10);
    } else if (i == 15) {
      stime = std::strtoull(field.c_str(), nullptr, 10);
      break;
    }
  }
  static const double kTick = 1e6 / static_cast<double>(::sysconf(_SC_CLK_TCK));
  return static_cast<double>(utime + stime) * kTick;
}

double threadCpuMicros(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/schedstat");
  unsigned long long ns = 0;
  if (!(in >> ns)) {
    return -1;
  }
  return static_cast<double>(ns) / 1e3;
}

double tasksCpuMicros(pid_t pid) {
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  DIR* dir = ::opendir(tasks.c_str());
  if (dir == nullptr) {
    return -1;
  }
  double total = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] == '.') {
      continue;
    }
    std::ifstream in(tasks + "/" + entry->d_name + "/schedstat");
    unsigned long long ns = 0;
    if (in >> ns) {
      total += static_cast<double>(ns) / 1e3;
    }
  }
  ::closedir(dir);
  return total;
}

std::vector<double> fsyncLatenciesUs(const std::string& directory, std::size_t samples,
                                     bool append) {
  const std::string path = directory + "/fsync-probe";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    throw std::runtime_error("cannot create " + path);
  }
  constexpr std::size_t kPage = 4096;
  constexpr std::size_t kPages = 256;
  const std::string page(kPage, 'w');
  bool ok = true;
  if (!append) {
    // Preallocated and durable first, as a recycled WAL: each commit overwrites pages in place.
    for (std::size_t i = 0; i < kPages && ok; ++i) {
      ok = ::pwrite(fd, page.data(), kPage, static_cast<off_t>(i * kPage)) ==
           static_cast<ssize_t>(kPage);
    }
    ok = ok && ::fsync(fd) == 0;
  }
  std::vector<double> out;
  for (std::size_t i = 0; i < samples && ok; ++i) {
    const std::size_t at = append ? i : i % kPages;
    ok = ::pwrite(fd, page.data(), kPage, static_cast<off_t>(at * kPage)) ==
         static_cast<ssize_t>(kPage);
    const double t0 = nowSeconds();
    ok = ok && ::fdatasync(fd) == 0;
    out.push_back((nowSeconds() - t0) * 1e6);
  }
  ::close(fd);
  ::unlink(path.c_str());
  if (!ok) {
    throw std::runtime_error("cannot write and sync " + path);
  }
  return out;
}

long residentKib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::strtol(line.c_str() + 6, nullptr, 10);
    }
  }
  return -1;
}

std::map<std::string, long> residentByMapping(pid_t pid) {
  std::map<std::string, long> out;
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps");
  std::string line;
  std::string current = "[anonymous]";
  while (std::getline(in, line)) {
    if (line.rfind("Rss:", 0) == 0) {
      out[current] += std::strtol(line.c_str() + 4, nullptr, 10);
      continue;
    }
    // A mapping's header: "start-end perms offset dev inode [path]"; field lines end in "kB"
    // or are "VmFlags: ..." (a name and a colon).
    const auto space = line.find(' ');
    if (space == std::string::npos || line.compare(0, space, "VmFlags:") == 0 ||
        line[space - 1] == ':') {
      continue;
    }
    const auto slash = line.find('/');
    if (slash != std::string::npos) {
      current = line.substr(line.rfind('/') + 1);
    } else {
      current = line.find("[heap]") != std::string::npos ? "[heap]" : "[anonymous]";
    }
  }
  return out;
}

double threadCpuMicros() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

std::string jsonString(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

void Json::prefix(std::string_view key) {
  if (!first_.back()) {
    out_ += ",";
  }
  first_.back() = false;
  if (!key.empty()) {
    out_ += jsonString(key) + ":";
  }
}

Json& Json::beginObject(std::string_view key) {
  prefix(key);
  out_ += "{";
  first_.push_back(true);
  return *this;
}

Json& Json::endObject() {
  first_.pop_back();
  out_ += "}";
  return *this;
}

Json& Json::beginArray(std::string_view key) {
  prefix(key);
  out_ += "[";
  first_.push_back(true);
  return *this;
}

Json& Json::endArray() {
  first_.pop_back();
  out_ += "]";
  return *this;
}

Json& Json::value(std::string_view key, double v) {
  prefix(key);
  if (!std::isfinite(v)) {
    out_ += "null";
    return *this;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  out_ += buf;
  return *this;
}

Json& Json::value(std::string_view key, std::int64_t v) {
  prefix(key);
  out_ += std::to_string(v);
  return *this;
}

Json& Json::value(std::string_view key, bool v) {
  prefix(key);
  out_ += v ? "true" : "false";
  return *this;
}

Json& Json::value(std::string_view key, std::string_view v) {
  prefix(key);
  out_ += jsonString(v);
  return *this;
}

Json& Json::raw(std::string_view key, std::string_view json) {
  prefix(key);
  out_ += json;
  return *this;
}

double jsonNumber(std::string_view json, std::string_view key) {
  std::string needle = "\"" + std::string(key) + "\":";
  auto at = json.find(needle);
  if (at == std::string_view::npos) {
    return std::nan("");
  }
  std::string rest(json.substr(at + needle.size(), 40));
  char* end = nullptr;
  double v = std::strtod(rest.c_str(), &end);
  return end == rest.c_str() ? std::nan("") : v;
}

}  // namespace iothubd::bench
