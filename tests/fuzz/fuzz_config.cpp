// SPDX-License-Identifier: MIT
// Fuzzes config::parseSettings (iothubd.conf and its drop-ins). The input is the main file; a NUL
// byte, which ends an INI text anyway, starts a drop-in, so both sources and the "later value
// wins" path are reached.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_check.hpp"
#include "iothubd/config/settings.hpp"

using namespace iothubd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = fuzz::asText(data, size);
  const std::size_t nul = input.find('\0');
  std::vector<config::ConfigSource> sources{{"iothubd.conf", std::string(input.substr(0, nul))}};
  if (nul != std::string_view::npos) {
    sources.push_back({"iothubd.conf.d/10-fuzz.conf", std::string(input.substr(nul + 1))});
  }

  auto settings = config::parseSettings(sources);
  if (!settings) {
    FUZZ_CHECK(settings.error().code == core::Errc::Config);
    FUZZ_CHECK(!settings.error().message.empty());
    return 0;
  }
  // The ranges the key table promises.
  FUZZ_CHECK(settings->port >= 1 && settings->port <= 65535);
  FUZZ_CHECK(settings->keepAlive >= 5 && settings->keepAlive <= 1177);
  FUZZ_CHECK(settings->sastokenTtl >= 5);
  FUZZ_CHECK(settings->operationTimeout >= 1 && settings->operationTimeout <= 3600);
  FUZZ_CHECK(settings->methodResponseTimeout >= 1 && settings->methodResponseTimeout <= 300);
  return 0;
}
