// SPDX-License-Identifier: MIT
// RFC 8305 connection racing: the address order (pure) and the connector against real loopback
// sockets on a real event loop: a refused address, an address that never answers (a listener
// whose backlog is full drops further SYNs), and every address failing.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <optional>

#include "iothubd/core/unique_fd.hpp"
#include "iothubd/loop/event_loop.hpp"
#include "socket_address.hpp"
#include "tcp_connector.hpp"

namespace iothubd::relay {
namespace {

using namespace std::chrono_literals;

SocketAddress v4(const char* ip, int port) {
  SocketAddress a;
  auto* in = reinterpret_cast<sockaddr_in*>(&a.storage);
  in->sin_family = AF_INET;
  in->sin_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET, ip, &in->sin_addr);
  a.length = sizeof(sockaddr_in);
  return a;
}

SocketAddress v6(const char* ip, int port) {
  SocketAddress a;
  auto* in = reinterpret_cast<sockaddr_in6*>(&a.storage);
  in->sin6_family = AF_INET6;
  in->sin6_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET6, ip, &in->sin6_addr);
  a.length = sizeof(sockaddr_in6);
  return a;
}

std::vector<std::string> texts(const std::vector<SocketAddress>& list) {
  std::vector<std::string> out;
  for (const auto& a : list) {
    out.push_back(a.toString());
  }
  return out;
}

TEST(InterleaveFamilies, AlternatesStartingWithTheResolversFirstFamily) {
  EXPECT_EQ(texts(interleaveFamilies({v6("2001:db8::1", 1), v6("2001:db8::2", 1),
                                      v4("192.0.2.1", 1), v4("192.0.2.2", 1), v4("192.0.2.3", 1)})),
            (std::vector<std::string>{"[2001:db8::1]:1", "192.0.2.1:1", "[2001:db8::2]:1",
                                      "192.0.2.2:1", "192.0.2.3:1"}));
  EXPECT_EQ(texts(interleaveFamilies({v4("192.0.2.1", 1), v4("192.0.2.2", 1), v6("::1", 1)})),
            (std::vector<std::string>{"192.0.2.1:1", "[::1]:1", "192.0.2.2:1"}));
}

TEST(InterleaveFamilies, DropsDuplicatesAndKeepsASingleFamilyInOrder) {
  EXPECT_EQ(texts(interleaveFamilies(
                {v4("127.0.0.1", 8883), v4("127.0.0.1", 8883), v4("127.0.0.2", 8883)})),
            (std::vector<std::string>{"127.0.0.1:8883", "127.0.0.2:8883"}));
  EXPECT_TRUE(interleaveFamilies({}).empty());
}

/// A TCP listener on 127.0.0.1 with a free port. `full` makes it drop every SYN beyond the one
/// connection already waiting in its backlog: an address that never answers.
class Listener {
 public:
  explicit Listener(bool full = false) {
    fd_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    EXPECT_EQ(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(::listen(fd_.get(), 0), 0);
    ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    if (full) {
      filler_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      EXPECT_EQ(::connect(filler_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    }
  }
  int port() const { return port_; }

 private:
  core::UniqueFd fd_;
  core::UniqueFd filler_;
  int port_ = 0;
};

/// A port on 127.0.0.1 where nothing listens (bound, not listening: connects are refused).
class ClosedPort {
 public:
  ClosedPort() {
    fd_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ::bind(fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  int port() const { return port_; }

 private:
  core::UniqueFd fd_;
  int port_ = 0;
};

class TcpConnectorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loop = loop::EventLoop::create();
    ASSERT_TRUE(loop.has_value());
    loop_ = std::move(*loop);
  }

  /// Runs a connector to completion (bounded by `timeout`); nullopt if it did not finish.
  std::optional<core::Result<TcpConnector::Connected>> connect(
      std::vector<SocketAddress> addresses, std::chrono::milliseconds delay,
      std::chrono::milliseconds timeout = 5s) {
    std::optional<core::Result<TcpConnector::Connected>> result;
    TcpConnector connector(*loop_, std::move(addresses), delay,
                           [&](core::Result<TcpConnector::Connected> r) { result = std::move(r); });
    connector.start();
    EXPECT_FALSE(result.has_value()) << "done ran inside start()";
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!result && std::chrono::steady_clock::now() < deadline) {
      EXPECT_TRUE(loop_->runOnce(50ms).has_value());
    }
    return result;
  }

  std::unique_ptr<loop::EventLoop> loop_;
};

TEST_F(TcpConnectorTest, ARefusedFirstAddressFallsBackToTheNextAtOnce) {
  Listener server;
  ClosedPort closed;
  // The delay is far longer than the test may take: only the refusal can start the second try.
  auto result = connect({v4("127.0.0.1", closed.port()), v4("127.0.0.1", server.port())}, 1h);
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->has_value()) << result->error().message;
  EXPECT_EQ((*result)->address.toString(), "127.0.0.1:" + std::to_string(server.port()));
  EXPECT_TRUE((*result)->fd.valid());
}

TEST_F(TcpConnectorTest, AnAddressThatNeverAnswersCostsOneAttemptDelay) {
  Listener blackhole(true);
  Listener server;
  auto result = connect({v4("127.0.0.1", blackhole.port()), v4("127.0.0.1", server.port())}, 50ms);
  ASSERT_TRUE(result.has_value()) << "the second address was not tried while the first hung";
  ASSERT_TRUE(result->has_value()) << result->error().message;
  EXPECT_EQ((*result)->address.toString(), "127.0.0.1:" + std::to_string(server.port()));
}

TEST_F(TcpConnectorTest, IPv6LoopbackRefusedFallsBackToIPv4) {
  // `::1 localhost` before `127.0.0.1 localhost` with a server on IPv4 only (issue 14).
  Listener server;
  auto result =
      connect(interleaveFamilies({v6("::1", server.port()), v4("127.0.0.1", server.port())}), 1h);
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(result->has_value()) << result->error().message;
  EXPECT_EQ((*result)->address.family(), AF_INET);
}

TEST_F(TcpConnectorTest, EveryAddressFailingNamesTheReason) {
  ClosedPort a;
  ClosedPort b;
  auto result = connect({v4("127.0.0.1", a.port()), v4("127.0.0.1", b.port())}, 1h);
  ASSERT_TRUE(result.has_value());
  ASSERT_FALSE(result->has_value());
  EXPECT_EQ(result->error().code, core::Errc::ConnectionFailed);
  EXPECT_EQ(result->error().message, "Connection refused (2 addresses tried)");
}

TEST_F(TcpConnectorTest, NoAddressAtAllFails) {
  auto result = connect({}, 1h);
  ASSERT_TRUE(result.has_value());
  ASSERT_FALSE(result->has_value());
  EXPECT_EQ(result->error().code, core::Errc::ConnectionFailed);
}

TEST_F(TcpConnectorTest, DestroyingTheConnectorCancelsItsAttempts) {
  Listener blackhole(true);
  bool called = false;
  {
    TcpConnector connector(*loop_, {v4("127.0.0.1", blackhole.port())}, 1h,
                           [&](core::Result<TcpConnector::Connected>) { called = true; });
    connector.start();
    ASSERT_TRUE(loop_->runOnce(50ms).has_value());
  }
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(loop_->runOnce(10ms).has_value());
  }
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace iothubd::relay
