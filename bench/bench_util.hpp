// SPDX-License-Identifier: MIT
// Shared by the benchmark programs (issue 8): the payload every scenario sends, percentiles,
// per-process CPU time and RSS from /proc, and a small JSON writer for the figures.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace iothubd::bench {

/// A 200-byte JSON telemetry body (the payload), different per sequence number.
[[nodiscard]] std::string payload(std::uint64_t seq);
inline constexpr std::size_t kPayloadBytes = 200;

[[nodiscard]] inline double nowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// The `q` quantile (0..1) of `samples` (sorted in place); 0 for none.
[[nodiscard]] double quantile(std::vector<double>& samples, double q);

/// User + system CPU time of process `pid` in microseconds, all its threads (live and exited)
/// together: fields 14 and 15 of /proc/<pid>/stat. Clock-tick resolution (10 ms), so runs are
/// sized to take seconds of CPU. -1 if the process is gone.
[[nodiscard]] double processCpuMicros(pid_t pid);
/// The same for a single-threaded process (dbus-daemon, the echo service) with nanosecond
/// resolution: the run time in /proc/<pid>/schedstat. -1 if the process is gone.
[[nodiscard]] double threadCpuMicros(pid_t pid);
/// CPU time of every live thread of process `pid` in microseconds, to the nanosecond: the sum of
/// /proc/<pid>/task/*/schedstat. Threads that ended are not counted (iothubd's commit worker
/// lives as long as the daemon). -1 if the process is gone.
[[nodiscard]] double tasksCpuMicros(pid_t pid);
/// How long the file system of `directory` takes to make a small write durable, as the outbox's
/// SQLite does on each commit (WAL mode, synchronous=FULL: the new frames, then fdatasync of the
/// WAL): `samples` times a 4 KiB pwrite and an fdatasync, each timed, in microseconds. With
/// `append` each write extends the file, as a WAL does until a checkpoint lets it start over
/// (the file system must then also make the new size durable); without, it overwrites a
/// preallocated file in place, as a recycled WAL does. The file is removed afterwards. Throws if
/// the directory is not writable.
[[nodiscard]] std::vector<double> fsyncLatenciesUs(const std::string& directory,
                                                   std::size_t samples, bool append);
/// Resident set size of process `pid` in KiB (VmRSS of /proc/<pid>/status); -1 if gone.
[[nodiscard]] long residentKib(pid_t pid);
/// Resident memory of process `pid` by what it maps (/proc/<pid>/smaps), in KiB: each file by its
/// base name ("libcrypto.so.3", "iothubd"), "[heap]" for the main heap and "[anonymous]" for the
/// rest (threads' malloc arenas, stacks). Empty if the process is gone.
[[nodiscard]] std::map<std::string, long> residentByMapping(pid_t pid);
/// CPU time of the calling thread in microseconds.
[[nodiscard]] double threadCpuMicros();

/// Minimal JSON output: objects and arrays written in order, commas handled.
class Json {
 public:
  Json& beginObject(std::string_view key = {});
  Json& endObject();
  Json& beginArray(std::string_view key = {});
  Json& endArray();
  Json& value(std::string_view key, double v);
  Json& value(std::string_view key, std::int64_t v);
  Json& value(std::string_view key, std::uint64_t v) {
    return value(key, static_cast<std::int64_t>(v));
  }
  Json& value(std::string_view key, int v) { return value(key, static_cast<std::int64_t>(v)); }
  Json& value(std::string_view key, bool v);
  Json& value(std::string_view key, std::string_view v);
  Json& value(std::string_view key, const char* v) { return value(key, std::string_view(v)); }
  /// A raw JSON text (already valid JSON).
  Json& raw(std::string_view key, std::string_view json);
  [[nodiscard]] const std::string& text() const { return out_; }

 private:
  void prefix(std::string_view key);
  std::string out_;
  std::vector<bool> first_{true};
};

/// A JSON string literal for `text`.
[[nodiscard]] std::string jsonString(std::string_view text);

/// The number after `"key":` in a flat JSON object (what the helper programs print); NaN if absent.
[[nodiscard]] double jsonNumber(std::string_view json, std::string_view key);

}  // namespace iothubd::bench
