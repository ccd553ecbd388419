// SPDX-License-Identifier: MIT
// Test support: a per-test temporary directory (mkdtemp under $TMPDIR), removed on destruction.
#pragma once

#include <string>

namespace iothubd::testing {

class TempDir {
 public:
  /// `mode` is applied after creation (0711 lets an unprivileged daemon reach subdirectories
  /// it owns without listing the others).
  explicit TempDir(const std::string& prefix = "iothubd-test", unsigned mode = 0700);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// Writes `text` to `path` with `mode` (and owner `uid`/`gid` unless -1). Throws on failure.
void writeFile(const std::string& path, const std::string& text, unsigned mode = 0644, int uid = -1,
               int gid = -1);
[[nodiscard]] std::string readFile(const std::string& path);

}  // namespace iothubd::testing
