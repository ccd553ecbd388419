// SPDX-License-Identifier: MIT
#include "link_holds.hpp"

#include <gtest/gtest.h>

namespace iothubd::dbusapi {
namespace {

TEST(LinkHolds, ByDefaultTheLinkStaysUpWhateverAppsDo) {
  LinkHolds holds;
  holds.hold(":1.1");
  EXPECT_FALSE(holds.release(":1.1"));
  EXPECT_FALSE(holds.release(":1.2")) << "a Disconnect without a hold";
  holds.hold(":1.3");
  EXPECT_FALSE(holds.peerGone(":1.3"));
}

TEST(LinkHolds, ADisconnectReleasesOnlyTheCallersHold) {
  LinkHolds holds(false);
  holds.hold(":1.1");
  holds.hold(":1.2");
  EXPECT_FALSE(holds.release(":1.2")) << ":1.1 still holds the link";
  EXPECT_FALSE(holds.release(":1.3")) << "another app's Disconnect takes nothing away";
  EXPECT_TRUE(holds.heldBy(":1.1"));
  EXPECT_TRUE(holds.release(":1.1")) << "the last hold went: the link closes";
  EXPECT_EQ(holds.holderCount(), 0u);
}

TEST(LinkHolds, WithoutKeepConnectedADisconnectClosesAnUnheldLink) {
  LinkHolds holds(false);
  EXPECT_TRUE(holds.release(":1.7"));
}

TEST(LinkHolds, AHolderLeavingTheBusReleasesItsHoldAndClosesOnlyIfItWasTheLast) {
  LinkHolds holds(false);
  holds.hold(":1.1");
  holds.hold(":1.1");
  holds.hold(":1.2");
  EXPECT_FALSE(holds.peerGone(":1.9")) << "a peer without a hold";
  EXPECT_FALSE(holds.peerGone(":1.1"));
  EXPECT_TRUE(holds.peerGone(":1.2"));
  EXPECT_FALSE(holds.peerGone(":1.2")) << "gone twice";
}

TEST(LinkHolds, KeepConnectedChangesApplyToTheNextRelease) {
  LinkHolds holds(true);
  holds.hold(":1.1");
  holds.setKeepConnected(false);
  EXPECT_TRUE(holds.release(":1.1"));
  holds.setKeepConnected(true);
  EXPECT_FALSE(holds.release(":1.1"));
}

}  // namespace
}  // namespace iothubd::dbusapi
