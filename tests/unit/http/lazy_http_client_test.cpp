// SPDX-License-Identifier: MIT
// The lazily made HttpClient (issue 13: libcurl is loaded with the first upload): nothing is made
// before the first request, a failure to make it fails that request only, and everything after
// goes to the one real client.
#include "iothubd/http/lazy_http_client.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace iothubd::http {
namespace {

class RecordingClient final : public HttpClient {
 public:
  explicit RecordingClient(std::vector<std::string>& log) : log_(log) {}
  core::Result<RequestId> send(Request request, Completion) override {
    log_.push_back("send " + request.url);
    ++active_;
    return next_++;
  }
  void cancel(RequestId id) override {
    log_.push_back("cancel " + std::to_string(id));
    --active_;
  }
  [[nodiscard]] std::size_t activeRequests() const override { return active_; }

 private:
  std::vector<std::string>& log_;
  RequestId next_ = 7;
  std::size_t active_ = 0;
};

Request get(std::string url) {
  Request r;
  r.url = std::move(url);
  return r;
}

TEST(LazyHttpClient, MakesTheRealClientOnlyForTheFirstRequestAndKeepsIt) {
  std::vector<std::string> log;
  int made = 0;
  auto client = createLazyHttpClient([&]() -> core::Result<std::unique_ptr<HttpClient>> {
    ++made;
    return std::unique_ptr<HttpClient>(std::make_unique<RecordingClient>(log));
  });
  EXPECT_EQ(made, 0);
  EXPECT_EQ(client->activeRequests(), 0u);
  client->cancel(3);  // nothing made, nothing to cancel
  EXPECT_EQ(made, 0);

  auto first = client->send(get("https://a/1"), nullptr);
  ASSERT_TRUE(first);
  EXPECT_EQ(*first, 7u);
  auto second = client->send(get("https://a/2"), nullptr);
  ASSERT_TRUE(second);
  client->cancel(*first);
  EXPECT_EQ(made, 1);
  EXPECT_EQ(client->activeRequests(), 1u);
  EXPECT_EQ(log, (std::vector<std::string>{"send https://a/1", "send https://a/2", "cancel 7"}));
}

TEST(LazyHttpClient, AFailureToMakeItFailsThatRequestAndTheNextTriesAgain) {
  std::vector<std::string> log;
  int attempts = 0;
  auto client = createLazyHttpClient([&]() -> core::Result<std::unique_ptr<HttpClient>> {
    if (++attempts == 1) {
      return core::fail(core::Errc::Internal, "file upload needs libcurl: cannot load it");
    }
    return std::unique_ptr<HttpClient>(std::make_unique<RecordingClient>(log));
  });
  auto refused = client->send(get("https://a/1"), nullptr);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, core::Errc::Internal);
  EXPECT_NE(refused.error().message.find("libcurl"), std::string::npos);
  EXPECT_TRUE(client->send(get("https://a/2"), nullptr));
  EXPECT_EQ(attempts, 2);
  EXPECT_EQ(log, std::vector<std::string>{"send https://a/2"});
}

}  // namespace
}  // namespace iothubd::http
