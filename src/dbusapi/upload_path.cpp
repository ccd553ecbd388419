// SPDX-License-Identifier: MIT
#include "upload_path.hpp"

#include <fcntl.h>
#include <linux/limits.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>

#include "iothubd/core/log.hpp"

namespace iothubd::dbusapi {
namespace {

using core::Errc;
using core::fail;

/// The kernel's default overflowuid/overflowgid: what stat() shows for an owner the daemon's user
/// namespace (PrivateUsers=yes) does not map. Such an owner is unknown, never the caller.
constexpr uid_t kOverflowId = 65534;

/// glibc 2.36 (Debian 12) has no openat2() wrapper.
int openat2(int dirfd, const char* path, std::uint64_t flags, std::uint64_t resolve) {
  open_how how{};
  how.flags = flags;
  how.resolve = resolve;
  for (int attempt = 0;; ++attempt) {
    const auto fd = ::syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    // EAGAIN: a concurrent rename made the kernel unsure that ".." stayed beneath; it asks for a
    // retry. A few, then give up (a caller renaming in a loop gets an error, nothing more).
    if (fd >= 0 || errno != EAGAIN || attempt == 3) {
      return static_cast<int>(fd);
    }
  }
}

std::string modeText(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

core::Error openError(int err, const std::string& what) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return {Errc::NotFound, what + ": no such file", err};
    case EXDEV:
      return {Errc::AccessDenied,
              what + ": leaves its upload directory (\"..\", an absolute part) or crosses a mount",
              err};
    case ELOOP:
      return {Errc::AccessDenied, what + ": goes through a symbolic link, which is not followed",
              err};
    case EACCES:
    case EPERM:
      return {Errc::AccessDenied, what + ": iothubd may not read it", err};
    case ENOSYS:
      return {Errc::NotSupported,
              what + ": this kernel has no openat2() (Linux 5.6 or later is needed)", err};
    case ENXIO:
    case ENODEV:
      return {Errc::InvalidArgument, what + ": neither a regular file nor a pipe", err};
    default:
      return {Errc::Io, what + ": " + std::strerror(err), err};
  }
}

/// One entry of a POSIX access ACL as the kernel hands it out (system.posix_acl_access:
/// little-endian version 2 header, then {tag u16, perm u16, id u32} entries; acl(5)).
struct AclEntry {
  std::uint16_t tag = 0;
  std::uint16_t perm = 0;
  std::uint32_t id = 0;
};
constexpr std::uint16_t kAclUserObj = 0x01, kAclUser = 0x02, kAclGroupObj = 0x04, kAclGroup = 0x08,
                        kAclMask = 0x10, kAclOther = 0x20;
constexpr std::uint16_t kAclRead = 0x04;

/// The file's access ACL; nullopt when it has none, an empty list when it cannot be read or
/// parsed (then nobody but root and the owner counts as a reader).
std::optional<std::vector<AclEntry>> accessAcl(int fd) {
  unsigned char buf[4096];
  const ssize_t n = ::fgetxattr(fd, "system.posix_acl_access", buf, sizeof buf);
  if (n < 0) {
    return errno == ENODATA || errno == ENOTSUP ? std::nullopt
                                                : std::optional<std::vector<AclEntry>>({});
  }
  const auto le16 = [&](std::size_t at) {
    return static_cast<std::uint16_t>(buf[at] | (buf[at + 1] << 8));
  };
  const auto le32 = [&](std::size_t at) {
    return static_cast<std::uint32_t>(buf[at]) | (static_cast<std::uint32_t>(buf[at + 1]) << 8) |
           (static_cast<std::uint32_t>(buf[at + 2]) << 16) |
           (static_cast<std::uint32_t>(buf[at + 3]) << 24);
  };
  const auto size = static_cast<std::size_t>(n);
  if (size < 4 || le32(0) != 2 || (size - 4) % 8 != 0) {
    return std::vector<AclEntry>{};
  }
  std::vector<AclEntry> entries;
  for (std::size_t at = 4; at < size; at += 8) {
    entries.push_back({le16(at), le16(at + 2), le32(at + 4)});
  }
  return entries;
}

/// Whether `caller` may read a file of this owner, group, mode and ACL by the POSIX rules (the
/// first matching class decides; acl(5) "access check algorithm").
bool callerMayRead(const struct stat& st, const std::optional<std::vector<AclEntry>>& acl,
                   const PeerCredentials& caller) {
  if (caller.isRoot()) {
    return true;
  }
  if (st.st_uid != kOverflowId && st.st_uid == caller.uid) {
    return (st.st_mode & S_IRUSR) != 0;
  }
  if (!acl) {
    if (st.st_gid != kOverflowId && caller.inGroup(st.st_gid)) {
      return (st.st_mode & S_IRGRP) != 0;
    }
    return (st.st_mode & S_IROTH) != 0;
  }
  std::uint16_t mask = 0x7;
  for (const auto& e : *acl) {
    if (e.tag == kAclMask) {
      mask = e.perm;
    }
  }
  bool groupMatched = false;
  bool groupReads = false;
  std::optional<bool> other;
  for (const auto& e : *acl) {
    const bool read = (e.perm & kAclRead) != 0;
    switch (e.tag) {
      case kAclUser:
        if (e.id != kOverflowId && e.id == caller.uid) {
          return read && (mask & kAclRead) != 0;
        }
        break;
      case kAclGroupObj:
      case kAclGroup: {
        const gid_t gid = e.tag == kAclGroupObj ? st.st_gid : static_cast<gid_t>(e.id);
        if (gid != kOverflowId && caller.inGroup(gid)) {
          groupMatched = true;
          groupReads |= read && (mask & kAclRead) != 0;
        }
        break;
      }
      case kAclOther:
        other = read;
        break;
      case kAclUserObj:
      default:
        break;
    }
  }
  if (groupMatched) {
    return groupReads;
  }
  return other.value_or(false);
}

}  // namespace

core::Result<core::UniqueFd> openForUpload(const std::vector<std::string>& directories,
                                           std::string_view path, const PeerCredentials& caller) {
  if (directories.empty()) {
    return fail(Errc::AccessDenied,
                "UploadFileFromPath is turned off: iothubd opens files only with the caller's "
                "rights, so pass an open descriptor with UploadFile, or have the administrator "
                "list the directories apps may upload from in [file_upload] "
                "upload_from_path_directories (iothubd.conf(5))");
  }
  const std::string what = core::quoted(path);
  if (path.empty() || path.front() != '/') {
    return fail(Errc::InvalidArgument, what + " is not an absolute path");
  }
  if (path.size() >= PATH_MAX) {
    return fail(Errc::InvalidArgument,
                what + " is longer than " + std::to_string(PATH_MAX - 1) + " bytes");
  }
  const std::string* directory = nullptr;
  for (const auto& d : directories) {
    if (path.size() > d.size() + 1 && path.compare(0, d.size(), d) == 0 && path[d.size()] == '/') {
      directory = &d;
      break;
    }
  }
  if (directory == nullptr) {
    return fail(Errc::AccessDenied, what +
                                        " is not inside a directory listed in [file_upload] "
                                        "upload_from_path_directories");
  }
  // The listed directory itself is canonical (checked at load); opened without following a
  // symlink, so that a directory replaced by a link since then is refused.
  core::UniqueFd dir(openat2(AT_FDCWD, directory->c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC,
                             RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS));
  if (!dir) {
    return fail(openError(errno, "upload directory " + core::quoted(*directory)));
  }
  const std::string rest(path.substr(directory->size() + 1));
  // O_NONBLOCK: a FIFO without a writer must not block the loop in open().
  core::UniqueFd fd(
      openat2(dir.get(), rest.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY,
              RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV));
  if (!fd) {
    return fail(openError(errno, "cannot upload " + what));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return fail(openError(errno, "cannot upload " + what));
  }
  if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode)) {
    return fail(Errc::InvalidArgument, what + " is neither a regular file nor a pipe");
  }
  if (S_ISREG(st.st_mode) && st.st_nlink > 1) {
    return fail(Errc::AccessDenied,
                what + " has " + std::to_string(st.st_nlink) +
                    " hard links: iothubd uploads files by path only when they have one name");
  }
  const auto acl = accessAcl(fd.get());
  if (!callerMayRead(st, acl, caller)) {
    return fail(Errc::AccessDenied,
                what + " is not readable by the caller (uid " + std::to_string(caller.uid) +
                    "; file owner " + std::to_string(st.st_uid) + ", group " +
                    std::to_string(st.st_gid) + ", mode " + modeText(st.st_mode) +
                    (acl ? ", with an ACL" : "") +
                    "): iothubd opens files with the caller's rights, not its own");
  }
  return fd;
}

}  // namespace iothubd::dbusapi
