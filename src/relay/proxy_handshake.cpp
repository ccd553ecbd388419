// SPDX-License-Identifier: MIT
#include "proxy_handshake.hpp"

#include <arpa/inet.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "http_head.hpp"

namespace iothubd::relay {
namespace {

using core::Errc;
using core::fail;

/// Wipes a string that held a credential before it is freed.
void wipe(std::string& s) {
  if (!s.empty()) {
    OPENSSL_cleanse(s.data(), s.size());
    s.clear();
  }
}

std::string authority(const std::string& host, int port) {
  std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return h + ":" + std::to_string(port);
}

class HttpConnect final : public ProxyHandshake {
 public:
  HttpConnect(const core::ProxySettings& proxy, const std::string& host, int port) {
    const std::string target = authority(host, port);
    output_ = "CONNECT " + target + " HTTP/1.1\r\nHost: " + target + "\r\n";
    if (!proxy.username.empty()) {
      std::string credentials = basicCredentials(proxy.username, proxy.password.reveal());
      output_ += "Proxy-Authorization: " + credentials + "\r\n";
      wipe(credentials);
    }
    output_ += "\r\n";
    withCredentials_ = !proxy.username.empty();
  }
  ~HttpConnect() override { wipe(output_); }

  core::Result<bool> feed(std::string_view bytes) override {
    auto complete = reader_.feed(bytes);
    if (!complete) {
      return fail(Errc::Protocol, "HTTP proxy: " + complete.error().message);
    }
    if (!*complete) {
      return false;
    }
    const HttpResponseHead& head = reader_.head();
    const std::string status = std::to_string(head.status) + " " + head.reason;
    // 407 is the standard answer (RFC 9110 15.5.8); tinyproxy answers 401 to a CONNECT with
    // wrong credentials.
    if (head.status == 407 || head.status == 401) {
      return fail(Errc::Unauthorized,
                  withCredentials_ ? "the HTTP proxy refused the credentials (" + status + ")"
                                   : "the HTTP proxy requires credentials (" + status +
                                         "): set [proxy] proxy_username");
    }
    // RFC 9110 9.3.6: any 2xx means the tunnel is open.
    if (head.status < 200 || head.status > 299) {
      return fail(Errc::ConnectionFailed, "the HTTP proxy refused CONNECT (" + status + ")");
    }
    return true;
  }

  std::string takeLeftover() override { return reader_.takeLeftover(); }

 private:
  bool withCredentials_ = false;
  HttpHeadReader reader_;
};

/// RFC 1928 6: REP field meanings.
std::string socks5ReplyText(std::uint8_t rep) {
  switch (rep) {
    case 1:
      return "general SOCKS server failure";
    case 2:
      return "connection not allowed by ruleset";
    case 3:
      return "network unreachable";
    case 4:
      return "host unreachable";
    case 5:
      return "connection refused";
    case 6:
      return "TTL expired";
    case 7:
      return "command not supported";
    case 8:
      return "address type not supported";
    default:
      return "reply code " + std::to_string(rep);
  }
}

class Socks5 final : public ProxyHandshake {
 public:
  Socks5(const core::ProxySettings& proxy, std::string host, int port)
      : username_(proxy.username), password_(proxy.password), host_(std::move(host)), port_(port) {
    // Greeting: VER 5, NMETHODS, METHODS. Username/password (0x02) is offered only when
    // configured; RFC 1928 lets the proxy choose "no authentication" (0x00) regardless.
    if (username_.empty()) {
      output_ = std::string("\x05\x01\x00", 3);
    } else {
      output_ = std::string("\x05\x02\x00\x02", 4);
    }
  }
  ~Socks5() override { wipe(output_); }

  core::Result<bool> feed(std::string_view bytes) override {
    input_.append(bytes);
    while (true) {
      switch (state_) {
        case State::Method: {
          if (input_.size() < 2) {
            return false;
          }
          auto ver = static_cast<std::uint8_t>(input_[0]);
          auto method = static_cast<std::uint8_t>(input_[1]);
          input_.erase(0, 2);
          if (ver != 5) {
            return fail(Errc::Protocol,
                        "SOCKS5 proxy: not a SOCKS5 answer (version " + std::to_string(ver) + ")");
          }
          if (method == 0xFF) {
            return fail(username_.empty() ? Errc::ConnectionFailed : Errc::Unauthorized,
                        username_.empty()
                            ? "the SOCKS5 proxy requires authentication: set [proxy] proxy_username"
                            : "the SOCKS5 proxy accepted none of our authentication methods");
          }
          if (method == 0x02 && !username_.empty()) {
            // RFC 1929 2: VER 1, ULEN, UNAME, PLEN, PASSWD (each at most 255 bytes).
            const std::string& pass = password_.reveal();
            if (username_.size() > 255 || pass.size() > 255) {
              return fail(Errc::InvalidArgument,
                          "SOCKS5 user name and password are limited to 255 bytes each");
            }
            output_.push_back('\x01');
            output_.push_back(static_cast<char>(username_.size()));
            output_ += username_;
            output_.push_back(static_cast<char>(pass.size()));
            output_ += pass;
            state_ = State::Auth;
          } else if (method == 0x00) {
            sendConnect();
          } else {
            return fail(Errc::Protocol, "SOCKS5 proxy chose method " + std::to_string(method) +
                                            ", which we did not offer");
          }
          break;
        }
        case State::Auth: {
          if (input_.size() < 2) {
            return false;
          }
          auto status = static_cast<std::uint8_t>(input_[1]);
          input_.erase(0, 2);
          if (status != 0) {
            return fail(Errc::Unauthorized, "the SOCKS5 proxy refused the credentials (status " +
                                                std::to_string(status) + ")");
          }
          sendConnect();
          break;
        }
        case State::Reply: {
          // VER REP RSV ATYP BND.ADDR BND.PORT
          if (input_.size() < 5) {
            return false;
          }
          if (static_cast<std::uint8_t>(input_[0]) != 5 || input_[2] != 0) {
            return fail(Errc::Protocol, "SOCKS5 proxy: malformed CONNECT reply");
          }
          auto rep = static_cast<std::uint8_t>(input_[1]);
          if (rep != 0) {
            return fail(Errc::ConnectionFailed, "the SOCKS5 proxy could not connect to " +
                                                    authority(host_, port_) + ": " +
                                                    socks5ReplyText(rep));
          }
          std::size_t addressLength = 0;
          switch (static_cast<std::uint8_t>(input_[3])) {
            case 1:
              addressLength = 4;
              break;
            case 4:
              addressLength = 16;
              break;
            case 3:
              addressLength = 1 + static_cast<std::uint8_t>(input_[4]);
              break;
            default:
              return fail(Errc::Protocol, "SOCKS5 proxy: unknown address type in reply");
          }
          const std::size_t total = 4 + addressLength + 2;
          if (input_.size() < total) {
            return false;
          }
          leftover_ = input_.substr(total);
          input_.clear();
          state_ = State::Done;
          return true;
        }
        case State::Done:
          leftover_ += input_;
          input_.clear();
          return true;
      }
    }
  }

  std::string takeLeftover() override { return std::move(leftover_); }

 private:
  enum class State { Method, Auth, Reply, Done };

  void sendConnect() {
    // VER 5, CMD CONNECT, RSV, ATYP: IPv4 (1) / IPv6 (4) literal, else a name (3) the proxy
    // resolves.
    output_ += std::string("\x05\x01\x00", 3);
    unsigned char addr[16];
    if (inet_pton(AF_INET, host_.c_str(), addr) == 1) {
      output_.push_back('\x01');
      output_.append(reinterpret_cast<const char*>(addr), 4);
    } else if (inet_pton(AF_INET6, host_.c_str(), addr) == 1) {
      output_.push_back('\x04');
      output_.append(reinterpret_cast<const char*>(addr), 16);
    } else {
      output_.push_back('\x03');
      output_.push_back(static_cast<char>(std::min<std::size_t>(host_.size(), 255)));
      output_ += host_.substr(0, 255);
    }
    output_.push_back(static_cast<char>((port_ >> 8) & 0xFF));
    output_.push_back(static_cast<char>(port_ & 0xFF));
    state_ = State::Reply;
  }

  std::string username_;
  core::Secret<> password_;
  std::string host_;
  int port_;
  State state_ = State::Method;
  std::string input_;
  std::string leftover_;
};

class Socks4 final : public ProxyHandshake {
 public:
  Socks4(const core::ProxySettings& proxy, std::string host, int port) : host_(std::move(host)) {
    // VN 4, CD 1 (CONNECT), DSTPORT, DSTIP, USERID, NUL [, host, NUL for 4a].
    output_ = std::string("\x04\x01", 2);
    output_.push_back(static_cast<char>((port >> 8) & 0xFF));
    output_.push_back(static_cast<char>(port & 0xFF));
    unsigned char addr[4];
    const bool literal = inet_pton(AF_INET, host_.c_str(), addr) == 1;
    if (literal) {
      output_.append(reinterpret_cast<const char*>(addr), 4);
    } else {
      // SOCKS4a: DSTIP 0.0.0.x (x != 0) means "the name follows".
      output_.append(std::string("\x00\x00\x00\x01", 4));
    }
    output_ += proxy.username;
    output_.push_back('\0');
    if (!literal) {
      output_ += host_;
      output_.push_back('\0');
    }
  }

  core::Result<bool> feed(std::string_view bytes) override {
    if (done_) {
      leftover_.append(bytes);
      return true;
    }
    input_.append(bytes);
    // VN 0, CD, DSTPORT, DSTIP
    if (input_.size() < 8) {
      return false;
    }
    if (input_[0] != 0) {
      return fail(Errc::Protocol, "SOCKS4 proxy: malformed reply");
    }
    auto cd = static_cast<std::uint8_t>(input_[1]);
    switch (cd) {
      case 90:
        break;
      case 91:
        return fail(Errc::ConnectionFailed, "the SOCKS4 proxy rejected or failed the request (91)");
      case 92:
      case 93:
        return fail(Errc::Unauthorized,
                    "the SOCKS4 proxy could not confirm the user id (" + std::to_string(cd) + ")");
      default:
        return fail(Errc::Protocol, "SOCKS4 proxy: unknown reply code " + std::to_string(cd));
    }
    leftover_ = input_.substr(8);
    input_.clear();
    done_ = true;
    return true;
  }

  std::string takeLeftover() override { return std::move(leftover_); }

 private:
  std::string host_;
  std::string input_;
  std::string leftover_;
  bool done_ = false;
};

}  // namespace

std::string basicCredentials(std::string_view user, std::string_view password) {
  std::string plain(user);
  plain.push_back(':');
  plain.append(password);
  std::string out(4 * ((plain.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(plain.data()),
                          static_cast<int>(plain.size()));
  out.resize(static_cast<std::size_t>(n));
  wipe(plain);
  return "Basic " + out;
}

std::unique_ptr<ProxyHandshake> ProxyHandshake::create(const core::ProxySettings& proxy,
                                                       std::string targetHost, int targetPort) {
  switch (proxy.type) {
    case core::ProxySettings::Type::Http:
      return std::make_unique<HttpConnect>(proxy, targetHost, targetPort);
    case core::ProxySettings::Type::Socks5:
      return std::make_unique<Socks5>(proxy, std::move(targetHost), targetPort);
    case core::ProxySettings::Type::Socks4:
      return std::make_unique<Socks4>(proxy, std::move(targetHost), targetPort);
    case core::ProxySettings::Type::None:
      break;
  }
  return nullptr;
}

}  // namespace iothubd::relay
