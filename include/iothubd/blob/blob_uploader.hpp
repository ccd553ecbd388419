// SPDX-License-Identifier: MIT
// File upload to Azure Storage through the hub (protocol doc section 8): the seed's two single
// steps, and the whole workflow from a file descriptor. Works over the HttpClient role only.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "iothubd/core/clock.hpp"
#include "iothubd/core/lifetime.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/scheduler.hpp"
#include "iothubd/core/secret.hpp"
#include "iothubd/core/unique_fd.hpp"
#include "iothubd/http/async_reader.hpp"
#include "iothubd/http/http_client.hpp"
#include "iothubd/proto/file_upload.hpp"

namespace iothubd::blob {

/// The current SAS token of the device (the session owns and renews tokens). An empty secret
/// means X.509 authentication: no Authorization header is sent (the TLS client certificate
/// identifies the device). Called on the loop thread right before each hub request.
using TokenProvider = std::function<core::Result<core::Secret<>>()>;

/// Makes the non-blocking reader for an upload's descriptor; production:
/// `[&loop](core::UniqueFd fd) { return http::createFdReader(loop, std::move(fd)); }`.
using ReaderFactory =
    std::function<core::Result<std::unique_ptr<http::AsyncReader>>(core::UniqueFd fd)>;

struct HubEndpoint {
  /// The IoT Hub host (`{hub}.azure-devices.net`, optionally `:port`), never GatewayHostName:
  /// IoT Edge does not serve file upload (protocol doc 8 and pitfall 13).
  std::string host;
  std::string deviceId;  ///< devices only: modules cannot upload files
  std::string apiVersion = std::string(proto::kFileUploadApiVersion);

  bool operator==(const HubEndpoint&) const = default;
};

struct UploaderOptions {
  /// Content up to this size goes up as one Put Blob; larger content as Put Block of this size
  /// plus Put Block List. At most 50 000 blocks, so the default allows ~195 GiB.
  std::size_t blockSize = 4 * 1024 * 1024;
  /// Uploads at once; the hub allows 10 per device (protocol doc 8, limits).
  std::size_t maxConcurrentUploads = 4;
  /// Bound on one whole upload from the storage-info request to the end of the last block.
  std::chrono::milliseconds uploadTimeout{std::chrono::minutes(30)};
  /// Bound on each single HTTP request (hub or storage).
  std::chrono::milliseconds requestTimeout{std::chrono::seconds(60)};
  /// Tries per storage request (Put Blob, each Put Block, Put Block List) before giving up; only
  /// transient failures are retried (no answer, 408, 429, 500, 502, 503, 504).
  int maxAttempts = 4;
  /// Tries per hub request (storage info, notification) before giving up: 429 and 5xx answers
  /// and requests without an answer in time are retried (the hub throttles upload initiations,
  /// and a lost notification would hold one of the device's 10 upload slots for an hour); the
  /// upload's own notification also when the hub cannot be reached. A hub that cannot be
  /// reached for a storage-info request or a single-step notification fails the call at once.
  int hubMaxAttempts = 6;
  /// First retry delay; doubles per attempt up to 30 s, and each delay is drawn between half and
  /// all of that (jitter, so that devices that failed together do not retry together). A longer
  /// Retry-After from the server (at most 60 s) wins.
  std::chrono::milliseconds retryDelay{std::chrono::seconds(1)};
  /// Uniform in [0, 1) for the jitter; empty: a generator seeded from std::random_device.
  std::function<double()> random;
  /// Progress callbacks at most this often (and once more at the end).
  std::chrono::milliseconds progressInterval{std::chrono::seconds(1)};

  /// The settings a reload compares (composition.cpp); `random` is a test seam, not a setting.
  [[nodiscard]] bool operator==(const UploaderOptions& o) const {
    return blockSize == o.blockSize && maxConcurrentUploads == o.maxConcurrentUploads &&
           uploadTimeout == o.uploadTimeout && requestTimeout == o.requestTimeout &&
           maxAttempts == o.maxAttempts && hubMaxAttempts == o.hubMaxAttempts &&
           retryDelay == o.retryDelay && progressInterval == o.progressInterval;
  }
};

struct UploadProgress {
  std::string blobName;         ///< as the caller named it
  std::uint64_t bytesDone = 0;  ///< acknowledged by storage
  /// The regular file's size when known up front; 0 for a pipe until its end, when the final
  /// report has bytesDone == bytesTotal.
  std::uint64_t bytesTotal = 0;
};

struct UploadOutcome {
  std::string correlationId;
  std::string blobName;  ///< the hub's name, `{deviceId}/{name}`
  std::uint64_t bytes = 0;
};

/// Runs uploads on the loop thread; all callbacks come from the loop, never from inside a call
/// to this class. The uploader must outlive nothing of its own: destroying it abandons every
/// upload silently (no callbacks, no hub notification), cancels their requests and closes their
/// descriptors. Do not destroy it from inside one of its callbacks.
class BlobUploader {
 public:
  using UploadId = std::uint64_t;
  using ProgressFn = std::function<void(const UploadProgress&)>;
  using UploadDone = std::function<void(core::Result<UploadOutcome>)>;
  using StorageInfoDone = std::function<void(core::Result<proto::StorageInfo>)>;
  using NotifyDone = std::function<void(core::Result<void>)>;

  BlobUploader(http::HttpClient& http, core::Scheduler& scheduler, const core::Clock& clock,
               HubEndpoint hub, TokenProvider token, ReaderFactory readers,
               UploaderOptions options = {});
  ~BlobUploader();
  BlobUploader(const BlobUploader&) = delete;
  BlobUploader& operator=(const BlobUploader&) = delete;

  /// The whole upload of `fd`'s content (from its current position to its end; a pipe's size is
  /// known only at EOF) as blob `blobName`: storage info from the hub, Put Blob or Put Blocks +
  /// Put Block List to storage, then the hub notification with the true outcome
  /// (isSuccess=false and storage's status, or 0 when storage never answered, on failure). The
  /// descriptor is read in chunks only as the upload needs them, never with a blocking read on
  /// the loop. `done` gets the correlation id, or:
  /// - Errc::Service (sysErrno = HTTP status) when the hub or storage answered with an error,
  ///   Errc::Unauthorized when the hub answered 401;
  /// - Errc::ConnectionFailed / Errc::Timeout (a request's or the whole upload's bound);
  /// - Errc::Io when reading the descriptor failed; Errc::Cancelled after cancel();
  /// - Errc::InvalidArgument when the content needs more than 50 000 blocks.
  /// On every outcome the descriptor is closed and the buffers are freed before `done` runs.
  /// Fails at once (and closes `fd`) with Errc::InvalidArgument for a bad blob name,
  /// Errc::QueueFull when maxConcurrentUploads are running, Errc::Io for an unusable descriptor, or
  /// the token provider's error.
  [[nodiscard]] core::Result<UploadId> upload(std::string blobName, core::UniqueFd fd,
                                              ProgressFn progress, UploadDone done);
  /// The same with a reader the caller made.
  [[nodiscard]] core::Result<UploadId> upload(std::string blobName,
                                              std::unique_ptr<http::AsyncReader> reader,
                                              ProgressFn progress, UploadDone done);
  /// Stops an upload: its requests are cancelled, the hub is notified (isSuccess=false), and its
  /// `done` gets Errc::Cancelled. Unknown ids are ignored.
  void cancel(UploadId id);
  [[nodiscard]] std::size_t activeUploads() const { return uploads_.size(); }
  /// No upload and no single step is waiting for anything: destroying the uploader now drops no
  /// caller's answer (a reload retires the old uploader once it is idle).
  [[nodiscard]] bool idle() const { return uploads_.empty() && steps_.empty(); }

  /// Step 1 alone (the seed's get_storage_info_for_blob): POST /devices/{id}/files, retried like
  /// the upload's (hubMaxAttempts). Errors as upload()'s. The StorageInfo's sasToken is a secret:
  /// never log it.
  [[nodiscard]] core::Result<void> getStorageInfo(const std::string& blobName,
                                                  StorageInfoDone done);
  /// Step 3 alone (the seed's notify_blob_upload_status): POST /devices/{id}/files/notifications
  /// with exactly these fields, retried like the upload's. Fails at once with
  /// validateUploadNotification's errors. Errors: Errc::Service/Unauthorized with the hub's
  /// status, ConnectionFailed, Timeout.
  [[nodiscard]] core::Result<void> notifyStatus(const proto::UploadNotification& notification,
                                                NotifyDone done);

 private:
  class Upload;
  friend class Upload;
  class HubCall;
  friend class HubCall;

  [[nodiscard]] core::Result<http::HttpClient::RequestId> hubRequest(const std::string& path,
                                                                     const std::string& body,
                                                                     http::Completion done);
  /// The delay before retry number `retry` (1 = the first), with jitter (UploaderOptions).
  [[nodiscard]] std::chrono::milliseconds retryDelay(int retry);
  /// Starts a single-step hub call (getStorageInfo, notifyStatus), kept in steps_.
  [[nodiscard]] core::Result<void> startStep(
      std::string path, std::string body, std::string what,
      std::function<void(core::Result<http::Response>)> done);
  void finished(UploadId id);

  http::HttpClient& http_;
  core::Scheduler& scheduler_;
  const core::Clock& clock_;
  HubEndpoint hub_;
  TokenProvider token_;
  ReaderFactory readers_;
  UploaderOptions options_;
  std::map<UploadId, std::unique_ptr<Upload>> uploads_;
  std::map<std::uint64_t, std::unique_ptr<HubCall>> steps_;  ///< getStorageInfo / notifyStatus
  std::uint64_t nextStep_ = 1;
  UploadId nextId_ = 1;
  core::Lifetime lifetime_;  ///< last: callbacks of a destroyed uploader never run
};

}  // namespace iothubd::blob
