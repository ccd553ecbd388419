// SPDX-License-Identifier: MIT
#include "scripted_broker.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <stdexcept>

namespace iothubd::testing {
namespace {

void check(bool ok, const char* what) {
  if (!ok) {
    throw std::runtime_error(std::string("scripted broker: ") + what);
  }
}

/// A self-signed EC certificate for 127.0.0.1 and localhost, valid for a day: it is its own CA.
void makeCertificate(SSL_CTX* ctx, const std::string& caFile) {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  check(key != nullptr, "key generation");
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("scripted broker"), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, cert, cert, nullptr, nullptr, 0);
  for (auto [nid, value] : {std::pair{NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1"},
                            std::pair{NID_basic_constraints, "critical,CA:TRUE"}}) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
    check(ext != nullptr, "certificate extension");
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
  }
  check(X509_sign(cert, key, EVP_sha256()) > 0, "signing");
  check(SSL_CTX_use_certificate(ctx, cert) == 1, "certificate");
  check(SSL_CTX_use_PrivateKey(ctx, key) == 1, "key");
  FILE* f = std::fopen(caFile.c_str(), "w");
  check(f != nullptr, "writing the CA file");
  PEM_write_X509(f, cert);
  std::fclose(f);
  X509_free(cert);
  EVP_PKEY_free(key);
}

}  // namespace

std::string encodePacket(std::uint8_t header, const std::string& body) {
  std::string out(1, static_cast<char>(header));
  std::size_t length = body.size();
  do {
    auto digit = static_cast<std::uint8_t>(length % 128);
    length /= 128;
    if (length > 0) {
      digit |= 0x80;
    }
    out += static_cast<char>(digit);
  } while (length > 0);
  return out + body;
}

std::optional<Publish> parsePublish(const Packet& packet) {
  if (packet.type() != 3 || packet.body.size() < 2) {
    return std::nullopt;
  }
  Publish p;
  p.qos = (packet.header >> 1) & 3;
  const auto& b = packet.body;
  std::size_t topicLength =
      (static_cast<unsigned char>(b[0]) << 8) | static_cast<unsigned char>(b[1]);
  std::size_t at = 2 + topicLength;
  if (at > b.size() || (p.qos > 0 && at + 2 > b.size())) {
    return std::nullopt;
  }
  p.topic = b.substr(2, topicLength);
  if (p.qos > 0) {
    p.messageId = (static_cast<unsigned char>(b[at]) << 8) | static_cast<unsigned char>(b[at + 1]);
    at += 2;
  }
  p.payload = b.substr(at);
  return p;
}

std::optional<Packet> ScriptedBroker::Connection::read() {
  auto readExactly = [this](char* out, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      int r = SSL_read(ssl_, out + got, static_cast<int>(n - got));
      if (r <= 0) {
        return false;
      }
      got += static_cast<std::size_t>(r);
    }
    return true;
  };
  Packet p;
  char byte = 0;
  if (!readExactly(&byte, 1)) {
    return std::nullopt;
  }
  p.header = static_cast<std::uint8_t>(byte);
  std::size_t length = 0;
  std::size_t multiplier = 1;
  for (int i = 0; i < 4; ++i) {
    if (!readExactly(&byte, 1)) {
      return std::nullopt;
    }
    length += (static_cast<std::uint8_t>(byte) & 0x7F) * multiplier;
    multiplier *= 128;
    if ((static_cast<std::uint8_t>(byte) & 0x80) == 0) {
      break;
    }
  }
  p.body.resize(length);
  if (length > 0 && !readExactly(p.body.data(), length)) {
    return std::nullopt;
  }
  return p;
}

void ScriptedBroker::Connection::write(const std::string& bytes) {
  if (!bytes.empty()) {
    SSL_write(ssl_, bytes.data(), static_cast<int>(bytes.size()));
  }
}

void ScriptedBroker::Connection::writeInPieces(const std::string& bytes, std::size_t piece) {
  for (std::size_t at = 0; at < bytes.size(); at += piece) {
    write(bytes.substr(at, piece));
  }
}

int ScriptedBroker::Connection::pendingBytes() const {
  int n = 0;
  ::ioctl(fd_, FIONREAD, &n);
  return n;
}

void ScriptedBroker::Connection::close() {
  if (ssl_ != nullptr) {
    SSL_shutdown(ssl_);
  }
  if (fd_ >= 0) {
    ::shutdown(fd_, SHUT_RDWR);
  }
}

void ScriptedBroker::Gate::open() {
  {
    std::lock_guard lock(mutex_);
    open_ = true;
  }
  cv_.notify_all();
}

bool ScriptedBroker::Gate::wait(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return cv_.wait_for(lock, timeout, [this] { return open_; });
}

ScriptedBroker::ScriptedBroker(const std::string& dir, Script script, int receiveBuffer)
    : caFile_(dir + "/broker-ca.pem") {
  ctx_.reset(SSL_CTX_new(TLS_server_method()));
  check(ctx_ != nullptr, "SSL_CTX_new");
  makeCertificate(ctx_.get(), caFile_);
  listenFd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  check(listenFd_ >= 0, "socket");
  if (receiveBuffer > 0) {
    // Inherited by the accepted socket; set before listen() so the window starts small.
    ::setsockopt(listenFd_, SOL_SOCKET, SO_RCVBUF, &receiveBuffer, sizeof receiveBuffer);
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  check(::bind(listenFd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0, "bind");
  socklen_t len = sizeof addr;
  ::getsockname(listenFd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  check(::listen(listenFd_, 1) == 0, "listen");
  thread_ = std::thread([this, script = std::move(script)]() mutable { serve(std::move(script)); });
}

ScriptedBroker::~ScriptedBroker() {
  // A script waiting for a client that never came: accept() returns once the socket is shut.
  ::shutdown(listenFd_, SHUT_RDWR);
  if (thread_.joinable()) {
    thread_.join();
  }
  ::close(listenFd_);
}

void ScriptedBroker::serve(Script script) {
  std::string failure;
  int fd = ::accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC);
  SSL* ssl = nullptr;
  if (fd < 0) {
    failure = "no client";
  } else {
    {
      std::lock_guard lock(mutex_);
      connectionFd_ = fd;
    }
    ssl = SSL_new(ctx_.get());
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1) {
      failure = "TLS handshake failed";
    } else {
      Connection c;
      c.ssl_ = ssl;
      c.fd_ = fd;
      try {
        script(c);
      } catch (const std::exception& e) {
        failure = e.what();
      }
    }
  }
  if (ssl != nullptr) {
    SSL_free(ssl);
  }
  std::lock_guard lock(mutex_);
  if (fd >= 0) {
    ::close(fd);
  }
  connectionFd_ = -1;
  finished_ = true;
  failure_ = failure;
}

int ScriptedBroker::receiveQueue() const {
  std::lock_guard lock(mutex_);
  int n = -1;
  if (connectionFd_ >= 0) {
    ::ioctl(connectionFd_, FIONREAD, &n);
  }
  return n;
}

bool ScriptedBroker::finished() const {
  std::lock_guard lock(mutex_);
  return finished_;
}

std::string ScriptedBroker::failure() const {
  std::lock_guard lock(mutex_);
  return failure_;
}

}  // namespace iothubd::testing
