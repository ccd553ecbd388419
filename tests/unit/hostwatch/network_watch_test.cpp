// SPDX-License-Identifier: MIT
#include "iothubd/hostwatch/network_watch.hpp"

#include <gtest/gtest.h>

namespace iothubd::hostwatch {
namespace {

// systemd 252's Manager.OnlineState values; "" when no link is required for online.
TEST(NetworkWatch, ReadsNetworkdsOnlineState) {
  EXPECT_EQ(networkdOnlineState("online"), Online::Online);
  EXPECT_EQ(networkdOnlineState("partial"), Online::Partial);
  EXPECT_EQ(networkdOnlineState("offline"), Online::Offline);
  EXPECT_EQ(networkdOnlineState(""), Online::Unknown);
  EXPECT_EQ(networkdOnlineState("Online"), Online::Unknown);
}

// NMState: only CONNECTED_GLOBAL is fully online; CONNECTED_SITE has a default route.
TEST(NetworkWatch, ReadsNetworkManagersState) {
  EXPECT_EQ(networkManagerState(70), Online::Online);
  EXPECT_EQ(networkManagerState(60), Online::Partial);
  for (std::uint32_t offline : {10u, 20u, 30u, 40u, 50u}) {
    EXPECT_EQ(networkManagerState(offline), Online::Offline) << offline;
  }
  EXPECT_EQ(networkManagerState(0), Online::Unknown);
  EXPECT_EQ(networkManagerState(80), Online::Unknown);
}

TEST(NetworkWatch, TheNetworkComesBackWhenItGoesUpFromAKnownLowerState) {
  EXPECT_TRUE(cameBack(Online::Offline, Online::Online));
  EXPECT_TRUE(cameBack(Online::Offline, Online::Partial));
  EXPECT_TRUE(cameBack(Online::Partial, Online::Online));
  // A first reading is no change, and going down or staying is not coming back.
  EXPECT_FALSE(cameBack(Online::Unknown, Online::Online));
  EXPECT_FALSE(cameBack(Online::Online, Online::Online));
  EXPECT_FALSE(cameBack(Online::Online, Online::Partial));
  EXPECT_FALSE(cameBack(Online::Partial, Online::Offline));
  EXPECT_FALSE(cameBack(Online::Offline, Online::Unknown));
}

}  // namespace
}  // namespace iothubd::hostwatch
