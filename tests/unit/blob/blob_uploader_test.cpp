// SPDX-License-Identifier: MIT
// BlobUploader's state machine with a fake HTTP client, a scripted reader and manual time:
// request shapes (protocol doc section 8), block splitting, retries with backoff, timeouts,
// progress rate limiting, and what the hub is told in each outcome.
#include "iothubd/blob/blob_uploader.hpp"

#include <gtest/gtest.h>

#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "iothubd/proto/percent_encoding.hpp"
#include "manual_scheduler.hpp"

namespace iothubd::blob {
namespace {

using core::Errc;
using namespace std::chrono_literals;

constexpr std::string_view kInfo =
    R"({"correlationId":"corr-1","hostName":"acct.blob.example","containerName":"c",)"
    R"("blobName":"dev 1/x.bin","sasToken":"?sv=1&sig=SECRET"})";

/// Records requests; the test answers them.
class FakeHttpClient final : public http::HttpClient {
 public:
  struct Pending {
    RequestId id;
    http::Request request;
    std::string body;  ///< drained from the body source at send time
    http::Completion done;
  };

  core::Result<RequestId> send(http::Request request, http::Completion done) override {
    std::string body;
    if (request.body) {
      char buf[4096];
      for (;;) {
        auto n = request.body->read(std::span<char>(buf, sizeof buf));
        if (!n || *n == 0 || *n == http::BodySource::kPause)
          break;
        body.append(buf, *n);
      }
    }
    pending.push_back(Pending{next, std::move(request), std::move(body), std::move(done)});
    return next++;
  }
  void cancel(RequestId id) override {
    std::erase_if(pending, [id](const Pending& p) { return p.id == id; });
    cancelled.push_back(id);
  }
  std::size_t activeRequests() const override { return pending.size(); }

  /// Answers the oldest request.
  Pending answer(long status, std::string body = "", std::vector<http::Header> headers = {}) {
    Pending p = take();
    p.done(http::Response{status, std::move(headers), std::move(body)});
    return p;
  }
  Pending failOldest(core::Error e) {
    Pending p = take();
    p.done(core::fail(std::move(e)));
    return p;
  }
  Pending take() {
    EXPECT_FALSE(pending.empty());
    Pending p = std::move(pending.front());
    pending.pop_front();
    return p;
  }

  std::deque<Pending> pending;
  std::vector<RequestId> cancelled;
  RequestId next = 1;
};

/// Hands out `content` in chunks of at most `chunk` bytes, one per posted call; `stall` holds
/// every read back.
class FakeReader final : public http::AsyncReader {
 public:
  FakeReader(core::Scheduler& s, std::string content, bool* destroyed)
      : s_(s), content_(std::move(content)), destroyed_(destroyed) {}
  ~FakeReader() override {
    *alive_ = false;
    if (destroyed_)
      *destroyed_ = true;
  }
  core::Result<void> read(std::size_t max, ReadDone done) override {
    auto alive = alive_;
    s_.post([this, alive, max, done = std::move(done)] {
      if (!*alive || stall)
        return;
      const std::size_t n = std::min({max, chunk, content_.size() - offset_});
      std::string out = content_.substr(offset_, n);
      offset_ += n;
      done(std::move(out));
    });
    return {};
  }
  std::optional<std::uint64_t> sizeHint() const override { return content_.size(); }

  bool stall = false;
  std::size_t chunk = 3;

 private:
  core::Scheduler& s_;
  std::string content_;
  std::size_t offset_ = 0;
  bool* destroyed_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

class BlobUploaderTest : public ::testing::Test {
 protected:
  void make(UploaderOptions options = {}) {
    if (!options.random) {
      options.random = [this] { return random_; };
    }
    uploader_ = std::make_unique<BlobUploader>(
        http_, clock_, clock_, HubEndpoint{"hub.example", "dev 1"},
        [this]() -> core::Result<core::Secret<>> {
          ++tokenCalls_;
          if (tokenError_)
            return core::fail(*tokenError_);
          return core::Secret<>("SharedAccessSignature sr=x&sig=y&se=1");
        },
        [](core::UniqueFd) -> core::Result<std::unique_ptr<http::AsyncReader>> {
          return core::fail(Errc::Io, "not used");
        },
        options);
  }

  void start(std::string content, bool stall = false) {
    auto reader = std::make_unique<FakeReader>(clock_, std::move(content), &readerDestroyed_);
    reader->stall = stall;
    reader_ = reader.get();
    auto id = uploader_->upload(
        "x.bin", std::move(reader), [this](const UploadProgress& p) { progress_.push_back(p); },
        [this](core::Result<UploadOutcome> r) { result_ = std::move(r); });
    ASSERT_TRUE(id) << id.error().message;
    clock_.runPosted();
  }

  /// Answers the storage-info request and lets the reads run.
  void giveInfo() {
    auto p = http_.answer(200, std::string(kInfo));
    EXPECT_EQ(p.request.url, "https://hub.example/devices/dev%201/files?api-version=2021-04-12");
    clock_.runPosted();
  }

  std::string notificationBody() {
    EXPECT_FALSE(http_.pending.empty());
    return http_.pending.empty() ? "" : http_.pending.front().body;
  }

  fakes::ManualScheduler clock_;
  FakeHttpClient http_;
  std::unique_ptr<BlobUploader> uploader_;
  FakeReader* reader_ = nullptr;
  bool readerDestroyed_ = false;
  std::optional<core::Error> tokenError_;
  std::vector<UploadProgress> progress_;
  std::optional<core::Result<UploadOutcome>> result_;
  /// The jitter source: 1.0 gives every delay whole, 0.0 halves it.
  double random_ = 1.0;
  int tokenCalls_ = 0;
};

TEST_F(BlobUploaderTest, AsksTheHubForStorageInfoWithTheTokenAndJson) {
  make();
  start("abc");
  ASSERT_EQ(http_.pending.size(), 1u);
  const auto& r = http_.pending.front();
  EXPECT_EQ(r.request.method, http::Method::Post);
  EXPECT_EQ(r.request.url, "https://hub.example/devices/dev%201/files?api-version=2021-04-12");
  EXPECT_EQ(r.request.authorization.reveal(), "SharedAccessSignature sr=x&sig=y&se=1");
  EXPECT_EQ(r.body, R"({"blobName":"x.bin"})");
  EXPECT_EQ(r.request.headers.front(),
            (http::Header{"Content-Type", "application/json; charset=utf-8"}));
}

TEST_F(BlobUploaderTest, SmallContentIsOnePutBlobThenASuccessNotification) {
  make();
  start("hello");
  giveInfo();
  ASSERT_EQ(http_.pending.size(), 1u);
  auto put = http_.answer(201);
  EXPECT_EQ(put.request.url, "https://acct.blob.example/c/dev%201/x.bin?sv=1&sig=SECRET");
  EXPECT_EQ(put.body, "hello");
  EXPECT_EQ(put.request.headers[0], (http::Header{"x-ms-blob-type", "BlockBlob"}));
  EXPECT_EQ(put.request.headers[1], (http::Header{"x-ms-version", "2021-08-06"}));
  EXPECT_TRUE(readerDestroyed_) << "the source must be closed once its end is reached";
  EXPECT_EQ(
      notificationBody(),
      R"({"correlationId":"corr-1","isSuccess":true,"statusCode":201,"statusDescription":"Created"})");
  EXPECT_EQ(http_.pending.front().request.url,
            "https://hub.example/devices/dev%201/files/notifications?api-version=2021-04-12");
  http_.answer(204);
  ASSERT_TRUE(result_ && *result_);
  EXPECT_EQ((*result_)->correlationId, "corr-1");
  EXPECT_EQ((*result_)->blobName, "dev 1/x.bin");
  EXPECT_EQ((*result_)->bytes, 5u);
  ASSERT_EQ(progress_.size(), 1u);
  EXPECT_EQ(progress_[0].bytesDone, 5u);
  EXPECT_EQ(progress_[0].bytesTotal, 5u);
  clock_.runPosted();
  EXPECT_EQ(uploader_->activeUploads(), 0u);
}

TEST_F(BlobUploaderTest, ExactlyOneBlockIsStillOnePutBlob) {
  UploaderOptions o;
  o.blockSize = 4;
  make(o);
  start("abcd");
  giveInfo();
  auto put = http_.answer(201);
  EXPECT_EQ(put.body, "abcd");
  EXPECT_EQ(put.request.url.find("comp="), std::string::npos);
}

TEST_F(BlobUploaderTest, LargerContentGoesInBlocksThenABlockList) {
  UploaderOptions o;
  o.blockSize = 4;
  make(o);
  start("abcdefghij");
  giveInfo();
  const std::string base = "https://acct.blob.example/c/dev%201/x.bin?sv=1&sig=SECRET";
  std::vector<std::string> bodies;
  for (int i = 0; i < 3; ++i) {
    auto p = http_.answer(201);
    EXPECT_EQ(p.request.url,
              base + "&comp=block&blockid=" +
                  proto::percentEncode(proto::blockId(static_cast<std::uint32_t>(i))));
    bodies.push_back(p.body);
    clock_.runPosted();
  }
  EXPECT_EQ(bodies, (std::vector<std::string>{"abcd", "efgh", "ij"}));
  auto list = http_.answer(201);
  EXPECT_EQ(list.request.url, base + "&comp=blocklist");
  EXPECT_EQ(list.body,
            proto::blockListBody({proto::blockId(0), proto::blockId(1), proto::blockId(2)}));
  http_.answer(204);
  ASSERT_TRUE(result_ && *result_);
  EXPECT_EQ((*result_)->bytes, 10u);
}

TEST_F(BlobUploaderTest, RetriesTransientStorageFailuresWithDoublingBackoff) {
  UploaderOptions o;
  o.blockSize = 4;
  make(o);
  start("abcdefgh");
  giveInfo();
  http_.answer(201);  // block 0
  clock_.runPosted();
  http_.answer(503, "", {{"x-ms-error-code", "ServerBusy"}});  // block 1, attempt 1
  EXPECT_TRUE(http_.pending.empty());
  clock_.advance(999ms);
  EXPECT_TRUE(http_.pending.empty());
  clock_.advance(1ms);
  ASSERT_EQ(http_.pending.size(), 1u);
  EXPECT_EQ(http_.pending.front().body, "efgh");
  http_.failOldest({Errc::ConnectionFailed, "reset"});  // attempt 2
  clock_.advance(1999ms);
  EXPECT_TRUE(http_.pending.empty());
  clock_.advance(1ms);
  ASSERT_EQ(http_.pending.size(), 1u);
  http_.answer(201);
  clock_.runPosted();
  http_.answer(201);  // block list
  http_.answer(204);
  ASSERT_TRUE(result_ && *result_) << (result_ ? result_->error().message : "");
}

TEST_F(BlobUploaderTest, GivesUpAfterMaxAttemptsAndTellsTheHubTheStatus) {
  UploaderOptions o;
  o.maxAttempts = 2;
  make(o);
  start("abc");
  giveInfo();
  http_.answer(500);
  clock_.advance(1s);
  http_.answer(500, "", {{"x-ms-error-code", "InternalError"}});
  EXPECT_EQ(
      notificationBody(),
      R"({"correlationId":"corr-1","isSuccess":false,"statusCode":500,"statusDescription":)"
      R"("storage answered 500 Internal Server Error (InternalError) to Put Blob of \"dev 1/x.bin\""})");
  http_.answer(204);
  ASSERT_TRUE(result_ && !*result_);
  EXPECT_EQ(result_->error().code, Errc::Service);
  EXPECT_EQ(result_->error().sysErrno, 500);
}

TEST_F(BlobUploaderTest, APermanentStorageErrorFailsAtOnce) {
  make();
  start("abc");
  giveInfo();
  http_.answer(403, "", {{"x-ms-error-code", "AuthorizationFailure"}});
  ASSERT_EQ(http_.pending.size(), 1u);
  EXPECT_NE(notificationBody().find(R"("isSuccess":false,"statusCode":403)"), std::string::npos);
  EXPECT_EQ(notificationBody().find("SECRET"), std::string::npos);
  http_.answer(204);
  ASSERT_TRUE(result_ && !*result_);
  EXPECT_EQ(result_->error().sysErrno, 403);
}

TEST_F(BlobUploaderTest, TheOverallTimeoutEndsAStalledUpload) {
  UploaderOptions o;
  o.uploadTimeout = 10s;
  make(o);
  start("abc", /*stall=*/true);
  giveInfo();
  EXPECT_TRUE(http_.pending.empty());
  clock_.advance(10s);
  EXPECT_TRUE(readerDestroyed_);
  EXPECT_NE(notificationBody().find(R"("isSuccess":false,"statusCode":0)"), std::string::npos);
  http_.answer(204);
  ASSERT_TRUE(result_ && !*result_);
  EXPECT_EQ(result_->error().code, Errc::Timeout);
}

TEST_F(BlobUploaderTest, AFailedStorageInfoRequestNeedsNoNotification) {
  make();
  start("abc");
  http_.answer(401);
  clock_.runPosted();
  EXPECT_TRUE(http_.pending.empty());
  ASSERT_TRUE(result_ && !*result_);
  EXPECT_EQ(result_->error().code, Errc::Unauthorized);
  EXPECT_EQ(result_->error().sysErrno, 401);
  EXPECT_TRUE(readerDestroyed_);
}

TEST_F(BlobUploaderTest, JitterDrawsEachDelayBetweenHalfAndAllOfIt) {
  random_ = 0.0;
  make();
  start("abc");
  giveInfo();
  http_.answer(503);  // Put Blob, attempt 1: retried after 0.5 * 1 s
  clock_.advance(499ms);
  EXPECT_TRUE(http_.pending.empty());
  clock_.advance(1ms);
  ASSERT_EQ(http_.pending.size(), 1u);
  random_ = 0.5;
  http_.answer(503);  // attempt 2: 0.75 * 2 s
  clock_.advance(1499ms);
  EXPECT_TRUE(http_.pending.empty());
  clock_.advance(1ms);
  EXPECT_EQ(http_.pending.size(), 1u);
}

TEST_F(BlobUploaderTest, APermanentNotificationFailureAfterSuccessFailsTheUpload) {
  make();
  start("abc");
  giveInfo();
  http_.answer(201);
  http_.answer(400);
  ASSERT_TRUE(result_ && !*result_);
  EXPECT_EQ(result_->error().code, Errc::Service);
  EXPECT_NE(result_->error().message.find("upload notification"), std::string::npos);
}

TEST_F(BlobUploaderTest, ProgressComesAtMostOncePerIntervalAndAtTheEnd) {
  UploaderOptions o;
  o.blockSize = 2;
  make(o);
  start("abcdefghij");  // 5 blocks
  giveInfo();
  for (int i = 0; i < 5; ++i) {
    clock_.advance(400ms);
    http_.answer(201);
    clock_.runPosted();
  }
  http_.answer(201);  // block list
  // Blocks finish at 0.4, 0.8, 1.2, 1.6 and 2.0 s: one report at 1.2 s (a second after the
  // start), none at 2.0 s (only 0.8 s later), then the final one.
  ASSERT_EQ(progress_.size(), 2u);
  EXPECT_EQ(progress_[0].bytesDone, 6u);
  EXPECT_EQ(progress_[0].bytesTotal, 10u);
  EXPECT_EQ(progress_[1].bytesDone, 10u);
}

TEST_F(BlobUploaderTest, RefusesWhatItCannotStart) {
  UploaderOptions o;
  o.maxConcurrentUploads = 1;
  make(o);
  start("abc");
  auto second = uploader_->upload("y", std::make_unique<FakeReader>(clock_, "x", nullptr), nullptr,
                                  [](auto) { ADD_FAILURE(); });
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().code, Errc::QueueFull);
  auto badName = uploader_->upload("dir/", std::make_unique<FakeReader>(clock_, "x", nullptr),
                                   nullptr, [](auto) { ADD_FAILURE(); });
  ASSERT_FALSE(badName);
  EXPECT_EQ(badName.error().code, Errc::InvalidArgument);
}

TEST_F(BlobUploaderTest, ATokenProblemRefusesTheUploadAtOnce) {
  make();
  tokenError_ = core::Error{Errc::Unauthorized, "token expired"};
  auto id = uploader_->upload("x", std::make_unique<FakeReader>(clock_, "x", nullptr), nullptr,
                              [](auto) { ADD_FAILURE(); });
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().message, "token expired");
  EXPECT_TRUE(http_.pending.empty());
}

TEST_F(BlobUploaderTest, DestroyingTheUploaderCancelsEverythingSilently) {
  make();
  start("abc");
  ASSERT_TRUE(uploader_->getStorageInfo("other", [](auto) { ADD_FAILURE(); }));
  ASSERT_EQ(http_.pending.size(), 2u);
  uploader_.reset();
  clock_.runPosted();
  EXPECT_TRUE(http_.pending.empty());
  EXPECT_EQ(http_.cancelled.size(), 2u);
  EXPECT_TRUE(readerDestroyed_);
  EXPECT_FALSE(result_.has_value());
}

// ---- the hub's calls are retried too (issue 14)
// ---------------------------------------------------

TEST_F(BlobUploaderTest, AThrottledStorageInfoRequestIsRetriedWithAFreshTokenAndTheUploadGoesOn) {
  make();
  start("abc");
  http_.answer(429);
  EXPECT_TRUE(http_.pending.empty());
  EXPECT_FALSE(result_.has_value());
  clock_.advance(999ms);
  EXPECT_TRUE(http_.pending.empty());
  clock_.advance(1ms);
  ASSERT_EQ(http_.pending.size(), 1u);
  EXPECT_EQ(tokenCalls_, 2) << "each attempt asks for the current token";
  http_.answer(503);  // attempt 2 -> 2 s
  clock_.advance(1999ms);
  EXPECT_TRUE(http_.pending.empty());
  clock_.advance(1ms);
  giveInfo();
  http_.answer(201);
  http_.answer(204);
  ASSERT_TRUE(result_ && *result_) << (result_ ? result_->error().message : "");
}

TEST_F(BlobUploaderTest, TheHubsRetryAfterIsHonouredWhenLonger) {
  make();
  start("abc");
  http_.answer(429, "", {{"retry-after", "5"}});
  clock_.advance(4999ms);
  EXPECT_TRUE(http_.pending.empty());
  clock_.advance(1ms);
  EXPECT_EQ(http_.pending.size(), 1u);
}

TEST_F(BlobUploaderTest, StorageInfoRetriesAreBounded) {
  UploaderOptions o;
  o.hubMaxAttempts = 2;
  make(o);
  start("abc");
  http_.answer(500);
  clock_.advance(1s);
  http_.answer(503);
  clock_.runPosted();
  EXPECT_TRUE(http_.pending.empty()) << "no notification without a correlation id";
  ASSERT_TRUE(result_ && !*result_);
  EXPECT_EQ(result_->error().code, Errc::Service);
  EXPECT_EQ(result_->error().sysErrno, 503);
}

TEST_F(BlobUploaderTest, APermanentStorageInfoAnswerIsNotRetried) {
  make();
  start("abc");
  http_.answer(403);
  clock_.advance(60s);
  EXPECT_TRUE(http_.pending.empty());
  ASSERT_TRUE(result_ && !*result_);
  EXPECT_EQ(result_->error().sysErrno, 403);
}

TEST_F(BlobUploaderTest, ALostNotificationIsSentAgainSoTheHubFreesTheSlot) {
  make();
  start("abc");
  giveInfo();
  http_.answer(201);
  const std::string body = notificationBody();
  http_.failOldest({Errc::Timeout, "no answer within 60 s"});
  EXPECT_FALSE(result_.has_value());
  clock_.advance(1s);
  EXPECT_EQ(notificationBody(), body);
  http_.answer(503);
  clock_.advance(2s);
  EXPECT_EQ(notificationBody(), body);
  // The hub answered the storage-info request moments ago: a connection failure is a blip.
  http_.failOldest({Errc::ConnectionFailed, "connection reset"});
  clock_.advance(4s);
  EXPECT_EQ(notificationBody(), body);
  http_.answer(204);
  ASSERT_TRUE(result_ && *result_) << (result_ ? result_->error().message : "");
}

TEST_F(BlobUploaderTest, AnUnreachableHubFailsTheStorageInfoRequestAtOnce) {
  make();
  start("abc");
  http_.failOldest({Errc::ConnectionFailed, "Connection refused"});
  clock_.runPosted();
  EXPECT_TRUE(http_.pending.empty());
  ASSERT_TRUE(result_ && !*result_);
  EXPECT_EQ(result_->error().code, Errc::ConnectionFailed);
}

TEST_F(BlobUploaderTest, TheSingleStepsAreRetriedToo) {
  make();
  std::optional<core::Result<proto::StorageInfo>> info;
  ASSERT_TRUE(uploader_->getStorageInfo("x.bin", [&](auto r) { info = std::move(r); }));
  http_.answer(429);
  clock_.advance(1s);
  http_.answer(200, std::string(kInfo));
  ASSERT_TRUE(info && *info);
  EXPECT_EQ((*info)->correlationId, "corr-1");

  std::optional<core::Result<void>> notified;
  ASSERT_TRUE(uploader_->notifyStatus({"corr-1", true, 201, "ok"},
                                      [&](auto r) { notified = std::move(r); }));
  http_.answer(502);
  clock_.advance(1s);
  http_.answer(204);
  ASSERT_TRUE(notified && *notified);
  clock_.runPosted();
}

TEST_F(BlobUploaderTest, DestroyingTheUploaderCancelsAPendingRetry) {
  make();
  start("abc");
  ASSERT_TRUE(uploader_->getStorageInfo("other", [](auto) { ADD_FAILURE(); }));
  http_.answer(429);
  http_.answer(429);
  uploader_.reset();
  clock_.advance(60s);
  EXPECT_TRUE(http_.pending.empty());
  EXPECT_FALSE(result_.has_value());
}

}  // namespace
}  // namespace iothubd::blob
