// SPDX-License-Identifier: MIT
// Test support for file upload (protocol doc section 8): Azurite as the storage account, and
// the hub's two HTTPS file-upload endpoints (file_upload_hub.py) in front of it. Both run as
// child processes on free 127.0.0.1 ports with the hub emulator's PKI; see README.md here.
//
// Threading: test thread only. Control calls are blocking HTTPS requests (libcurl easy) bounded
// by a timeout; never call them while the code under test needs the same thread to make progress.
// Errors: setup failures and failed control calls throw std::runtime_error.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace iothubd::hubemu {

class HubEmulator;

/// A child process whose stdout and stderr go to a log file; waits on the log (inotify) and on
/// the process (pidfd), never by sleeping.
class ChildProcess {
 public:
  ChildProcess(std::vector<std::string> argv, std::string logPath);
  ~ChildProcess();  // stop()
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  void start();
  /// The first log line containing `needle`, or nullopt if the process exited or `timeout` passed.
  std::optional<std::string> waitForLine(const std::string& needle,
                                         std::chrono::milliseconds timeout);
  /// SIGTERM, wait up to 5 s, then SIGKILL; reaps the child. Idempotent.
  void stop();
  [[nodiscard]] bool running() const { return pid_ > 0; }
  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] std::string log() const;

 private:
  std::vector<std::string> argv_;
  std::string logPath_;
  pid_t pid_ = -1;
};

/// Path of azurite-blob: $IOTHUBD_AZURITE, else tests/node_modules/.bin/azurite-blob of the
/// source tree (scripts/test runs `npm ci` there).
std::string defaultAzuritePath();

/// Azurite's blob service, in memory, HTTPS with the hub emulator's server certificate.
class Azurite {
 public:
  static constexpr const char* kAccount = "devstoreaccount1";
  /// Azurite's well-known development key (public, documented by Microsoft).
  static constexpr const char* kAccountKey =
      "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

  /// Certificates from `pkiDir` (ca.crt, server.crt, server.key: HubEmulator::dir()).
  explicit Azurite(std::string pkiDir, std::string binary = defaultAzuritePath());
  ~Azurite();
  Azurite(const Azurite&) = delete;
  Azurite& operator=(const Azurite&) = delete;

  /// Starts on a free port and returns once Azurite says it listens (about 2-3 s).
  void start();
  void stop();
  [[nodiscard]] bool running() const;
  [[nodiscard]] int port() const { return port_; }
  [[nodiscard]] std::string log() const;

 private:
  std::string pkiDir_;
  std::string binary_;
  std::string dir_;
  int port_ = 0;
  std::unique_ptr<ChildProcess> process_;
};

/// One notification the hub endpoint received (recorded before it answered).
struct UploadNotificationRecord {
  std::string device;
  std::string correlationId;
  bool isSuccess = false;
  int statusCode = 0;
  std::string statusDescription;
  std::string blobName;  ///< of the storage-info request with that correlation id
  bool known = false;    ///< the correlation id was handed out to this device
};

/// One call to the hub endpoints and how it was answered.
struct HubRequestRecord {
  std::string kind;  ///< "storage-info" or "notification"
  std::string device;
  int status = 0;
  std::string reason;  ///< why the SAS check refused it
};

struct BlobRecord {
  bool exists = false;
  std::uint64_t size = 0;
  std::string sha256;  ///< lower-case hex
  std::string blobType;
};

/// The hub's file-upload endpoints. The device registry is the HubEmulator's (start the hub
/// first, so its registry file exists), the PKI too; hostName in the storage info points to
/// Azurite (`localhost:{port}/devstoreaccount1`, Azurite's path-style account).
class FileUploadHub {
 public:
  /// `azurite` may be null: then the storage info names a host where nothing listens (tests of
  /// the hub endpoints alone) and the /_test/ diagnostics serve HTTP client tests.
  FileUploadHub(const HubEmulator& hub, const Azurite* azurite);
  /// Without a hub emulator: PKI from `pkiDir`, no devices.
  FileUploadHub(std::string pkiDir, const Azurite* azurite);
  ~FileUploadHub();
  FileUploadHub(const FileUploadHub&) = delete;
  FileUploadHub& operator=(const FileUploadHub&) = delete;

  void start();
  void stop();
  [[nodiscard]] int port() const { return port_; }
  /// "localhost:{port}": the host part the daemon's hub HTTPS calls go to.
  [[nodiscard]] std::string host() const { return "localhost:" + std::to_string(port_); }
  [[nodiscard]] std::string baseUrl() const { return "https://" + host(); }
  [[nodiscard]] std::string caFile() const { return pkiDir_ + "/ca.crt"; }
  [[nodiscard]] std::string log() const;

  /// Replaces all faults (README.md here lists them), e.g. `{"sas":{"bad":true}}`.
  void setFaults(const std::string& json);
  void clearFaults() { setFaults("{}"); }
  [[nodiscard]] std::vector<UploadNotificationRecord> notifications();
  [[nodiscard]] std::vector<HubRequestRecord> hubRequests();
  /// Upload slots `device` holds: handed out by a storage-info request, freed by its
  /// notification or when the SAS expires (the hub allows 10 at once).
  [[nodiscard]] int activeUploads(const std::string& device);
  /// Size and sha256 of a blob in Azurite (`name` as in the storage info: "{device}/{name}").
  [[nodiscard]] BlobRecord blob(const std::string& name);
  /// A writable SAS URL for blob `name`, made like the hub's (for tools that bypass the hub).
  [[nodiscard]] std::string uploadUrl(const std::string& name);

  /// Blocking HTTPS control call; returns the response body and sets `status`.
  std::string control(const std::string& method, const std::string& path,
                      const std::string& body = "", long* status = nullptr);

 private:
  std::string pkiDir_;
  std::string registryPath_;
  std::string hubHost_ = "localhost";  ///< the `sr` host tokens must name
  const Azurite* azurite_;
  std::string dir_;
  std::string password_;
  int port_ = 0;
  std::unique_ptr<ChildProcess> process_;
};

}  // namespace iothubd::hubemu
