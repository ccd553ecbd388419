// SPDX-License-Identifier: MIT
#include "iothubd/config/upload_directories.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <system_error>

namespace iothubd::config {
namespace {

using core::Errc;
using core::fail;

namespace fs = std::filesystem;

/// `path` with symlinks resolved where it exists (a protected directory may not exist yet: then
/// its lexical form).
std::string canonicalOrLexical(const std::string& path) {
  std::error_code ec;
  auto canonical = fs::weakly_canonical(fs::path(path), ec);
  std::string out = ec ? fs::path(path).lexically_normal().string() : canonical.string();
  while (out.size() > 1 && out.back() == '/') {
    out.pop_back();
  }
  return out;
}

std::string parentOf(const std::string& file) {
  return fs::path(file).lexically_normal().parent_path().string();
}

/// Whether `inner` is `outer` or lies beneath it (both canonical, absolute).
bool within(std::string_view inner, std::string_view outer) {
  if (outer == "/") {
    return true;
  }
  return inner == outer || (inner.size() > outer.size() && inner.substr(0, outer.size()) == outer &&
                            inner[outer.size()] == '/');
}

}  // namespace

std::vector<std::string> protectedDirectories(const Settings& s, const DaemonPaths& paths) {
  std::vector<std::string> dirs;
  auto add = [&](const std::string& dir) {
    if (!dir.empty()) {
      dirs.push_back(dir);
    }
  };
  if (!paths.configPath.empty()) {
    add(parentOf(fs::absolute(paths.configPath).string()));
    add(fs::absolute(paths.configPath).string() + ".d");
  }
  add(paths.credentialsDirectory);
  // systemd's credential stores (LoadCredential= searches them) and where it mounts credentials.
  for (const char* store : {"/etc/credstore", "/etc/credstore.encrypted", "/run/credstore",
                            "/run/credstore.encrypted", "/usr/lib/credstore", "/run/credentials"}) {
    add(store);
  }
  for (const std::string* file :
       {&s.connectionStringFile, &s.sharedAccessKeyFile, &s.sasTokenFile, &s.x509CertFile,
        &s.x509KeyFile, &s.x509PassPhraseFile, &s.proxy.passwordFile}) {
    if (!file->empty()) {
      add(parentOf(fs::absolute(*file).string()));
    }
  }
  std::string_view state = paths.stateDirectory;
  while (!state.empty()) {
    auto colon = state.find(':');
    add(std::string(state.substr(0, colon)));
    state = colon == std::string_view::npos ? std::string_view() : state.substr(colon + 1);
  }
  add("/var/lib/iothubd");
  if (!s.outboxPath.empty()) {
    add(parentOf(fs::absolute(s.outboxPath).string()));
  }
  for (const char* kernel : {"/proc", "/sys", "/dev"}) {
    add(kernel);
  }
  return dirs;
}

core::Result<void> checkUploadDirectories(const Settings& s, const DaemonPaths& paths) {
  if (s.uploadFromPathDirectories.empty()) {
    return {};
  }
  const std::string key = "[file_upload] upload_from_path_directories: ";
  std::vector<std::pair<std::string, std::string>> guarded;  // canonical, as named
  for (const auto& dir : protectedDirectories(s, paths)) {
    guarded.emplace_back(canonicalOrLexical(dir), dir);
  }
  for (const auto& dir : s.uploadFromPathDirectories) {
    std::error_code ec;
    auto canonical = fs::canonical(fs::path(dir), ec);
    if (ec) {
      return fail(Errc::Config, key + dir + ": " + ec.message());
    }
    if (!fs::is_directory(canonical, ec)) {
      return fail(Errc::Config, key + dir + ": not a directory");
    }
    if (canonical.string() != dir) {
      return fail(Errc::Config, key + dir +
                                    ": not canonical (a symbolic link, \".\" or \"..\" on the "
                                    "way); write " +
                                    canonical.string());
    }
    for (const auto& [protectedDir, named] : guarded) {
      const char* relation = dir == protectedDir         ? " is "
                             : within(protectedDir, dir) ? " contains "
                             : within(dir, protectedDir) ? " lies inside "
                                                         : nullptr;
      if (relation != nullptr) {
        std::string why = key;
        why += dir;
        why += relation;
        why += named;
        why +=
            ", which holds the daemon's own configuration, state, credentials or kernel "
            "interfaces; list a directory apart from it";
        return fail(Errc::Config, std::move(why));
      }
    }
  }
  return {};
}

}  // namespace iothubd::config
