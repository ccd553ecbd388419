// SPDX-License-Identifier: MIT
// Fuzzes the client side of the proxy handshakes (HTTP CONNECT, SOCKS4/4a, SOCKS5 with
// username/password): the first byte picks the protocol and whether credentials are set, the
// rest is what the proxy answers, fed in reads of sizes the input also chooses. Errors must be
// final and of the documented kinds, and never quote the password.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "proxy_handshake.hpp"

using namespace iothubd;

namespace {
constexpr const char* kPassword = "pr0xy-s3cret";
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider input(data, size);
  core::ProxySettings proxy;
  static constexpr core::ProxySettings::Type kTypes[] = {core::ProxySettings::Type::Http,
                                                         core::ProxySettings::Type::Socks4,
                                                         core::ProxySettings::Type::Socks5};
  proxy.type = kTypes[input.ConsumeIntegralInRange<int>(0, 2)];
  proxy.host = "proxy.local";
  proxy.port = 3128;
  if (input.ConsumeBool()) {
    proxy.username = "user";
    proxy.password = core::Secret<>(kPassword);
  }
  auto handshake = relay::ProxyHandshake::create(proxy, "hub.example.net", 8883);
  FUZZ_CHECK(handshake != nullptr);
  FUZZ_CHECK(!handshake->takeOutput().empty());  // every protocol speaks first
  bool open = false;
  while (input.remaining_bytes() > 0) {
    const auto chunk = input.ConsumeIntegralInRange<std::size_t>(1, 64);
    const std::string bytes = input.ConsumeBytesAsString(chunk);
    auto fed = handshake->feed(bytes);
    if (!fed) {
      const auto code = fed.error().code;
      FUZZ_CHECK(code == core::Errc::Protocol || code == core::Errc::Unauthorized ||
                 code == core::Errc::ConnectionFailed);
      // Only a proxy that sent the text itself may see it quoted back (a status line).
      FUZZ_CHECK(fed.error().message.find(kPassword) == std::string::npos ||
                 std::string_view(reinterpret_cast<const char*>(data), size).find(kPassword) !=
                     std::string_view::npos);
      return 0;
    }
    (void)handshake->takeOutput();
    if (*fed) {
      open = true;
      break;
    }
  }
  if (open) {
    (void)handshake->takeLeftover();
  }
  return 0;
}
