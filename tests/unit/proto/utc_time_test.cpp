// SPDX-License-Identifier: MIT
#include "iothubd/proto/utc_time.hpp"

#include <gtest/gtest.h>

namespace iothubd::proto {
namespace {

// Reference values: `date -u -d '2024-02-29T12:34:56Z' +%s` and friends.
TEST(ParseUtcTime, ReadsTheFormsSdksSend) {
  EXPECT_EQ(parseUtcTime("2024-02-29T12:34:56Z"), 1709210096u);
  EXPECT_EQ(parseUtcTime("2024-02-29T12:34:56"), 1709210096u);  // [py] naive isoformat()
  EXPECT_EQ(parseUtcTime("2024-02-29T12:34:56+00:00"), 1709210096u);
  EXPECT_EQ(parseUtcTime("2024-02-29T14:34:56+02:00"), 1709210096u);
  EXPECT_EQ(parseUtcTime("2024-02-29T10:04:56-0230"), 1709210096u);
  EXPECT_EQ(parseUtcTime("1970-01-01T00:00:00Z"), 0u);
  EXPECT_EQ(parseUtcTime("2038-01-19T03:14:08Z"), 2147483648u);
}

TEST(ParseUtcTime, RoundsAFractionUpSoAMessageNeverExpiresEarly) {
  EXPECT_EQ(parseUtcTime("2024-02-29T12:34:55.000Z"), 1709210095u);
  EXPECT_EQ(parseUtcTime("2024-02-29T12:34:55.123Z"), 1709210096u);  // [node] toISOString()
  EXPECT_EQ(parseUtcTime("2024-02-29T12:34:55.000001+00:00"), 1709210096u);
}

TEST(ParseUtcTime, RefusesWhatIsNotADateTime) {
  for (const char* bad :
       {"", "tomorrow", "2024-02-30T00:00:00Z", "2023-02-29T00:00:00Z", "2024-13-01T00:00:00Z",
        "2024-01-01T24:00:00Z", "2024-01-01", "2024-01-01T00:00Z", "2024-01-01T00:00:00.Z",
        "2024-01-01T00:00:00+1", "2024-01-01T00:00:00Zjunk", "1969-12-31T23:59:59Z",
        "１９７０-01-01T00:00:00Z"}) {
    EXPECT_EQ(parseUtcTime(bad), std::nullopt) << bad;
  }
}

}  // namespace
}  // namespace iothubd::proto
