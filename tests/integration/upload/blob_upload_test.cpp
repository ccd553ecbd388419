// SPDX-License-Identifier: MIT
// The file-upload workflow end to end on the real loop: BlobUploader over CurlMultiClient, the
// hub's HTTPS endpoints (file-upload emulator, SAS-checked against the MQTT emulator's registry)
// and Azurite as storage. Checks what storage holds (sha256), what the hub was told, progress,
// errors, descriptors, and that the loop keeps serving other work during a 100 MiB upload.
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "file_upload_hub.hpp"
#include "hub_emulator.hpp"
#include "iothubd/blob/blob_uploader.hpp"
#include "iothubd/http/curl_multi_client.hpp"
#include "iothubd/loop/event_loop.hpp"
#include "iothubd/mqtt/mosquitto_transport.hpp"
#include "loop_test_util.hpp"
#include "temp_dir.hpp"

namespace iothubd::blob {
namespace {

using core::Errc;
using iothubd::testing::openFdCount;
using iothubd::testing::runUntil;
using iothubd::testing::Sha256;
using namespace std::chrono_literals;

constexpr const char* kDevice = "dev1";

/// Writes `size` pseudo-random bytes to `path` and returns their sha256.
std::string writeRandomFile(const std::string& path, std::size_t size) {
  Sha256 sha;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  std::string chunk(1 << 20, '\0');
  for (std::size_t done = 0; done < size;) {
    const std::size_t n = std::min(chunk.size(), size - done);
    RAND_bytes(reinterpret_cast<unsigned char*>(chunk.data()), static_cast<int>(n));
    std::fwrite(chunk.data(), 1, n, f);
    sha.update(std::string_view(chunk.data(), n));
    done += n;
  }
  std::fclose(f);
  return sha.hex();
}

std::string fdTarget(int fd) {
  char buf[256] = {};
  const ssize_t n =
      ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

struct Finished {
  std::optional<core::Result<UploadOutcome>> result;
  std::vector<UploadProgress> progress;
  bool sourceOpenAtDone = true;
};

class BlobUploadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    hub_ = new hubemu::HubEmulator();
    key_ = new std::string(hub_->addDevice(kDevice));
    hub_->start();
    azurite_ = new hubemu::Azurite(hub_->dir());
    azurite_->start();
    files_ = new hubemu::FileUploadHub(*hub_, azurite_);
    files_->start();
  }
  static void TearDownTestSuite() {
    delete files_;
    delete azurite_;
    delete hub_;
    delete key_;
  }

  void SetUp() override {
    files_->clearFaults();
    fdsBefore_ = openFdCount();
    loop_ = std::move(*loop::EventLoop::create());
    http::CurlOptions options;
    options.tls.caFile = hub_->caFile();
    client_ = std::move(*http::createCurlMultiClient(*loop_, options));
    makeUploader(UploaderOptions{});
  }

  void TearDown() override {
    uploader_.reset();
    client_.reset();
    loop_.reset();
    EXPECT_EQ(openFdCount(), fdsBefore_) << "descriptor leak";
    if (HasFailure()) {
      // Azurite logs request lines with their SAS signatures: redact them.
      static const std::regex kSig("sig=[^&\\s]*");
      std::cerr << "--- file-upload hub log ---\n"
                << files_->log() << "--- azurite log ---\n"
                << std::regex_replace(azurite_->log(), kSig, "sig=REDACTED");
    }
  }

  void makeUploader(UploaderOptions options, std::string key = "") {
    uploader_.reset();
    const std::string deviceKey = key.empty() ? *key_ : key;
    uploader_ = std::make_unique<BlobUploader>(
        *client_, *loop_, *loop_, HubEndpoint{files_->host(), kDevice},
        [this, deviceKey]() -> core::Result<core::Secret<>> {
          return core::Secret<>(
              hubemu::makeSasToken(hub_->hubHost(), kDevice, deviceKey, std::time(nullptr) + 3600));
        },
        [this](core::UniqueFd fd) { return http::createFdReader(*loop_, std::move(fd)); }, options);
  }

  /// Starts an upload of `fd` and records what comes back.
  std::shared_ptr<Finished> start(const std::string& name, core::UniqueFd fd) {
    auto f = std::make_shared<Finished>();
    const int raw = fd.get();
    const std::string target = fdTarget(raw);
    auto id = uploader_->upload(
        name, std::move(fd), [f](const UploadProgress& p) { f->progress.push_back(p); },
        [f, raw, target](core::Result<UploadOutcome> r) {
          f->sourceOpenAtDone = fdTarget(raw) == target;
          f->result = std::move(r);
        });
    EXPECT_TRUE(id) << id.error().message;
    if (!id)
      f->result = core::fail(id.error());
    return f;
  }

  std::shared_ptr<Finished> uploadAndWait(const std::string& name, core::UniqueFd fd,
                                          std::chrono::milliseconds timeout = 120s) {
    auto f = start(name, std::move(fd));
    EXPECT_TRUE(runUntil(
        *loop_, [&] { return f->result.has_value(); }, timeout));
    if (!f->result)
      f->result = core::fail(Errc::Internal, "no completion");
    EXPECT_FALSE(f->sourceOpenAtDone) << "the source descriptor was still open when done ran";
    // The upload object goes away on the next loop iteration.
    EXPECT_TRUE(runUntil(
        *loop_, [&] { return uploader_->activeUploads() == 0; }, 5s));
    return f;
  }

  core::UniqueFd openFile(const std::string& path) {
    return core::UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  }

  std::optional<hubemu::UploadNotificationRecord> notificationFor(
      const std::string& correlationId) {
    for (auto& n : files_->notifications()) {
      if (n.correlationId == correlationId)
        return n;
    }
    return std::nullopt;
  }

  std::optional<hubemu::UploadNotificationRecord> lastNotification() {
    auto all = files_->notifications();
    if (all.empty())
      return std::nullopt;
    return all.back();
  }

  /// The checks every successful upload must pass.
  void expectStored(const Finished& f, const std::string& name, std::uint64_t size,
                    const std::string& sha, std::uint64_t announcedTotal) {
    ASSERT_TRUE(f.result && *f.result) << (f.result ? f.result->error().message : "");
    const UploadOutcome& out = **f.result;
    EXPECT_EQ(out.blobName, std::string(kDevice) + "/" + name);
    EXPECT_EQ(out.bytes, size);
    auto blob = files_->blob(out.blobName);
    EXPECT_TRUE(blob.exists);
    EXPECT_EQ(blob.size, size);
    EXPECT_EQ(blob.sha256, sha);
    EXPECT_EQ(blob.blobType, "BlockBlob");
    auto n = notificationFor(out.correlationId);
    ASSERT_TRUE(n) << "the hub got no notification for " << out.correlationId;
    EXPECT_TRUE(n->known);
    EXPECT_TRUE(n->isSuccess);
    EXPECT_EQ(n->statusCode, 201);
    EXPECT_EQ(n->blobName, out.blobName);
    ASSERT_FALSE(f.progress.empty());
    EXPECT_EQ(f.progress.back().bytesDone, size);
    EXPECT_EQ(f.progress.back().bytesTotal, size);
    for (std::size_t i = 0; i + 1 < f.progress.size(); ++i) {
      EXPECT_EQ(f.progress[i].bytesTotal, announcedTotal);
      EXPECT_LE(f.progress[i].bytesDone, f.progress[i + 1].bytesDone);
    }
  }

  static inline hubemu::HubEmulator* hub_ = nullptr;
  static inline std::string* key_ = nullptr;
  static inline hubemu::Azurite* azurite_ = nullptr;
  static inline hubemu::FileUploadHub* files_ = nullptr;
  int fdsBefore_ = 0;
  std::unique_ptr<loop::EventLoop> loop_;
  std::unique_ptr<http::HttpClient> client_;
  std::unique_ptr<BlobUploader> uploader_;
};

class BlobUploadSizeTest : public BlobUploadTest,
                           public ::testing::WithParamInterface<std::size_t> {};

TEST_P(BlobUploadSizeTest, StoresTheFileAndNotifiesTheHub) {
  iothubd::testing::TempDir dir("blob-test");
  const std::size_t size = GetParam();
  const std::string sha = writeRandomFile(dir / "src", size);
  const std::string name = "sizes/file-" + std::to_string(size) + ".bin";
  const auto start = std::chrono::steady_clock::now();
  auto f = uploadAndWait(name, openFile(dir / "src"));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  expectStored(*f, name, size, sha, size);
  std::cout << "uploaded " << size << " bytes in " << seconds << " s, " << f->progress.size()
            << " progress reports\n";
}

INSTANTIATE_TEST_SUITE_P(Sizes, BlobUploadSizeTest, ::testing::Values(0, 1024, 9 * 1024 * 1024),
                         [](const auto& info) { return std::to_string(info.param) + "B"; });

TEST_F(BlobUploadTest, ContentOfExactlyOneBlockAndOneByteMoreBothArrive) {
  UploaderOptions options;
  options.blockSize = 64 * 1024;
  makeUploader(options);
  iothubd::testing::TempDir dir("blob-test");
  for (std::size_t size :
       {std::size_t{64 * 1024}, std::size_t{64 * 1024 + 1}, std::size_t{3 * 64 * 1024}}) {
    const std::string sha = writeRandomFile(dir / "src", size);
    const std::string name = "edges/" + std::to_string(size);
    auto f = uploadAndWait(name, openFile(dir / "src"));
    expectStored(*f, name, size, sha, size);
  }
}

TEST_F(BlobUploadTest, UploadsAPipeWhoseSizeIsKnownOnlyAtItsEnd) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  core::UniqueFd writeEnd(fds[1]);
  ::fcntl(writeEnd.get(), F_SETFL, O_NONBLOCK);
  std::string data(5 * 1024 * 1024 + 3, '\0');
  RAND_bytes(reinterpret_cast<unsigned char*>(data.data()), static_cast<int>(data.size()));
  std::size_t written = 0;
  // The producer writes whatever the pipe takes, every millisecond, on the same loop.
  std::unique_ptr<core::Timer> producer = loop_->createTimer([&] {
    const ssize_t n = ::write(writeEnd.get(), data.data() + written,
                              std::min<std::size_t>(256 * 1024, data.size() - written));
    if (n > 0)
      written += static_cast<std::size_t>(n);
    if (written == data.size()) {
      writeEnd.reset();
    } else {
      producer->armAfter(1ms);
    }
  });
  producer->armAfter(1ms);
  auto f = uploadAndWait("pipes/stream.bin", core::UniqueFd(fds[0]));
  expectStored(*f, "pipes/stream.bin", data.size(), iothubd::testing::sha256Hex(data), 0);
}

TEST_F(BlobUploadTest, A100MiBUploadLeavesTheLoopServingOtherWork) {
  iothubd::testing::TempDir dir("blob-test");
  constexpr std::size_t kSize = 100 * 1024 * 1024;
  const std::string sha = writeRandomFile(dir / "big", kSize);

  // Other work on the same loop: a 10 ms ticker, and MQTT QoS 1 publishes to the hub emulator
  // whose PUBACK latency is measured (an echo through a real broker over TLS).
  auto mqtt = std::move(*mqtt::createMosquittoTransport(*loop_));
  struct Listener : mqtt::MqttTransport::Listener {
    bool connected = false;
    std::map<int, std::chrono::steady_clock::time_point> sent;
    std::chrono::microseconds worstAck{0};
    int acks = 0;
    void onConnected() override { connected = true; }
    void onDisconnected(const mqtt::Disconnect&) override { connected = false; }
    void onPublishAcked(int mid) override {
      auto it = sent.find(mid);
      if (it == sent.end())
        return;
      worstAck = std::max(worstAck, std::chrono::duration_cast<std::chrono::microseconds>(
                                        std::chrono::steady_clock::now() - it->second));
      sent.erase(it);
      ++acks;
    }
    void onSubscribed(int) override {}
    void onMessage(std::string_view, std::string_view) override {}
  } listener;
  mqtt->setListener(&listener);
  mqtt::ConnectOptions connect;
  connect.host = "localhost";
  connect.port = hub_->port();
  connect.clientId = kDevice;
  connect.username = hubemu::makeUsername(hub_->hubHost(), kDevice);
  connect.password = core::Secret<>(
      hubemu::makeSasToken(hub_->hubHost(), kDevice, *key_, std::time(nullptr) + 3600));
  connect.tls.caFile = hub_->caFile();
  ASSERT_TRUE(mqtt->connect(connect));
  ASSERT_TRUE(runUntil(
      *loop_, [&] { return listener.connected; }, 10s));

  std::chrono::microseconds worstTick{0};
  std::vector<double> lateness;  // ms
  int ticks = 0;
  auto expected = std::chrono::steady_clock::now() + 10ms;
  std::unique_ptr<core::Timer> ticker;
  ticker = loop_->createTimer([&] {
    const auto now = std::chrono::steady_clock::now();
    const auto late = std::chrono::duration_cast<std::chrono::microseconds>(now - expected);
    worstTick = std::max(worstTick, late);
    lateness.push_back(late.count() / 1000.0);
    ++ticks;
    if (ticks % 5 == 0) {
      auto mid = mqtt->publish("devices/dev1/messages/events/", "ping", 1);
      if (mid)
        listener.sent[*mid] = now;
    }
    expected = now + 10ms;
    ticker->armAfter(10ms);
  });
  ticker->armAfter(10ms);

  const auto start = std::chrono::steady_clock::now();
  auto f = uploadAndWait("big/100MiB.bin", openFile(dir / "big"), 300s);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ticker.reset();
  mqtt->disconnect();
  runUntil(
      *loop_, [&] { return !listener.connected; }, 5s);
  mqtt.reset();

  expectStored(*f, "big/100MiB.bin", kSize, sha, kSize);
  std::sort(lateness.begin(), lateness.end());
  auto percentile = [&](double p) {
    return lateness.empty() ? 0.0 : lateness[static_cast<std::size_t>(p * (lateness.size() - 1))];
  };
  // Printing is the point: on a shared 2-core machine the worst case includes the scheduler
  // giving the CPU to Azurite, so no bound is asserted on it.
  std::cout << "timer lateness during the upload: median " << percentile(0.5) << " ms, p99 "
            << percentile(0.99) << " ms\n";
  std::cout << "100 MiB in " << seconds << " s (" << (kSize / 1048576.0) / seconds << " MiB/s); "
            << ticks << " ticks of 10 ms, worst lateness " << worstTick.count() / 1000.0 << " ms; "
            << listener.acks << " MQTT PUBACKs, worst round trip "
            << listener.worstAck.count() / 1000.0 << " ms; " << f->progress.size()
            << " progress reports\n";
  EXPECT_GT(ticks, 0);
  EXPECT_GT(listener.acks, 0) << "no MQTT round trip completed during the upload";
  // Rate limit: at most one report per second plus the final one (and one spare for rounding).
  EXPECT_LE(f->progress.size(), static_cast<std::size_t>(seconds) + 2);
}

TEST_F(BlobUploadTest, StorageRefusingTheSasFailsWith403AndTellsTheHub) {
  files_->setFaults(R"({"sas":{"bad":true}})");
  iothubd::testing::TempDir dir("blob-test");
  writeRandomFile(dir / "src", 9 * 1024 * 1024);
  auto f = uploadAndWait("refused/a.bin", openFile(dir / "src"));
  ASSERT_TRUE(f->result && !*f->result);
  const core::Error& e = f->result->error();
  EXPECT_EQ(e.code, Errc::Service) << e.message;
  EXPECT_EQ(e.sysErrno, 403);
  EXPECT_NE(e.message.find("storage answered 403"), std::string::npos) << e.message;
  EXPECT_EQ(e.message.find("sig="), std::string::npos) << e.message;
  auto n = lastNotification();
  ASSERT_TRUE(n);
  EXPECT_TRUE(n->known);
  EXPECT_FALSE(n->isSuccess);
  EXPECT_EQ(n->statusCode, 403);
  EXPECT_EQ(n->statusDescription, e.message);
}

TEST_F(BlobUploadTest, StorageNotRunningFailsWithConnectionFailedAndTellsTheHub) {
  // A port nobody listens on (the one a stopped Azurite would leave).
  UploaderOptions options;
  options.retryDelay = 10ms;
  makeUploader(options);
  files_->setFaults(R"({"sas":{"storageHost":"localhost:1"}})");
  iothubd::testing::TempDir dir("blob-test");
  writeRandomFile(dir / "src", 1024);
  auto f = uploadAndWait("dead/a.bin", openFile(dir / "src"));
  ASSERT_TRUE(f->result && !*f->result);
  EXPECT_EQ(f->result->error().code, Errc::ConnectionFailed) << f->result->error().message;
  auto n = lastNotification();
  ASSERT_TRUE(n);
  EXPECT_FALSE(n->isSuccess);
  EXPECT_EQ(n->statusCode, 0);
  EXPECT_NE(n->statusDescription.find("Put Blob"), std::string::npos) << n->statusDescription;
}

TEST_F(BlobUploadTest, RetriesATransientBlockFailureWithBackoff) {
  UploaderOptions options;
  options.blockSize = 256 * 1024;
  options.retryDelay = 20ms;
  makeUploader(options);
  // Block 1 fails twice with 503, through the emulator's storage proxy.
  files_->setFaults(
      R"({"sas":{"proxy":true},"storage":[{"match":"blockid=MDAwMDAx","status":503,"count":2}]})");
  iothubd::testing::TempDir dir("blob-test");
  const std::string sha = writeRandomFile(dir / "src", 1024 * 1024);
  auto f = uploadAndWait("retry/a.bin", openFile(dir / "src"));
  expectStored(*f, "retry/a.bin", 1024 * 1024, sha, 1024 * 1024);
}

TEST_F(BlobUploadTest, GivesUpAfterTheLastAttemptAndReportsTheStatus) {
  UploaderOptions options;
  options.blockSize = 256 * 1024;
  options.retryDelay = 10ms;
  options.maxAttempts = 3;
  makeUploader(options);
  files_->setFaults(
      R"({"sas":{"proxy":true},"storage":[{"match":"blockid=MDAwMDAx","status":500,"count":-1}]})");
  iothubd::testing::TempDir dir("blob-test");
  writeRandomFile(dir / "src", 1024 * 1024);
  auto f = uploadAndWait("retry/b.bin", openFile(dir / "src"));
  ASSERT_TRUE(f->result && !*f->result);
  EXPECT_EQ(f->result->error().sysErrno, 500);
  EXPECT_NE(f->result->error().message.find("Put Block 1"), std::string::npos)
      << f->result->error().message;
  auto n = lastNotification();
  ASSERT_TRUE(n);
  EXPECT_FALSE(n->isSuccess);
  EXPECT_EQ(n->statusCode, 500);
}

TEST_F(BlobUploadTest, TheHubRefusingTheTokenIsUnauthorized) {
  makeUploader(UploaderOptions{}, hubemu::randomKey());
  iothubd::testing::TempDir dir("blob-test");
  writeRandomFile(dir / "src", 10);
  auto f = uploadAndWait("auth/a.bin", openFile(dir / "src"));
  ASSERT_TRUE(f->result && !*f->result);
  EXPECT_EQ(f->result->error().code, Errc::Unauthorized) << f->result->error().message;
  EXPECT_EQ(f->result->error().sysErrno, 401);
  auto requests = files_->hubRequests();
  ASSERT_FALSE(requests.empty());
  EXPECT_EQ(requests.back().reason, "signature mismatch");
}

TEST_F(BlobUploadTest, AHubErrorOnStorageInfoIsAServiceError) {
  // A status no retry can change (429 and 5xx are retried: upload_retry_test.cpp).
  files_->setFaults(R"({"files":{"status":400,"count":-1}})");
  iothubd::testing::TempDir dir("blob-test");
  writeRandomFile(dir / "src", 10);
  auto f = uploadAndWait("hub/a.bin", openFile(dir / "src"));
  ASSERT_TRUE(f->result && !*f->result);
  EXPECT_EQ(f->result->error().code, Errc::Service);
  EXPECT_EQ(f->result->error().sysErrno, 400);
}

TEST_F(BlobUploadTest, TimesOutAStalledUploadAndClosesTheDescriptor) {
  UploaderOptions options;
  options.uploadTimeout = 500ms;
  makeUploader(options);
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  core::UniqueFd writeEnd(fds[1]);  // open but silent: the pipe never ends
  auto f = uploadAndWait("stalled/a.bin", core::UniqueFd(fds[0]));
  ASSERT_TRUE(f->result && !*f->result);
  EXPECT_EQ(f->result->error().code, Errc::Timeout) << f->result->error().message;
  auto n = lastNotification();
  ASSERT_TRUE(n);
  EXPECT_FALSE(n->isSuccess);
}

TEST_F(BlobUploadTest, BoundsConcurrencyAndCancels) {
  UploaderOptions options;
  options.maxConcurrentUploads = 2;
  makeUploader(options);
  int a[2], b[2], c[2];
  ASSERT_EQ(::pipe2(a, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(b, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(c, O_CLOEXEC), 0);
  core::UniqueFd wa(a[1]), wb(b[1]), wc(c[1]);
  auto first = start("many/1", core::UniqueFd(a[0]));
  auto second = start("many/2", core::UniqueFd(b[0]));
  const std::string third = fdTarget(c[0]);
  auto refused =
      uploader_->upload("many/3", core::UniqueFd(c[0]), nullptr, [](auto) { ADD_FAILURE(); });
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::QueueFull);
  EXPECT_NE(fdTarget(c[0]), third) << "a refused upload must close its descriptor";
  EXPECT_EQ(uploader_->activeUploads(), 2u);
  // Cancel both once they have their storage info (the hub then gets a failure notification).
  ASSERT_TRUE(runUntil(
      *loop_, [&] { return files_->hubRequests().size() >= 2; }, 10s));
  uploader_->cancel(1);
  uploader_->cancel(2);
  ASSERT_TRUE(runUntil(*loop_, [&] { return first->result && second->result; }));
  EXPECT_EQ(first->result->error().code, Errc::Cancelled);
  EXPECT_EQ(second->result->error().code, Errc::Cancelled);
  EXPECT_TRUE(runUntil(
      *loop_, [&] { return uploader_->activeUploads() == 0; }, 5s));
}

TEST_F(BlobUploadTest, SingleStepsGiveAUsableSasUrlAndForwardTheNotificationExactly) {
  std::optional<core::Result<proto::StorageInfo>> info;
  ASSERT_TRUE(uploader_->getStorageInfo("steps/by-curl.txt", [&](auto r) { info = std::move(r); }));
  ASSERT_TRUE(runUntil(*loop_, [&] { return info.has_value(); }));
  ASSERT_TRUE(*info) << info->error().message;
  EXPECT_EQ((*info)->blobName, "dev1/steps/by-curl.txt");
  EXPECT_EQ((*info)->containerName, "uploads");

  // What an app would do with the info: its own upload with the curl CLI.
  iothubd::testing::TempDir dir("blob-test");
  const std::string sha = writeRandomFile(dir / "src", 4096);
  const std::string cmd = "curl -sS -o /dev/null -w '%{http_code}' --cacert '" + hub_->caFile() +
                          "' -X PUT -H 'x-ms-blob-type: BlockBlob' --data-binary @'" +
                          (dir / "src") + "' '" + proto::blobUrl(**info) + "'";
  std::FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char code[8] = {};
  ASSERT_NE(std::fgets(code, sizeof code, p), nullptr);
  ::pclose(p);
  EXPECT_STREQ(code, "201");
  EXPECT_EQ(files_->blob("dev1/steps/by-curl.txt").sha256, sha);

  std::optional<core::Result<void>> notified;
  ASSERT_TRUE(uploader_->notifyStatus({(*info)->correlationId, false, 418, "exactly this"},
                                      [&](auto r) { notified = std::move(r); }));
  ASSERT_TRUE(runUntil(*loop_, [&] { return notified.has_value(); }));
  ASSERT_TRUE(*notified) << notified->error().message;
  auto n = notificationFor((*info)->correlationId);
  ASSERT_TRUE(n);
  EXPECT_EQ(n->device, "dev1");
  EXPECT_FALSE(n->isSuccess);
  EXPECT_EQ(n->statusCode, 418);
  EXPECT_EQ(n->statusDescription, "exactly this");

  std::optional<core::Result<void>> unknown;
  ASSERT_TRUE(uploader_->notifyStatus({"no-such-id", true, 201, ""},
                                      [&](auto r) { unknown = std::move(r); }));
  ASSERT_TRUE(runUntil(*loop_, [&] { return unknown.has_value(); }));
  ASSERT_FALSE(*unknown);
  EXPECT_EQ(unknown->error().sysErrno, 400);
}

}  // namespace
}  // namespace iothubd::blob
