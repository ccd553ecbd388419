// SPDX-License-Identifier: MIT
#include "iothubd/http/lazy_http_client.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "curl_loader.hpp"
#include "iothubd/core/log.hpp"

namespace iothubd::http {
namespace {

using core::Errc;

class LazyHttpClient final : public HttpClient {
 public:
  explicit LazyHttpClient(HttpClientFactory create) : create_(std::move(create)) {}

  core::Result<RequestId> send(Request request, Completion done) override {
    if (!real_) {
      auto made = create_();
      if (!made) {
        return core::fail(made.error());
      }
      real_ = std::move(*made);
    }
    return real_->send(std::move(request), std::move(done));
  }
  void cancel(RequestId id) override {
    if (real_) {
      real_->cancel(id);
    }
  }
  [[nodiscard]] std::size_t activeRequests() const override {
    return real_ ? real_->activeRequests() : 0;
  }

 private:
  HttpClientFactory create_;
  std::unique_ptr<HttpClient> real_;
};

}  // namespace

std::unique_ptr<HttpClient> createLazyHttpClient(HttpClientFactory create) {
  return std::make_unique<LazyHttpClient>(std::move(create));
}

core::Result<std::unique_ptr<HttpClient>> createLazyCurlMultiClient(loop::EventLoop& loop,
                                                                    CurlOptions options) {
  // Misconfigured TLS files fail the start, as before, not the first upload.
  for (const auto& [path, what] : {std::pair{&options.tls.caFile, "CA file"},
                                   std::pair{&options.tls.certFile, "client certificate"},
                                   std::pair{&options.tls.keyFile, "client key"}}) {
    if (!path->empty() && ::access(path->c_str(), R_OK) != 0) {
      const int err = errno;
      return core::fail(Errc::Config,
                        std::string("cannot read the TLS ") + what + " " + core::quoted(*path) +
                            ": " + std::strerror(err),
                        err);
    }
  }
  return createLazyHttpClient(
      [&loop, options = std::move(options)]() -> core::Result<std::unique_ptr<HttpClient>> {
        auto client = createCurlMultiClient(loop, options);
        if (!client) {
          if (auto why = curlLoadError()) {
            return core::fail(Errc::Internal, "file upload needs libcurl: " + *why);
          }
          return client;
        }
        core::logf(core::LogLevel::Info, "loaded libcurl for file upload");
        return client;
      });
}

}  // namespace iothubd::http
