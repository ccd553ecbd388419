// SPDX-License-Identifier: MIT
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "iothubd/core/result.hpp"
#include "iothubd/provisioning/provisioning_client.hpp"

namespace iothubd::provisioning {

/// The file name of the stored assignment in the state directory ($STATE_DIRECTORY).
inline constexpr std::string_view kAssignmentFileName = "dps-assignment.json";

/// DPS's assignment as kept across restarts: where to connect without asking DPS again.
struct StoredAssignment {
  std::string assignedHub;
  std::string deviceId;
  std::uint64_t assignedAtUnix = 0;  ///< when DPS answered (wall clock, UTC)
  std::string substatus;
  /// identityFingerprint() of the settings it was made for: when they change, it is void.
  std::string identity;
};

/// What a registration is for, as one opaque string: "sha256:" + hex of a digest over the global
/// endpoint, ID scope, registration id, attestation, the credential (for a symmetric key an
/// HMAC of a fixed label under it, so the digest says nothing about the key; for X.509 the
/// digest of the certificate file, whose renewal DPS must see for an individual enrollment), the
/// custom payload and the model id. Errors: Errc::Io when the certificate file cannot be read.
[[nodiscard]] core::Result<std::string> identityFingerprint(const ProvisioningOptions& options);

/// Reads and writes the assignment file `{stateDirectory}/dps-assignment.json` (mode 0600):
/// `{"version":1,"assignedHub":"…","deviceId":"…","assignedAt":1700000000,
///   "assignedAtUtc":"2023-11-14T22:13:20Z","substatus":"…","identity":"sha256:…"}`.
/// Writes are atomic and durable: a temporary file in the same directory, fsync, rename over the
/// old one, fsync of the directory; a power cut leaves the old or the new assignment, never half.
/// Not thread-safe; loop thread only (the file is small: reading and writing do not block long).
class AssignmentStore {
 public:
  explicit AssignmentStore(std::string stateDirectory);

  /// The stored assignment if there is one made for `identity`. Missing file: none. A file for
  /// other settings: none (logged at info; it is replaced by the next save). A file that cannot be
  /// read or parsed, or whose hub or device id is not valid: none, moved aside to
  /// `dps-assignment.json.corrupt` and logged as a warning, so the device registers again and the
  /// bad file stays for inspection.
  [[nodiscard]] std::optional<StoredAssignment> load(std::string_view identity);

  /// Replaces the stored assignment. Errors: Errc::Io with errno (the directory is missing or
  /// read-only, the disk is full); the previous file is then unchanged.
  [[nodiscard]] core::Result<void> save(const StoredAssignment& assignment);

  /// Forgets the assignment (before an operator-requested re-registration). A missing file is
  /// fine. Errors: Errc::Io with errno.
  [[nodiscard]] core::Result<void> clear();

  [[nodiscard]] const std::string& path() const noexcept { return path_; }

 private:
  std::string directory_;
  std::string path_;
};

}  // namespace iothubd::provisioning
