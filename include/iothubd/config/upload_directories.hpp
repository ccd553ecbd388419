// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <vector>

#include "iothubd/config/settings.hpp"
#include "iothubd/core/result.hpp"

namespace iothubd::config {

/// Where the daemon keeps what no app may read through it (issue 12): its configuration, state
/// and credentials. As the daemon was started: --config, $CREDENTIALS_DIRECTORY and
/// $STATE_DIRECTORY (each may be empty).
struct DaemonPaths {
  std::string configPath;
  std::string credentialsDirectory;
  std::string stateDirectory;  ///< systemd's StateDirectory=: ':'-separated
};

/// The directories UploadFileFromPath may never reach: the configuration file's directory and
/// its drop-in directory, the credentials directory and systemd's credential stores, the
/// directory of every secret file named in [credentials] and [proxy], the state directories
/// and the outbox's, and /proc, /sys and /dev.
[[nodiscard]] std::vector<std::string> protectedDirectories(const Settings& settings,
                                                            const DaemonPaths& paths);

/// Checks [file_upload] upload_from_path_directories at start and at every reload: each entry
/// must be an existing directory written in canonical form (no symlink, ".." or "." on the way:
/// the daemon opens it without following links) that neither is, contains nor lies inside one
/// of protectedDirectories() (compared canonically). Errc::Config naming the entry and the
/// directory it conflicts with.
[[nodiscard]] core::Result<void> checkUploadDirectories(const Settings& settings,
                                                        const DaemonPaths& paths);

}  // namespace iothubd::config
