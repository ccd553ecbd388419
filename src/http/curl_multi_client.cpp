// SPDX-License-Identifier: MIT
#include "iothubd/http/curl_multi_client.hpp"

#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>

#include <curl/curl.h>
#include <openssl/crypto.h>

#include "iothubd/core/lifetime.hpp"
#include "iothubd/core/log.hpp"
#include "iothubd/loop/event_loop.hpp"

namespace iothubd::http {
namespace {

using core::Errc;
using core::fail;

/// libcurl's upload buffer: how much of a body one read callback may deliver. The 64 KiB default
/// costs throughput on multi-MiB block uploads (one callback and one TLS record batch per 64 KiB).
constexpr long kUploadBufferSize = 512 * 1024;

struct EasyDeleter {
  void operator()(CURL* easy) const noexcept { curl_easy_cleanup(easy); }
};
struct MultiDeleter {
  void operator()(CURLM* multi) const noexcept { curl_multi_cleanup(multi); }
};
struct SlistDeleter {
  void operator()(curl_slist* list) const noexcept {
    // The list holds the Authorization header (a SAS token): wipe it before libcurl frees it.
    for (curl_slist* node = list; node != nullptr; node = node->next) {
      OPENSSL_cleanse(node->data, std::strlen(node->data));
    }
    curl_slist_free_all(list);
  }
};
using EasyPtr = std::unique_ptr<CURL, EasyDeleter>;
using MultiPtr = std::unique_ptr<CURLM, MultiDeleter>;
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;

bool initLibrary() {
  // curl_global_init is not thread-safe and must run once per process before any other call.
  static std::once_flag once;
  static bool ok = false;
  std::call_once(once, [] { ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK; });
  return ok;
}

/// scheme://host[:port]/path of a URL: what error messages may show. The query (a blob SAS
/// token) and any user info never leave this function.
std::string urlForLog(std::string_view url) {
  const std::size_t cut = url.find_first_of("?#");
  std::string_view base = url.substr(0, cut);
  const std::size_t scheme = base.find("://");
  if (scheme != std::string_view::npos) {
    const std::size_t authorityEnd = base.find('/', scheme + 3);
    const std::size_t at = base.substr(0, authorityEnd).rfind('@');
    if (at != std::string_view::npos && at > scheme) {
      return std::string(base.substr(0, scheme + 3)) + std::string(base.substr(at + 1));
    }
  }
  return std::string(base);
}

const char* methodName(Method m) {
  switch (m) {
    case Method::Get:
      return "GET";
    case Method::Head:
      return "HEAD";
    case Method::Post:
      return "POST";
    case Method::Put:
      return "PUT";
    case Method::Delete:
      return "DELETE";
  }
  return "GET";
}

class CurlMultiClient;

/// One request in flight: the easy handle and everything its callbacks touch.
struct Transfer {
  CurlMultiClient* client = nullptr;
  HttpClient::RequestId id = 0;
  EasyPtr easy;
  SlistPtr headers;
  std::unique_ptr<BodySource> body;
  Completion done;
  Response response;
  std::string what;  ///< "PUT https://host/path" for messages
  std::size_t maxBody = 0;
  std::chrono::milliseconds timeout{0};
  std::array<char, CURL_ERROR_SIZE> errorBuffer{};
  std::optional<core::Error> bodyError;
  bool bodyTooLarge = false;
  bool paused = false;
};

class CurlMultiClient final : public HttpClient {
 public:
  CurlMultiClient(loop::EventLoop& loop, CurlOptions options, MultiPtr multi)
      : loop_(loop), options_(std::move(options)), multi_(std::move(multi)) {
    timer_ = loop_.createTimer([this] { onTimer(); });
    curl_multi_setopt(multi_.get(), CURLMOPT_SOCKETFUNCTION, &CurlMultiClient::socketCb);
    curl_multi_setopt(multi_.get(), CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi_.get(), CURLMOPT_TIMERFUNCTION, &CurlMultiClient::timerCb);
    curl_multi_setopt(multi_.get(), CURLMOPT_TIMERDATA, this);
    if (options_.maxConnections > 0) {
      curl_multi_setopt(multi_.get(), CURLMOPT_MAX_TOTAL_CONNECTIONS, options_.maxConnections);
    }
  }

  ~CurlMultiClient() override {
    lifetime_.end();
    for (auto& [id, t] : transfers_) {
      curl_multi_remove_handle(multi_.get(), t->easy.get());
    }
    transfers_.clear();
    // Cleanup closes cached connections, which calls the socket and timer callbacks: do it while
    // the watches and the timer still exist.
    multi_.reset();
    watches_.clear();
  }

  core::Result<RequestId> send(Request request, Completion done) override {
    const bool https = request.url.starts_with("https://");
    const bool plain = request.url.starts_with("http://");
    if (!https && !(plain && options_.allowPlainHttp)) {
      return fail(Errc::InvalidArgument,
                  "refusing URL " + core::quoted(urlForLog(request.url)) + ": not https");
    }
    auto t = std::make_unique<Transfer>();
    t->client = this;
    t->id = nextId_++;
    t->easy.reset(curl_easy_init());
    if (!t->easy) {
      return fail(Errc::Internal, "cannot create a libcurl handle");
    }
    t->body = std::move(request.body);
    t->done = std::move(done);
    t->maxBody = request.maxResponseBody;
    t->timeout = request.timeout;
    t->what = std::string(methodName(request.method)) + " " + urlForLog(request.url);

    CURL* e = t->easy.get();
    bool ok = true;
    auto set = [&ok](CURLcode rc) { ok = ok && rc == CURLE_OK; };
    set(curl_easy_setopt(e, CURLOPT_URL, request.url.c_str()));
    set(curl_easy_setopt(e, CURLOPT_PRIVATE, t.get()));
    set(curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L));
    set(curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errorBuffer.data()));
    set(curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(request.timeout.count())));
    set(curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         static_cast<long>(options_.connectTimeout.count())));
    set(curl_easy_setopt(e, CURLOPT_USERAGENT, options_.userAgent.c_str()));
    set(curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR,
                         options_.allowPlainHttp ? "http,https" : "https"));
    set(curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L));
    set(curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, kUploadBufferSize));
    // Protocol doc 1.5: TLS 1.2 or newer, server certificate and host name always verified.
    set(curl_easy_setopt(e, CURLOPT_SSLVERSION, static_cast<long>(CURL_SSLVERSION_TLSv1_2)));
    set(curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L));
    set(curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L));
    const TlsSettings& tls = options_.tls;
    if (!tls.caFile.empty()) {
      set(curl_easy_setopt(e, CURLOPT_CAINFO, tls.caFile.c_str()));
    }
    if (!tls.ciphers.empty()) {
      set(curl_easy_setopt(e, CURLOPT_SSL_CIPHER_LIST, tls.ciphers.c_str()));
    }
    if (const auto& proxy = options_.proxy; proxy.enabled()) {
      // Mapping as documented in core/proxy.hpp; HTTP and SOCKS5 proxies resolve the host
      // (SOCKS5_HOSTNAME), as the MQTT tunnel does.
      long type = proxy.type == core::ProxySettings::Type::Http     ? CURLPROXY_HTTP
                  : proxy.type == core::ProxySettings::Type::Socks4 ? CURLPROXY_SOCKS4
                                                                    : CURLPROXY_SOCKS5_HOSTNAME;
      set(curl_easy_setopt(e, CURLOPT_PROXY, proxy.host.c_str()));
      set(curl_easy_setopt(e, CURLOPT_PROXYPORT, static_cast<long>(proxy.port)));
      set(curl_easy_setopt(e, CURLOPT_PROXYTYPE, type));
      if (!proxy.username.empty()) {
        set(curl_easy_setopt(e, CURLOPT_PROXYUSERNAME, proxy.username.c_str()));
        set(curl_easy_setopt(e, CURLOPT_PROXYPASSWORD, proxy.password.reveal().c_str()));
        if (proxy.type == core::ProxySettings::Type::Http) {
          set(curl_easy_setopt(e, CURLOPT_PROXYAUTH, static_cast<long>(CURLAUTH_BASIC)));
        }
      }
    } else {
      // Not from the environment either: only the configuration decides where traffic goes.
      set(curl_easy_setopt(e, CURLOPT_PROXY, ""));
    }
    if (!tls.certFile.empty()) {
      set(curl_easy_setopt(e, CURLOPT_SSLCERT, tls.certFile.c_str()));
      set(curl_easy_setopt(e, CURLOPT_SSLKEY, tls.keyFile.c_str()));
      if (!tls.keyPassphrase.empty()) {
        set(curl_easy_setopt(e, CURLOPT_KEYPASSWD, tls.keyPassphrase.reveal().c_str()));
      }
    }
    set(curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &CurlMultiClient::writeCb));
    set(curl_easy_setopt(e, CURLOPT_WRITEDATA, t.get()));
    set(curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &CurlMultiClient::headerCb));
    set(curl_easy_setopt(e, CURLOPT_HEADERDATA, t.get()));

    const auto bodySize = t->body ? t->body->size() : std::optional<std::uint64_t>(0);
    const curl_off_t size = bodySize ? static_cast<curl_off_t>(*bodySize) : -1;
    switch (request.method) {
      case Method::Get:
        set(curl_easy_setopt(e, CURLOPT_HTTPGET, 1L));
        break;
      case Method::Head:
        set(curl_easy_setopt(e, CURLOPT_NOBODY, 1L));
        break;
      case Method::Delete:
        set(curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE"));
        break;
      case Method::Post:
        set(curl_easy_setopt(e, CURLOPT_POST, 1L));
        set(curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, size));
        break;
      case Method::Put:
        set(curl_easy_setopt(e, CURLOPT_UPLOAD, 1L));
        set(curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, size));
        break;
    }
    if (request.method == Method::Post || request.method == Method::Put) {
      set(curl_easy_setopt(e, CURLOPT_READFUNCTION, &CurlMultiClient::readCb));
      set(curl_easy_setopt(e, CURLOPT_READDATA, t.get()));
    }

    curl_slist* list = nullptr;
    auto append = [&list, &ok](const std::string& line) {
      curl_slist* next = curl_slist_append(list, line.c_str());
      if (next == nullptr) {
        ok = false;
      } else {
        list = next;
      }
    };
    for (const auto& [name, value] : request.headers) {
      std::string line = name;
      line += ": ";
      line += value;
      append(line);
    }
    if (!request.authorization.empty()) {
      core::Secret<> line(std::string("Authorization: ") + request.authorization.reveal());
      append(line.reveal());
    }
    t->headers.reset(list);
    set(curl_easy_setopt(e, CURLOPT_HTTPHEADER, list));
    if (!ok) {
      return fail(Errc::Internal, "cannot set up " + t->what);
    }
    if (t->body) {
      const RequestId id = t->id;
      t->body->setWakeup(lifetime_.guard([this, id] { onWake(id); }));
    }
    if (CURLMcode rc = curl_multi_add_handle(multi_.get(), e); rc != CURLM_OK) {
      return fail(Errc::Internal, "cannot start " + t->what + ": " + curl_multi_strerror(rc));
    }
    const RequestId id = t->id;
    transfers_.emplace(id, std::move(t));
    return id;
  }

  void cancel(RequestId id) override {
    auto it = transfers_.find(id);
    if (it == transfers_.end()) {
      return;
    }
    auto t = std::move(it->second);
    transfers_.erase(it);
    curl_multi_remove_handle(multi_.get(), t->easy.get());
  }

  [[nodiscard]] std::size_t activeRequests() const override { return transfers_.size(); }

 private:
  // --- loop side ---------------------------------------------------------------------------

  void onSocketReady(curl_socket_t s, std::uint32_t revents) {
    int mask = 0;
    if (revents & EPOLLIN) {
      mask |= CURL_CSELECT_IN;
    }
    if (revents & EPOLLOUT) {
      mask |= CURL_CSELECT_OUT;
    }
    if (revents & (EPOLLERR | EPOLLHUP)) {
      mask |= CURL_CSELECT_ERR;
    }
    int running = 0;
    curl_multi_socket_action(multi_.get(), s, mask, &running);
    processDone();
  }

  void onTimer() {
    int running = 0;
    curl_multi_socket_action(multi_.get(), CURL_SOCKET_TIMEOUT, 0, &running);
    processDone();
  }

  void onWake(RequestId id) {
    auto it = transfers_.find(id);
    if (it == transfers_.end() || !it->second->paused) {
      return;
    }
    it->second->paused = false;
    // libcurl re-runs the transfer (through the timer callback) and calls the read callback again.
    curl_easy_pause(it->second->easy.get(), CURLPAUSE_CONT);
    processDone();
  }

  void processDone() {
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi_.get(), &left)) {
      if (msg->msg != CURLMSG_DONE) {
        continue;
      }
      CURL* easy = msg->easy_handle;
      const CURLcode code = msg->data.result;
      Transfer* raw = nullptr;
      curl_easy_getinfo(easy, CURLINFO_PRIVATE, &raw);
      auto it = raw ? transfers_.find(raw->id) : transfers_.end();
      if (it == transfers_.end()) {
        curl_multi_remove_handle(multi_.get(), easy);
        continue;
      }
      auto t = std::move(it->second);
      transfers_.erase(it);
      curl_multi_remove_handle(multi_.get(), easy);
      auto result = outcome(*t, code);
      auto done = std::move(t->done);
      t.reset();  // closes the body source (and its descriptor) before the caller hears of it
      const auto self = lifetime_.watch();
      try {
        done(std::move(result));
      } catch (const std::exception& e) {
        core::logf(core::LogLevel::Error, "HTTP completion failed: ", e.what());
      } catch (...) {
        core::logf(core::LogLevel::Error, "HTTP completion failed");
      }
      if (self.ended()) {
        return;  // the completion destroyed the client
      }
    }
  }

  /// The one place where a CURLcode becomes a core::Error (architecture doc 6.5).
  static core::Result<Response> outcome(Transfer& t, CURLcode code) {
    if (code == CURLE_OK) {
      long status = 0;
      curl_easy_getinfo(t.easy.get(), CURLINFO_RESPONSE_CODE, &status);
      t.response.status = status;
      return std::move(t.response);
    }
    if (t.bodyError) {
      return fail(*t.bodyError);
    }
    if (t.bodyTooLarge) {
      return fail(Errc::Protocol,
                  t.what + ": response body exceeds " + std::to_string(t.maxBody) + " bytes");
    }
    const std::string why =
        t.errorBuffer[0] != '\0' ? std::string(t.errorBuffer.data()) : curl_easy_strerror(code);
    long osErrno = 0;
    curl_easy_getinfo(t.easy.get(), CURLINFO_OS_ERRNO, &osErrno);
    switch (code) {
      case CURLE_OPERATION_TIMEDOUT:
        return fail(Errc::Timeout, t.what + ": no complete answer within " +
                                       std::to_string(t.timeout.count()) + " ms (" + why + ")");
      case CURLE_UNSUPPORTED_PROTOCOL:
      case CURLE_URL_MALFORMAT:
        return fail(Errc::InvalidArgument, t.what + ": " + why);
      case CURLE_SSL_CERTPROBLEM:
      case CURLE_SSL_CIPHER:
      case CURLE_SSL_CACERT_BADFILE:
      case CURLE_SSL_CRL_BADFILE:
      case CURLE_SSL_ENGINE_NOTFOUND:
      case CURLE_SSL_ENGINE_SETFAILED:
      case CURLE_SSL_ENGINE_INITFAILED:
        return fail(Errc::Config, t.what + ": unusable TLS settings: " + why);
      case CURLE_WEIRD_SERVER_REPLY:
      case CURLE_BAD_CONTENT_ENCODING:
      case CURLE_HTTP2:
      case CURLE_HTTP2_STREAM:
      case CURLE_TOO_MANY_REDIRECTS:
        return fail(Errc::Protocol, t.what + ": " + why);
      default:
        return fail(Errc::ConnectionFailed, t.what + ": " + why, static_cast<int>(osErrno));
    }
  }

  // --- libcurl callbacks (C, noexcept: nothing may unwind through libcurl) ------------------

  static int socketCb(CURL*, curl_socket_t s, int what, void* userp, void*) noexcept {
    auto* self = static_cast<CurlMultiClient*>(userp);
    try {
      if (what == CURL_POLL_REMOVE) {
        // Destroyed at once, even when we are inside this very watch's callback: libcurl closes
        // the socket right after this returns and may open a new one with the same number, which
        // a still-registered source would make sd-event refuse. sd-event supports dropping a
        // source during its own dispatch (it detaches the fd from epoll immediately), and the
        // loop's IoWatch runs a copy of its callback.
        self->watches_.erase(s);
        return 0;
      }
      std::uint32_t events = 0;
      if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) {
        events |= EPOLLIN;
      }
      if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) {
        events |= EPOLLOUT;
      }
      if (auto it = self->watches_.find(s); it != self->watches_.end()) {
        it->second->setEvents(events);
        return 0;
      }
      auto watch = self->loop_.watchIo(
          s, events, [self, s](std::uint32_t revents) { self->onSocketReady(s, revents); });
      if (!watch) {
        core::logf(core::LogLevel::Error, "cannot watch an HTTP socket: ", watch.error().message);
        return -1;  // libcurl fails the transfer that owns the socket
      }
      self->watches_.emplace(s, std::move(*watch));
      return 0;
    } catch (...) {
      core::logf(core::LogLevel::Error, "HTTP socket callback failed");
      return -1;
    }
  }

  static int timerCb(CURLM*, long timeoutMs, void* userp) noexcept {
    auto* self = static_cast<CurlMultiClient*>(userp);
    try {
      // libcurl forbids calling curl_multi_socket_action from here; even a 0 ms timeout is
      // served by the loop on its next iteration.
      if (timeoutMs < 0) {
        self->timer_->disarm();
      } else {
        self->timer_->armAfter(std::chrono::milliseconds(timeoutMs));
      }
      return 0;
    } catch (...) {
      return -1;
    }
  }

  static std::size_t readCb(char* buffer, std::size_t size, std::size_t nitems,
                            void* userp) noexcept {
    auto* t = static_cast<Transfer*>(userp);
    if (!t->body) {
      return 0;
    }
    try {
      auto n = t->body->read(std::span<char>(buffer, size * nitems));
      if (!n) {
        t->bodyError = n.error();
        return CURL_READFUNC_ABORT;
      }
      if (*n == BodySource::kPause) {
        t->paused = true;
        return CURL_READFUNC_PAUSE;
      }
      return *n;
    } catch (const std::exception& e) {
      t->bodyError = core::Error{Errc::Internal, std::string("request body failed: ") + e.what()};
      return CURL_READFUNC_ABORT;
    } catch (...) {
      t->bodyError = core::Error{Errc::Internal, "request body failed"};
      return CURL_READFUNC_ABORT;
    }
  }

  static std::size_t writeCb(char* data, std::size_t size, std::size_t nmemb,
                             void* userp) noexcept {
    auto* t = static_cast<Transfer*>(userp);
    const std::size_t n = size * nmemb;
    if (t->response.body.size() + n > t->maxBody) {
      t->bodyTooLarge = true;
      return 0;  // libcurl ends the transfer with CURLE_WRITE_ERROR
    }
    try {
      t->response.body.append(data, n);
      return n;
    } catch (...) {
      return 0;
    }
  }

  static std::size_t headerCb(char* data, std::size_t size, std::size_t nitems,
                              void* userp) noexcept {
    auto* t = static_cast<Transfer*>(userp);
    const std::size_t n = size * nitems;
    try {
      std::string_view line(data, n);
      while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) {
        line.remove_suffix(1);
      }
      if (line.starts_with("HTTP/")) {
        // A new response begins (after "100 Continue", for one): keep only the final headers.
        t->response.headers.clear();
        return n;
      }
      const std::size_t colon = line.find(':');
      if (colon == std::string_view::npos) {
        return n;
      }
      std::string name(line.substr(0, colon));
      std::transform(name.begin(), name.end(), name.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
        value.remove_prefix(1);
      }
      while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) {
        value.remove_suffix(1);
      }
      t->response.headers.emplace_back(std::move(name), std::string(value));
      return n;
    } catch (...) {
      return 0;
    }
  }

  loop::EventLoop& loop_;
  CurlOptions options_;
  std::unique_ptr<core::Timer> timer_;
  std::map<curl_socket_t, std::unique_ptr<loop::IoWatch>> watches_;
  std::map<RequestId, std::unique_ptr<Transfer>> transfers_;
  RequestId nextId_ = 1;
  MultiPtr multi_;  ///< reset first in the destructor, while the watches and the timer exist
  core::Lifetime lifetime_;  ///< last: callbacks of a destroyed client never run
};

core::Result<void> checkReadable(const std::string& path, const char* what) {
  if (!path.empty() && ::access(path.c_str(), R_OK) != 0) {
    const int err = errno;
    return fail(Errc::Config,
                std::string("cannot read the TLS ") + what + " " + core::quoted(path) + ": " +
                    std::strerror(err),
                err);
  }
  return {};
}

}  // namespace

core::Result<std::unique_ptr<HttpClient>> createCurlMultiClient(loop::EventLoop& loop,
                                                                CurlOptions options) {
  if (!initLibrary()) {
    return fail(Errc::Internal, "cannot initialise libcurl");
  }
  const std::pair<const std::string*, const char*> files[] = {
      {&options.tls.caFile, "CA file"},
      {&options.tls.certFile, "client certificate"},
      {&options.tls.keyFile, "client key"}};
  for (const auto& [path, what] : files) {
    if (auto check = checkReadable(*path, what); !check) {
      return fail(check.error());
    }
  }
  MultiPtr multi(curl_multi_init());
  if (!multi) {
    return fail(Errc::Internal, "cannot create a libcurl multi handle");
  }
  return std::unique_ptr<HttpClient>(
      std::make_unique<CurlMultiClient>(loop, std::move(options), std::move(multi)));
}

}  // namespace iothubd::http
