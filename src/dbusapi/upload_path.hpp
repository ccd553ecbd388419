// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "iothubd/core/result.hpp"
#include "iothubd/core/unique_fd.hpp"
#include "peer_credentials.hpp"

namespace iothubd::dbusapi {

/// Opens the file UploadFileFromPath names, confined (issue 12, README "Security"): iothubd
/// reads files with the caller's rights, never its own, so a path is accepted only
///   - under one of `directories` ([file_upload] upload_from_path_directories, canonical paths
///     checked at configuration load to be apart from the daemon's state, configuration and
///     credentials and from /proc, /sys and /dev); none listed: refused;
///   - resolved by openat2() beneath that directory without symlinks, magic links ("/proc/self/
///     fd/N", "/dev/fd/N") or mount crossings (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
///     RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV), so ".." cannot leave it;
///   - to a regular file with one name (a hard link could pass off a file from elsewhere on the
///     same file system) or a FIFO;
///   - that `caller` could read by its own uid and groups against owner, group, mode and access
///     ACL (root always); an id the daemon's user namespace cannot map matches nobody.
/// Errors: AccessDenied (each reason above, saying which), NotFound, InvalidArgument (not an
/// absolute path, not a file or FIFO), NotSupported (kernel without openat2), Io. The path is
/// quoted cut (core::quoted).
[[nodiscard]] core::Result<core::UniqueFd> openForUpload(
    const std::vector<std::string>& directories, std::string_view path,
    const PeerCredentials& caller);

}  // namespace iothubd::dbusapi
