// SPDX-License-Identifier: MIT
// CurlMultiClient against a real HTTPS server (the file-upload hub's /_test/ endpoints, Python's
// ssl with the hub emulator's PKI), driven by the real sd-event loop with runOnce().
#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <openssl/rand.h>
#include <rapidjson/document.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "file_upload_hub.hpp"
#include "hub_emulator.hpp"
#include "iothubd/http/async_reader.hpp"
#include "iothubd/http/curl_multi_client.hpp"
#include "iothubd/loop/event_loop.hpp"
#include "loop_test_util.hpp"
#include "temp_dir.hpp"

namespace iothubd::http {
namespace {

using core::Errc;
using iothubd::testing::openFdCount;
using iothubd::testing::runUntil;
using iothubd::testing::sha256Hex;

std::string randomBytes(std::size_t n) {
  std::string s(n, '\0');
  RAND_bytes(reinterpret_cast<unsigned char*>(s.data()), static_cast<int>(n));
  return s;
}

rapidjson::Document json(const std::string& text) {
  rapidjson::Document d;
  d.Parse(text.c_str(), text.size());
  return d;
}

/// Counts how often the wrapped body said "pause": proves the client's pause/resume path ran.
class CountingBody final : public BodySource {
 public:
  explicit CountingBody(std::unique_ptr<BodySource> inner, int* pauses)
      : inner_(std::move(inner)), pauses_(pauses) {}
  std::optional<std::uint64_t> size() const override { return inner_->size(); }
  core::Result<std::size_t> read(std::span<char> buffer) override {
    auto n = inner_->read(buffer);
    if (n && *n == kPause)
      ++*pauses_;
    return n;
  }
  void setWakeup(std::function<void()> wake) override { inner_->setWakeup(std::move(wake)); }

 private:
  std::unique_ptr<BodySource> inner_;
  int* pauses_;
};

class CurlMultiClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = new hubemu::HubEmulator();  // only for its PKI directory; no broker is started
    server_ = new hubemu::FileUploadHub(pki_->dir(), nullptr);
    server_->start();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete pki_;
  }

  void SetUp() override {
    fdsBefore_ = openFdCount();
    loop_ = std::move(*loop::EventLoop::create());
    CurlOptions options;
    options.tls.caFile = server_->caFile();
    auto client = createCurlMultiClient(*loop_, options);
    ASSERT_TRUE(client) << client.error().message;
    client_ = std::move(*client);
  }

  void TearDown() override {
    client_.reset();
    loop_.reset();
    EXPECT_EQ(openFdCount(), fdsBefore_) << "descriptor leak";
    if (HasFailure())
      std::cerr << "--- server log ---\n" << server_->log();
  }

  /// Sends and steps the loop until the completion ran.
  core::Result<Response> perform(Request request) {
    std::optional<core::Result<Response>> result;
    auto id =
        client_->send(std::move(request), [&](core::Result<Response> r) { result = std::move(r); });
    if (!id)
      return core::fail(id.error());
    EXPECT_FALSE(result.has_value()) << "completion ran inside send()";
    EXPECT_TRUE(runUntil(*loop_, [&] { return result.has_value(); }));
    if (!result)
      return core::fail(Errc::Internal, "no completion");
    return std::move(*result);
  }

  Request get(const std::string& path) {
    Request r;
    r.url = server_->baseUrl() + path;
    return r;
  }

  static inline hubemu::HubEmulator* pki_ = nullptr;
  static inline hubemu::FileUploadHub* server_ = nullptr;
  int fdsBefore_ = 0;
  std::unique_ptr<loop::EventLoop> loop_;
  std::unique_ptr<HttpClient> client_;
};

TEST_F(CurlMultiClientTest, ReturnsStatusHeadersAndBodyOfAnyStatus) {
  auto r = perform(get("/_test/status/418"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->status, 418);
  EXPECT_EQ(r->header("x-test"), "yes");
  EXPECT_EQ(r->header("content-type"), "text/plain");
  EXPECT_EQ(r->body, "status 418");
}

TEST_F(CurlMultiClientTest, PostsAStringBodyWithHeadersAndAuthorization) {
  Request r = get("/_test/echo");
  r.method = Method::Post;
  r.headers = {{"Content-Type", "application/json"}, {"X-Extra", "1"}};
  r.authorization = core::Secret<>("SharedAccessSignature sr=a&sig=b&se=1");
  r.body = std::make_unique<StringBody>("{\"blobName\":\"x\"}");
  auto resp = perform(std::move(r));
  ASSERT_TRUE(resp) << resp.error().message;
  ASSERT_EQ(resp->status, 200);
  auto echo = json(resp->body);
  EXPECT_STREQ(echo["method"].GetString(), "POST");
  EXPECT_EQ(echo["length"].GetInt(), 16);
  EXPECT_FALSE(echo["chunked"].GetBool());
  EXPECT_STREQ(echo["headers"]["authorization"].GetString(),
               "SharedAccessSignature sr=a&sig=b&se=1");
  EXPECT_STREQ(echo["headers"]["x-extra"].GetString(), "1");
  EXPECT_STREQ(echo["headers"]["content-type"].GetString(), "application/json");
}

TEST_F(CurlMultiClientTest, PostAndPutWithoutBodySendZeroLength) {
  for (Method m : {Method::Post, Method::Put}) {
    Request r = get("/_test/echo");
    r.method = m;
    auto resp = perform(std::move(r));
    ASSERT_TRUE(resp) << resp.error().message;
    EXPECT_EQ(json(resp->body)["length"].GetInt(), 0);
  }
}

TEST_F(CurlMultiClientTest, StreamsAPipeThatHasNoDataYetPausingUntilItIsReadable) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  core::UniqueFd readEnd(fds[0]);
  core::UniqueFd writeEnd(fds[1]);
  ::fcntl(writeEnd.get(), F_SETFL, O_NONBLOCK);
  auto reader = createFdReader(*loop_, std::move(readEnd));
  ASSERT_TRUE(reader) << reader.error().message;
  int pauses = 0;
  Request r = get("/_test/echo");
  r.method = Method::Put;
  r.body = std::make_unique<CountingBody>(createReaderBody(std::move(*reader)), &pauses);

  // A slow producer on the same loop: 40 pieces of 25 000 bytes, one every 5 ms.
  const std::string data = randomBytes(1'000'000);
  std::size_t written = 0;
  std::unique_ptr<core::Timer> producer;
  producer = loop_->createTimer([&] {
    const std::size_t end = std::min(data.size(), (written / 25'000 + 1) * 25'000);
    const ssize_t n = ::write(writeEnd.get(), data.data() + written, end - written);
    if (n > 0)
      written += static_cast<std::size_t>(n);
    if (written == data.size()) {
      writeEnd.reset();  // EOF for the reader
    } else {
      producer->armAfter(std::chrono::milliseconds(5));
    }
  });
  producer->armAfter(std::chrono::milliseconds(5));

  auto resp = perform(std::move(r));
  ASSERT_TRUE(resp) << resp.error().message;
  auto echo = json(resp->body);
  EXPECT_EQ(echo["length"].GetInt(), 1'000'000);
  EXPECT_EQ(echo["sha256"].GetString(), sha256Hex(data));
  EXPECT_TRUE(echo["chunked"].GetBool());
  EXPECT_GT(pauses, 0) << "the body never paused, so pause/resume was not exercised";
}

TEST_F(CurlMultiClientTest, PutsARegularFileWithContentLength) {
  iothubd::testing::TempDir dir("http-test");
  const std::string data = randomBytes(3 * 1024 * 1024 + 17);
  iothubd::testing::writeFile(dir / "f", data);
  core::UniqueFd fd(::open((dir / "f").c_str(), O_RDONLY | O_CLOEXEC));
  auto reader = createFdReader(*loop_, std::move(fd));
  ASSERT_TRUE(reader) << reader.error().message;
  EXPECT_EQ((*reader)->sizeHint(), data.size());
  Request r = get("/_test/echo");
  r.method = Method::Put;
  r.body = createReaderBody(std::move(*reader), data.size());
  auto resp = perform(std::move(r));
  ASSERT_TRUE(resp) << resp.error().message;
  auto echo = json(resp->body);
  EXPECT_EQ(echo["length"].GetInt(), static_cast<int>(data.size()));
  EXPECT_EQ(echo["sha256"].GetString(), sha256Hex(data));
  EXPECT_FALSE(echo["chunked"].GetBool());
}

TEST_F(CurlMultiClientTest, ReaderDeliversAFileWhosePagesAreNotCached) {
  // With its pages dropped from the cache, preadv2(RWF_NOWAIT) answers EAGAIN (ext4, xfs) and
  // the reader reads on a worker; on file systems without RWF_NOWAIT support it does the same.
  iothubd::testing::TempDir dir("http-test");
  const std::string data = randomBytes(2 * 1024 * 1024 + 5);
  iothubd::testing::writeFile(dir / "cold", data);
  core::UniqueFd fd(::open((dir / "cold").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_EQ(::fdatasync(fd.get()), 0);
  ASSERT_EQ(::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED), 0);
  auto reader = createFdReader(*loop_, std::move(fd));
  ASSERT_TRUE(reader) << reader.error().message;
  std::string got;
  bool eof = false;
  std::function<void()> next = [&] {
    ASSERT_TRUE((*reader)->read(700 * 1024, [&](core::Result<std::string> chunk) {
      ASSERT_TRUE(chunk) << chunk.error().message;
      if (chunk->empty()) {
        eof = true;
        return;
      }
      EXPECT_LE(chunk->size(), 700u * 1024);
      got += *chunk;
      next();
    }));
  };
  next();
  ASSERT_TRUE(runUntil(*loop_, [&] { return eof; }));
  EXPECT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data);
}

TEST_F(CurlMultiClientTest, ABodyShorterThanAnnouncedFailsWithIo) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  ASSERT_EQ(::write(fds[1], "abc", 3), 3);
  ::close(fds[1]);
  auto reader = createFdReader(*loop_, core::UniqueFd(fds[0]));
  ASSERT_TRUE(reader);
  Request r = get("/_test/echo");
  r.method = Method::Put;
  r.body = createReaderBody(std::move(*reader), 10);
  auto resp = perform(std::move(r));
  ASSERT_FALSE(resp);
  EXPECT_EQ(resp.error().code, Errc::Io);
  EXPECT_EQ(resp.error().message, "the upload source ended after 3 of 10 bytes");
}

TEST_F(CurlMultiClientTest, ReportsTimeoutAsTimeout) {
  Request r = get("/_test/delay/3000");
  r.timeout = std::chrono::milliseconds(300);
  auto resp = perform(std::move(r));
  ASSERT_FALSE(resp);
  EXPECT_EQ(resp.error().code, Errc::Timeout) << resp.error().message;
  EXPECT_NE(resp.error().message.find("GET " + server_->baseUrl() + "/_test/delay/3000"),
            std::string::npos)
      << resp.error().message;
}

TEST_F(CurlMultiClientTest, ReportsARefusedConnectionAsConnectionFailed) {
  // A port that was free a moment ago: nothing listens there.
  Request r;
  r.url = "https://127.0.0.1:1/devices/x?sig=SECRET";
  auto resp = perform(std::move(r));
  ASSERT_FALSE(resp);
  EXPECT_EQ(resp.error().code, Errc::ConnectionFailed) << resp.error().message;
  EXPECT_EQ(resp.error().message.find("SECRET"), std::string::npos) << resp.error().message;
}

TEST_F(CurlMultiClientTest, RefusesAServerItDoesNotTrust) {
  client_.reset();
  auto client = createCurlMultiClient(*loop_, CurlOptions{});  // system store: not our test CA
  ASSERT_TRUE(client);
  client_ = std::move(*client);
  auto resp = perform(get("/_test/status/200"));
  ASSERT_FALSE(resp);
  EXPECT_EQ(resp.error().code, Errc::ConnectionFailed);
  EXPECT_NE(resp.error().message.find("certificate"), std::string::npos) << resp.error().message;
}

TEST_F(CurlMultiClientTest, BoundsTheResponseBody) {
  Request r = get("/_test/bytes/2000");
  r.maxResponseBody = 1000;
  auto resp = perform(std::move(r));
  ASSERT_FALSE(resp);
  EXPECT_EQ(resp.error().code, Errc::Protocol);
  EXPECT_NE(resp.error().message.find("exceeds 1000 bytes"), std::string::npos);
  r = get("/_test/bytes/1000");
  r.maxResponseBody = 1000;
  auto ok = perform(std::move(r));
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(ok->body.size(), 1000u);
}

TEST_F(CurlMultiClientTest, RefusesPlainHttpAndBadTlsFiles) {
  Request r;
  r.url = "http://127.0.0.1:1/";
  auto id = client_->send(std::move(r), [](core::Result<Response>) { ADD_FAILURE(); });
  ASSERT_FALSE(id);
  EXPECT_EQ(id.error().code, Errc::InvalidArgument);
  CurlOptions bad;
  bad.tls.caFile = "/nonexistent/ca.crt";
  auto client = createCurlMultiClient(*loop_, bad);
  ASSERT_FALSE(client);
  EXPECT_EQ(client.error().code, Errc::Config);
}

TEST_F(CurlMultiClientTest, CancelledRequestsNeverComplete) {
  bool cancelledRan = false;
  auto slow =
      client_->send(get("/_test/delay/500"), [&](core::Result<Response>) { cancelledRan = true; });
  ASSERT_TRUE(slow);
  bool otherDone = false;
  std::optional<HttpClient::RequestId> other;
  auto first = client_->send(get("/_test/status/204"), [&](core::Result<Response> r) {
    EXPECT_TRUE(r);
    client_->cancel(*slow);  // from inside another completion
    otherDone = true;
  });
  ASSERT_TRUE(first);
  ASSERT_TRUE(runUntil(*loop_, [&] { return otherDone; }));
  EXPECT_EQ(client_->activeRequests(), 0u);
  // Let the server's late answer arrive, if it were still wanted.
  bool later = false;
  ASSERT_TRUE(
      client_->send(get("/_test/delay/600"), [&](core::Result<Response>) { later = true; }));
  ASSERT_TRUE(runUntil(*loop_, [&] { return later; }));
  EXPECT_FALSE(cancelledRan);
}

TEST_F(CurlMultiClientTest, RunsManyRequestsConcurrentlyAndFromCompletions) {
  constexpr int kCount = 20;
  int done = 0;
  int chained = 0;
  for (int i = 0; i < kCount; ++i) {
    Request r = get("/_test/echo");
    r.method = Method::Post;
    r.body = std::make_unique<StringBody>(std::string(static_cast<std::size_t>(i) * 1000, 'a'));
    ASSERT_TRUE(client_->send(std::move(r), [&, i](core::Result<Response> resp) {
      ASSERT_TRUE(resp) << resp.error().message;
      EXPECT_EQ(json(resp->body)["length"].GetInt(), i * 1000);
      ++done;
      if (i % 5 == 0) {
        ASSERT_TRUE(client_->send(get("/_test/status/200"), [&](core::Result<Response> again) {
          EXPECT_TRUE(again && again->status == 200);
          ++chained;
        }));
      }
    }));
  }
  ASSERT_TRUE(runUntil(*loop_, [&] { return done == kCount && chained == kCount / 5; }));
}

}  // namespace
}  // namespace iothubd::http
