// SPDX-License-Identifier: MIT
// Fuzzes the ISO 8601 UTC time parser (expiry-time-utc from apps): no crash or overflow, and an
// accepted time names a moment of the text's own date (its year is the text's year, so a
// wrapped-around result cannot pass).
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <string>

#include "fuzz_check.hpp"
#include "iothubd/proto/utc_time.hpp"

using namespace iothubd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = fuzz::asText(data, size);
  const auto parsed = proto::parseUtcTime(text);
  if (!parsed) {
    return 0;
  }
  FUZZ_CHECK(text.size() >= 19);  // YYYY-MM-DDTHH:MM:SS at least
  // Within a day and a bit of the text's date (zone offsets and a rounded-up fraction move it).
  int year = 0;
  for (std::size_t i = 0; i < 4; ++i) {
    FUZZ_CHECK(text[i] >= '0' && text[i] <= '9');
    year = year * 10 + (text[i] - '0');
  }
  FUZZ_CHECK(year >= 1969);
  const std::time_t t = static_cast<std::time_t>(*parsed);
  std::tm tm{};
  FUZZ_CHECK(gmtime_r(&t, &tm) != nullptr);
  const int parsedYear = tm.tm_year + 1900;
  FUZZ_CHECK(parsedYear >= year - 1 && parsedYear <= year + 1);
  return 0;
}
