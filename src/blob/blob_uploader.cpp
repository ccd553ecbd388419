// SPDX-License-Identifier: MIT
#include "iothubd/blob/blob_uploader.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <optional>
#include <random>

#include "iothubd/core/log.hpp"

namespace iothubd::blob {
namespace {

using core::Errc;
using core::fail;

constexpr std::chrono::milliseconds kMaxRetryDelay{std::chrono::seconds(30)};
/// The longest Retry-After honoured; a longer one is capped (the attempts stay bounded anyway).
constexpr std::chrono::milliseconds kMaxRetryAfter{std::chrono::seconds(60)};
/// Hub answers are small JSON; storage answers to block calls are empty or a short XML error.
constexpr std::size_t kMaxResponseBody = 64 * 1024;

const char* reasonPhrase(long status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 412:
      return "Precondition Failed";
    case 413:
      return "Request Entity Too Large";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "";
  }
}

/// "403 Forbidden (AuthorizationFailure)": status, phrase and Azure Storage's error code.
std::string describeStatus(const http::Response& r) {
  std::string text = std::to_string(r.status);
  if (const char* phrase = reasonPhrase(r.status); *phrase != '\0') {
    text += std::string(" ") + phrase;
  }
  if (auto code = r.header("x-ms-error-code")) {
    text += " (" + std::string(*code) + ")";
  }
  return text;
}

core::Error hubStatusError(const http::Response& r, const std::string& what) {
  return core::Error{r.status == 401 ? Errc::Unauthorized : Errc::Service,
                     "the hub answered " + describeStatus(r) + " to " + what,
                     static_cast<int>(r.status)};
}

bool transientStatus(long status) {
  return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 ||
         status == 504;
}

bool transientError(const core::Error& e) {
  return e.code == Errc::ConnectionFailed || e.code == Errc::Timeout;
}

/// Whether another try of a hub call can help: the hub throttles upload initiations with 429,
/// 5xx are its own troubles (protocol doc 9), and a request without an answer in time may have
/// been lost. A hub that cannot be reached at all is retried only where `unreachableToo` (the
/// workflow's notification: the hub answered the storage-info request moments ago, and a lost
/// notification holds an upload slot); elsewhere the caller hears at once.
bool hubRetriable(const core::Result<http::Response>& r, bool unreachableToo) {
  if (r) {
    return r->status == 429 || (r->status >= 500 && r->status <= 599);
  }
  return r.error().code == Errc::Timeout ||
         (unreachableToo && r.error().code == Errc::ConnectionFailed);
}

/// A Retry-After of whole seconds (RFC 9110 10.2.3; the HTTP-date form is not used by the hub).
std::optional<std::chrono::milliseconds> retryAfter(const core::Result<http::Response>& r) {
  if (!r) {
    return std::nullopt;
  }
  auto value = r->header("retry-after");
  if (!value) {
    return std::nullopt;
  }
  unsigned seconds = 0;
  auto [end, ec] = std::from_chars(value->data(), value->data() + value->size(), seconds);
  if (ec != std::errc() || end != value->data() + value->size()) {
    return std::nullopt;
  }
  return std::min<std::chrono::milliseconds>(std::chrono::seconds(seconds), kMaxRetryAfter);
}

std::string describeOutcome(const core::Result<http::Response>& r) {
  return r ? "answered " + describeStatus(*r) : "failed: " + r.error().message;
}

}  // namespace

/// One request to the hub's file-upload endpoints with its retries: a 429 or 5xx answer, or no
/// answer in time (hubRetriable), is tried again after retryDelay() (or the server's
/// Retry-After), up to hubMaxAttempts times, each attempt with a fresh token. `done` gets the
/// final answer (any status) or error, always from the loop; it may destroy the call.
/// Destroying the call cancels it silently.
class BlobUploader::HubCall {
 public:
  using Done = std::function<void(core::Result<http::Response>)>;

  HubCall(BlobUploader& owner, std::string path, std::string body, std::string what,
          bool retryUnreachable, Done done)
      : owner_(owner),
        path_(std::move(path)),
        body_(std::move(body)),
        what_(std::move(what)),
        retryUnreachable_(retryUnreachable),
        done_(std::move(done)) {}

  ~HubCall() {
    if (request_) {
      owner_.http_.cancel(*request_);
    }
  }
  HubCall(const HubCall&) = delete;
  HubCall& operator=(const HubCall&) = delete;

  /// The first attempt; fails at once only when no request can be made (the token provider's
  /// error), and then `done` never runs.
  core::Result<void> start() { return send(); }

  /// Stops at once: no more attempts, `done` never runs (also from inside `done`).
  void cancel() {
    if (request_) {
      owner_.http_.cancel(*request_);
      request_.reset();
    }
    timer_.reset();
    done_ = nullptr;
  }

 private:
  core::Result<void> send() {
    ++attempts_;
    auto id = owner_.hubRequest(path_, body_,
                                [this](core::Result<http::Response> r) { onAnswer(std::move(r)); });
    if (!id) {
      return core::fail(id.error());
    }
    request_ = *id;
    return {};
  }

  void onAnswer(core::Result<http::Response> r) {
    request_.reset();
    if (hubRetriable(r, retryUnreachable_) && attempts_ < owner_.options_.hubMaxAttempts) {
      auto delay = owner_.retryDelay(attempts_);
      if (auto after = retryAfter(r)) {
        delay = std::max(delay, *after);
      }
      core::logf(core::LogLevel::Warning, what_, " ", describeOutcome(r), " (attempt ", attempts_,
                 " of ", owner_.options_.hubMaxAttempts, "), retrying in ", delay.count(), " ms");
      timer_ = owner_.scheduler_.createTimer([this] { retry(); });
      timer_->armAfter(delay);
      return;
    }
    complete(std::move(r));
  }

  void retry() {
    if (auto sent = send(); !sent) {
      complete(core::fail(sent.error()));
    }
  }

  void complete(core::Result<http::Response> r) {
    auto done = std::move(done_);
    done(std::move(r));  // may destroy this call: nothing may follow
  }

  BlobUploader& owner_;
  std::string path_;
  std::string body_;
  std::string what_;
  bool retryUnreachable_;
  Done done_;
  std::optional<http::HttpClient::RequestId> request_;
  std::unique_ptr<core::Timer> timer_;
  int attempts_ = 0;
};

/// One upload's state machine (protocol doc 8): storage info and the first reads start
/// together; then blocks go up one at a time while the next one is read (double buffering, so
/// memory stays at about two blocks); then the block list, then the notification.
class BlobUploader::Upload {
 public:
  Upload(BlobUploader& owner, UploadId id, std::string name,
         std::unique_ptr<http::AsyncReader> reader, ProgressFn progress, UploadDone done)
      : owner_(owner),
        id_(id),
        name_(std::move(name)),
        reader_(std::move(reader)),
        progress_(std::move(progress)),
        done_(std::move(done)),
        total_(reader_->sizeHint().value_or(0)),
        blockSize_(owner.options_.blockSize) {}

  ~Upload() {
    if (request_) {
      owner_.http_.cancel(*request_);
    }
  }

  core::Result<void> start() {
    auto body = proto::storageInfoRequestBody(name_);
    if (!body) {
      return fail(body.error());
    }
    hubCall_ = std::make_unique<HubCall>(
        owner_, proto::storageInfoPath(owner_.hub_.deviceId, owner_.hub_.apiVersion),
        std::move(*body), "the storage-info request for " + core::quoted(name_), false,
        [this](core::Result<http::Response> r) { onStorageInfo(std::move(r)); });
    if (auto started = hubCall_->start(); !started) {
      return started;
    }
    overall_ = owner_.scheduler_.createTimer([this] {
      abort(core::Error{Errc::Timeout,
                        "the upload of " + core::quoted(name_) + " did not finish within " +
                            std::to_string(owner_.options_.uploadTimeout.count() / 1000) + " s"},
            0);
    });
    overall_->armAfter(owner_.options_.uploadTimeout);
    lastProgress_ = owner_.clock_.monotonic();
    return readMore();
  }

  /// Ends the upload with `error`; storage's HTTP status (0 if none) goes to the hub.
  void abort(core::Error error, long storageStatus) {
    if (phase_ == Phase::Notifying || phase_ == Phase::Done) {
      return;
    }
    if (request_) {
      owner_.http_.cancel(*request_);
      request_.reset();
    }
    dropHubCall();  // a storage-info request still being tried
    releaseData();
    if (!info_) {
      // No correlation id yet, so nothing to tell the hub.
      phase_ = Phase::Done;
      owner_.scheduler_.post(owner_.lifetime_.guard(
          [this, error = std::move(error)]() mutable { finish(fail(std::move(error))); }));
      return;
    }
    std::string description = error.message;
    notify(false, storageStatus, std::move(description), std::move(error));
  }

 private:
  enum class Phase { Starting, Uploading, Committing, Notifying, Done };

  // --- reading ---------------------------------------------------------------------------------

  /// Fills `filling_` up to one block plus one byte: the extra byte tells a content of exactly
  /// one block (one Put Blob) from a longer one without waiting for a separate EOF read.
  core::Result<void> readMore() {
    if (!reader_ || reading_ || eof_ || filling_.size() > blockSize_) {
      return {};
    }
    if (!filling_.empty() && filling_.capacity() <= blockSize_ &&
        (total_ == 0 || total_ > blockSize_)) {
      filling_.reserve(blockSize_ + 1);  // one allocation per block instead of doublings
    }
    reading_ = true;
    auto started = reader_->read(blockSize_ + 1 - filling_.size(),
                                 [this](core::Result<std::string> r) { onRead(std::move(r)); });
    if (!started) {
      reading_ = false;
      return fail(started.error());
    }
    return {};
  }

  void onRead(core::Result<std::string> chunk) {
    reading_ = false;
    if (!chunk) {
      abort(chunk.error(), 0);
      return;
    }
    if (chunk->empty()) {
      eof_ = true;
      dropReader();  // closes the descriptor as soon as its end is reached
    } else if (filling_.empty()) {
      filling_ = std::move(*chunk);
    } else {
      filling_ += *chunk;
    }
    bytesRead_ += chunk->size();
    if (auto more = readMore(); !more) {
      abort(more.error(), 0);
      return;
    }
    dispatch();
  }

  // --- storage ---------------------------------------------------------------------------------

  void onStorageInfo(core::Result<http::Response> r) {
    dropHubCall();
    const std::string what = "the storage-info request for " + core::quoted(name_);
    if (!r) {
      abort(r.error(), 0);
      return;
    }
    if (r->status != 200) {
      abort(hubStatusError(*r, what), 0);
      return;
    }
    auto info = proto::parseStorageInfo(r->body);
    if (!info) {
      abort(info.error(), 0);
      return;
    }
    info_ = std::move(*info);
    blobUrl_ = core::Secret<>(proto::blobUrl(*info_));
    phase_ = Phase::Uploading;
    dispatch();
  }

  /// Starts the next storage request if one is due and none is in flight.
  void dispatch() {
    if (phase_ != Phase::Uploading || request_ || retryTimer_) {
      return;
    }
    const bool full = filling_.size() > blockSize_;
    if (!full && !eof_) {
      return;  // wait for more data
    }
    if (blockIds_.empty() && eof_ && filling_.size() <= blockSize_) {
      current_ = std::move(filling_);
      filling_.clear();
      sendPutBlob();
      return;
    }
    if (full) {
      // Keep the extra byte for the next block.
      std::string rest(1, filling_.back());
      filling_.pop_back();
      current_ = std::move(filling_);
      filling_ = std::move(rest);
    } else if (!filling_.empty()) {
      current_ = std::move(filling_);
      filling_.clear();
    } else {
      sendBlockList();
      return;
    }
    if (auto more = readMore(); !more) {
      abort(more.error(), 0);
      return;
    }
    if (blockIds_.size() >= proto::kMaxBlockCount) {
      abort(core::Error{Errc::InvalidArgument, "the content of " + core::quoted(name_) +
                                                   " needs more than 50000 blocks of " +
                                                   std::to_string(blockSize_) + " bytes"},
            0);
      return;
    }
    sendPutBlock();
  }

  void sendPutBlob() {
    step_ = "Put Blob";
    send(blobUrl_.reveal(), {{"x-ms-blob-type", "BlockBlob"}}, current_);
  }

  void sendPutBlock() {
    blockId_ = proto::blockId(static_cast<std::uint32_t>(blockIds_.size()));
    step_ = "Put Block " + std::to_string(blockIds_.size());
    send(proto::putBlockUrl(blobUrl_.reveal(), blockId_), {}, current_);
  }

  void sendBlockList() {
    phase_ = Phase::Committing;
    current_ = proto::blockListBody(blockIds_);
    step_ = "Put Block List";
    send(proto::putBlockListUrl(blobUrl_.reveal()), {{"Content-Type", "application/xml"}},
         current_);
  }

  void send(const std::string& url, std::vector<http::Header> headers, const std::string& body) {
    http::Request request;
    request.method = http::Method::Put;
    request.url = url;
    request.headers = std::move(headers);
    request.headers.emplace_back("x-ms-version", std::string(proto::kStorageApiVersion));
    request.body = std::make_unique<http::ViewBody>(body);
    request.timeout = owner_.options_.requestTimeout;
    request.maxResponseBody = kMaxResponseBody;
    ++attempts_;
    auto id = owner_.http_.send(std::move(request), [this](core::Result<http::Response> r) {
      onStorageAnswer(std::move(r));
    });
    if (!id) {
      abort(id.error(), 0);
      return;
    }
    request_ = *id;
  }

  void onStorageAnswer(core::Result<http::Response> r) {
    request_.reset();
    const std::string what = step_ + " of " + core::quoted(info_->blobName);
    if (r && r->status == 201) {
      attempts_ = 0;
      const bool commit = phase_ == Phase::Committing || step_ == "Put Blob";
      if (!commit) {
        blockIds_.push_back(blockId_);
      }
      doneBytes_ += phase_ == Phase::Committing ? 0 : current_.size();
      current_.clear();
      current_.shrink_to_fit();
      if (commit) {
        reportProgress(true);
        notify(true, 201, "Created", std::nullopt);
        return;
      }
      reportProgress(false);
      dispatch();
      return;
    }
    const bool transient = r ? transientStatus(r->status) : transientError(r.error());
    core::Error error =
        r ? core::Error{Errc::Service, "storage answered " + describeStatus(*r) + " to " + what,
                        static_cast<int>(r->status)}
          : r.error();
    if (!r) {
      error.message = what + " failed: " + error.message;
    }
    const long status = r ? r->status : 0;
    if (transient && attempts_ < owner_.options_.maxAttempts) {
      auto delay = owner_.retryDelay(attempts_);
      if (auto after = retryAfter(r)) {
        delay = std::max(delay, *after);
      }
      core::logf(core::LogLevel::Warning, what, " failed (attempt ", attempts_, " of ",
                 owner_.options_.maxAttempts, "): ", error.message, ", retrying in ", delay.count(),
                 " ms");
      retryTimer_ = owner_.scheduler_.createTimer([this] {
        retryTimer_.reset();
        resend();
      });
      retryTimer_->armAfter(delay);
      return;
    }
    abort(std::move(error), status);
  }

  void resend() {
    if (step_ == "Put Blob") {
      sendPutBlob();
    } else if (phase_ == Phase::Committing) {
      send(proto::putBlockListUrl(blobUrl_.reveal()), {{"Content-Type", "application/xml"}},
           current_);
    } else {
      send(proto::putBlockUrl(blobUrl_.reveal(), blockId_), {}, current_);
    }
  }

  void reportProgress(bool final) {
    if (!progress_) {
      return;
    }
    const auto now = owner_.clock_.monotonic();
    if (!final && now - lastProgress_ < owner_.options_.progressInterval) {
      return;
    }
    lastProgress_ = now;
    progress_(UploadProgress{name_, doneBytes_, final ? doneBytes_ : total_});
  }

  // --- the end ---------------------------------------------------------------------------------

  /// The hub call may be the caller of the current callback: the loop destroys it afterwards.
  void dropHubCall() {
    if (hubCall_) {
      hubCall_->cancel();
      std::shared_ptr<HubCall> doomed(std::move(hubCall_));
      owner_.scheduler_.post([doomed] {});
    }
  }

  /// The reader may be the caller of the current callback: the loop destroys it afterwards.
  void dropReader() {
    if (reader_) {
      std::shared_ptr<http::AsyncReader> doomed(std::move(reader_));
      owner_.scheduler_.post([doomed] {});
    }
  }

  void releaseData() {
    retryTimer_.reset();
    overall_.reset();
    dropReader();
    std::string().swap(filling_);
    std::string().swap(current_);
  }

  /// Step 3, always, also on failure (otherwise the hub holds the upload slot until the SAS
  /// token expires; protocol doc 8).
  void notify(bool success, long status, std::string description,
              std::optional<core::Error> failure) {
    releaseData();
    phase_ = Phase::Notifying;
    failure_ = std::move(failure);
    proto::UploadNotification n{info_->correlationId, success, static_cast<int>(status),
                                std::move(description)};
    // Retried (HubCall): a lost notification would hold one of the device's upload slots until
    // the hub's SAS expires, an hour (protocol doc 8).
    dropHubCall();
    hubCall_ = std::make_unique<HubCall>(
        owner_, proto::notificationPath(owner_.hub_.deviceId, owner_.hub_.apiVersion),
        proto::notificationBody(n), "the upload notification for " + core::quoted(info_->blobName),
        true, [this](core::Result<http::Response> r) { onNotified(std::move(r)); });
    if (auto started = hubCall_->start(); !started) {
      owner_.scheduler_.post(
          owner_.lifetime_.guard([this, error = started.error()] { onNotifyFailed(error); }));
    }
  }

  void onNotified(core::Result<http::Response> r) {
    dropHubCall();
    if (!r) {
      onNotifyFailed(r.error());
      return;
    }
    if (r->status < 200 || r->status >= 300) {
      onNotifyFailed(
          hubStatusError(*r, "the upload notification for " + core::quoted(info_->blobName)));
      return;
    }
    if (failure_) {
      finish(fail(std::move(*failure_)));
    } else {
      finish(UploadOutcome{info_->correlationId, info_->blobName, doneBytes_});
    }
  }

  void onNotifyFailed(core::Error error) {
    if (failure_) {
      // The upload's own failure is what the caller needs; the hub frees the slot when the SAS
      // token expires.
      core::logf(core::LogLevel::Warning, "cannot tell the hub that the upload of ",
                 core::quoted(name_), " failed: ", error.message);
      finish(fail(std::move(*failure_)));
    } else {
      finish(fail(std::move(error)));
    }
  }

  void finish(core::Result<UploadOutcome> result) {
    phase_ = Phase::Done;
    auto done = std::move(done_);
    owner_.finished(id_);  // destroys this object later, outside its own callback
    if (done) {
      done(std::move(result));
    }
  }

  BlobUploader& owner_;
  UploadId id_;
  std::string name_;
  std::unique_ptr<http::AsyncReader> reader_;
  ProgressFn progress_;
  UploadDone done_;
  std::uint64_t total_;
  std::size_t blockSize_;
  Phase phase_ = Phase::Starting;
  std::optional<proto::StorageInfo> info_;
  core::Secret<> blobUrl_;
  std::optional<http::HttpClient::RequestId> request_;  ///< the storage request in flight
  std::unique_ptr<HubCall> hubCall_;                    ///< storage info or notification
  std::unique_ptr<core::Timer> overall_;
  std::unique_ptr<core::Timer> retryTimer_;
  std::string filling_;
  std::string current_;
  std::string blockId_;
  std::string step_;
  std::vector<std::string> blockIds_;
  bool reading_ = false;
  bool eof_ = false;
  int attempts_ = 0;
  std::uint64_t bytesRead_ = 0;
  std::uint64_t doneBytes_ = 0;
  std::chrono::microseconds lastProgress_{0};
  std::optional<core::Error> failure_;
};

BlobUploader::BlobUploader(http::HttpClient& http, core::Scheduler& scheduler,
                           const core::Clock& clock, HubEndpoint hub, TokenProvider token,
                           ReaderFactory readers, UploaderOptions options)
    : http_(http),
      scheduler_(scheduler),
      clock_(clock),
      hub_(std::move(hub)),
      token_(std::move(token)),
      readers_(std::move(readers)),
      options_(std::move(options)) {
  options_.blockSize = std::max<std::size_t>(options_.blockSize, 1);
  options_.maxAttempts = std::max(options_.maxAttempts, 1);
  options_.hubMaxAttempts = std::max(options_.hubMaxAttempts, 1);
  if (!options_.random) {
    auto engine = std::make_shared<std::mt19937>(std::random_device{}());
    options_.random = [engine] { return std::uniform_real_distribution<double>(0, 1)(*engine); };
  }
}

BlobUploader::~BlobUploader() {
  lifetime_.end();
  uploads_.clear();
  steps_.clear();
}

std::chrono::milliseconds BlobUploader::retryDelay(int retry) {
  auto delay = options_.retryDelay * (1 << std::clamp(retry - 1, 0, 10));
  delay = std::min<std::chrono::milliseconds>(delay, kMaxRetryDelay);
  // Between half and all of it.
  const double factor = 0.5 + 0.5 * std::clamp(options_.random(), 0.0, 1.0);
  return std::chrono::milliseconds(
      static_cast<std::chrono::milliseconds::rep>(static_cast<double>(delay.count()) * factor));
}

core::Result<BlobUploader::UploadId> BlobUploader::upload(std::string blobName, core::UniqueFd fd,
                                                          ProgressFn progress, UploadDone done) {
  if (auto valid = proto::validateBlobName(blobName); !valid) {
    return fail(valid.error());
  }
  if (uploads_.size() >= options_.maxConcurrentUploads) {
    return fail(Errc::QueueFull, "already " + std::to_string(uploads_.size()) + " uploads running");
  }
  auto reader = readers_(std::move(fd));
  if (!reader) {
    return fail(reader.error());
  }
  return upload(std::move(blobName), std::move(*reader), std::move(progress), std::move(done));
}

core::Result<BlobUploader::UploadId> BlobUploader::upload(std::string blobName,
                                                          std::unique_ptr<http::AsyncReader> reader,
                                                          ProgressFn progress, UploadDone done) {
  if (auto valid = proto::validateBlobName(blobName); !valid) {
    return fail(valid.error());
  }
  if (uploads_.size() >= options_.maxConcurrentUploads) {
    return fail(Errc::QueueFull, "already " + std::to_string(uploads_.size()) + " uploads running");
  }
  const UploadId id = nextId_++;
  auto upload = std::make_unique<Upload>(*this, id, std::move(blobName), std::move(reader),
                                         std::move(progress), std::move(done));
  if (auto started = upload->start(); !started) {
    return fail(started.error());
  }
  uploads_.emplace(id, std::move(upload));
  return id;
}

void BlobUploader::cancel(UploadId id) {
  auto it = uploads_.find(id);
  if (it != uploads_.end()) {
    it->second->abort(core::Error{Errc::Cancelled, "the upload was cancelled"}, 0);
  }
}

void BlobUploader::finished(UploadId id) {
  auto it = uploads_.find(id);
  if (it == uploads_.end()) {
    return;
  }
  // Called from inside the upload's own callback: hand the object to the loop to destroy.
  std::shared_ptr<Upload> doomed(std::move(it->second));
  uploads_.erase(it);
  scheduler_.post([doomed] {});
}

core::Result<http::HttpClient::RequestId> BlobUploader::hubRequest(const std::string& path,
                                                                   const std::string& body,
                                                                   http::Completion done) {
  auto token = token_();
  if (!token) {
    return fail(token.error());
  }
  http::Request request;
  request.method = http::Method::Post;
  request.url = "https://" + hub_.host + path;
  request.headers = {{"Content-Type", "application/json; charset=utf-8"},
                     {"Accept", "application/json"}};
  request.authorization = std::move(*token);
  request.body = std::make_unique<http::StringBody>(body);
  request.timeout = options_.requestTimeout;
  request.maxResponseBody = kMaxResponseBody;
  return http_.send(std::move(request), std::move(done));
}

core::Result<void> BlobUploader::startStep(std::string path, std::string body, std::string what,
                                           std::function<void(core::Result<http::Response>)> done) {
  const std::uint64_t step = nextStep_++;
  auto call = std::make_unique<HubCall>(
      *this, std::move(path), std::move(body), std::move(what), false,
      [this, step, done = std::move(done)](core::Result<http::Response> r) {
        // The call is the caller of this callback: the loop destroys it afterwards.
        if (auto it = steps_.find(step); it != steps_.end()) {
          std::shared_ptr<HubCall> doomed(std::move(it->second));
          steps_.erase(it);
          scheduler_.post([doomed] {});
        }
        done(std::move(r));
      });
  if (auto started = call->start(); !started) {
    return started;
  }
  steps_.emplace(step, std::move(call));
  return {};
}

core::Result<void> BlobUploader::getStorageInfo(const std::string& blobName, StorageInfoDone done) {
  auto body = proto::storageInfoRequestBody(blobName);
  if (!body) {
    return fail(body.error());
  }
  const std::string what = "the storage-info request for " + core::quoted(blobName);
  return startStep(proto::storageInfoPath(hub_.deviceId, hub_.apiVersion), std::move(*body), what,
                   [what, done = std::move(done)](core::Result<http::Response> r) {
                     if (!r) {
                       done(fail(r.error()));
                     } else if (r->status != 200) {
                       done(fail(hubStatusError(*r, what)));
                     } else {
                       done(proto::parseStorageInfo(r->body));
                     }
                   });
}

core::Result<void> BlobUploader::notifyStatus(const proto::UploadNotification& notification,
                                              NotifyDone done) {
  if (auto valid = proto::validateUploadNotification(notification); !valid) {
    return fail(valid.error());
  }
  return startStep(proto::notificationPath(hub_.deviceId, hub_.apiVersion),
                   proto::notificationBody(notification), "the upload notification",
                   [done = std::move(done)](core::Result<http::Response> r) {
                     if (!r) {
                       done(fail(r.error()));
                     } else if (r->status < 200 || r->status >= 300) {
                       done(fail(hubStatusError(*r, "the upload notification")));
                     } else {
                       done({});
                     }
                   });
}

}  // namespace iothubd::blob
