// SPDX-License-Identifier: MIT
#pragma once

#include <functional>
#include <memory>

#include "iothubd/core/result.hpp"
#include "iothubd/http/curl_multi_client.hpp"
#include "iothubd/http/http_client.hpp"

namespace iothubd::http {

/// Makes the real client.
using HttpClientFactory = std::function<core::Result<std::unique_ptr<HttpClient>>()>;

/// An HttpClient that makes the real one with `create` on its first request, so that what the
/// real one needs is loaded only when it is used. Until then cancel() has nothing to cancel and
/// activeRequests() is 0. If `create` fails, send() fails with its error and the next send()
/// tries again. Loop thread only.
[[nodiscard]] std::unique_ptr<HttpClient> createLazyHttpClient(HttpClientFactory create);

/// createCurlMultiClient() on the first request (issue 13: idle memory): libcurl and its
/// dependencies, about 4 MB resident, are loaded with the first file upload, not at start (the
/// daemon does not link libcurl; src/http/curl_loader.cpp). What can be checked without libcurl
/// is checked now: the TLS files named in `options` are readable (Errc::Config otherwise).
/// Without libcurl installed, requests fail with Errc::Internal naming the library.
[[nodiscard]] core::Result<std::unique_ptr<HttpClient>> createLazyCurlMultiClient(
    loop::EventLoop& loop, CurlOptions options);

}  // namespace iothubd::http
