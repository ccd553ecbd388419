// SPDX-License-Identifier: MIT
// Test support: another app on the bus, as another user. Runs iothubd-test-peer
// (tests/integration/peer) in a process of its own with that user's uid and groups, so that the
// bus policy and the daemon see a real caller of that identity; the test drives it over a pipe.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace iothubd::testing {

/// The users the trust-boundary tests call as (created by scripts/lib/common.sh
/// ensure_test_users, or by ensureTestUsers()).
inline constexpr const char* kMemberUser = "iothubd-test-member";      ///< in group iothub
inline constexpr const char* kOutsiderUser = "iothubd-test-outsider";  ///< in neither group
inline constexpr const char* kAdminUser = "iothubd-test-admin";        ///< in group iothub-admin

/// Creates the groups iothub and iothub-admin and the three test users if missing (needs root;
/// scripts/test creates them beforehand). Throws naming what failed.
void ensureTestUsers();

/// What a call came back with.
struct PeerReply {
  std::string error;  ///< D-Bus error name; "" on success
  std::string message;
  std::string json;  ///< the reply's values as a JSON array
  [[nodiscard]] bool ok() const { return error.empty(); }
  /// The first value when it is a string (or "").
  [[nodiscard]] std::string firstString() const;
};

/// A message the peer received that was not a reply to its own call.
struct PeerEvent {
  std::string type;  ///< signal, method_call, ...
  std::string sender, destination, path, interface, member;
  std::string json;  ///< its values as a JSON array
};

class BusPeer {
 public:
  /// Starts the peer as `user` (uid, primary group and supplementary groups from the user
  /// database) on the bus at `address`; the helper binary is $IOTHUBD_TEST_PEER, copied by
  /// the caller to a place every test user can execute (`helper`).
  BusPeer(const std::string& address, const std::string& user, const std::string& helper);
  ~BusPeer();
  BusPeer(const BusPeer&) = delete;
  BusPeer& operator=(const BusPeer&) = delete;

  /// A method call; `argsJson` a JSON array matching `signature` (`h`: a path the peer opens
  /// read-only with its own rights).
  PeerReply call(const std::string& member, const std::string& signature = "",
                 const std::string& argsJson = "[]",
                 const std::string& interface = "org.iothubd.Device1",
                 const std::string& path = "/org/iothubd/Device",
                 const std::string& destination = "org.iothubd");
  /// Emits a signal (`destination` "" for a broadcast).
  PeerReply signal(const std::string& destination, const std::string& path,
                   const std::string& interface, const std::string& member,
                   const std::string& signature, const std::string& argsJson);
  /// AddMatch; the reply says whether the bus took the rule.
  PeerReply addMatch(const std::string& rule);
  /// Returns once everything the bus sent this peer so far has been recorded.
  void sync();
  [[nodiscard]] std::string uniqueName();
  /// link(2) with the peer's rights: 0 or the errno.
  int link(const std::string& from, const std::string& to);

  /// Everything received so far (signals, eavesdropped messages).
  [[nodiscard]] std::vector<PeerEvent> events() const;
  /// Events from `sender` (a unique name) named `member` ("" = any).
  [[nodiscard]] std::vector<PeerEvent> eventsFrom(const std::string& sender,
                                                  const std::string& member = "") const;
  /// Waits (bounded) for an event named `member` from `sender`.
  std::optional<PeerEvent> waitForEvent(
      const std::string& sender, const std::string& member,
      std::chrono::milliseconds timeout = std::chrono::seconds(10));
  [[nodiscard]] const std::string& user() const { return user_; }

 private:
  PeerReply request(const std::string& json, std::chrono::milliseconds timeout);
  void readLoop();

  std::string user_;
  pid_t pid_ = -1;
  int toPeer_ = -1;
  int fromPeer_ = -1;
  std::thread reader_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::map<long, PeerReply> replies_;
  std::vector<PeerEvent> events_;
  long nextId_ = 1;
  bool eof_ = false;
  std::string stderr_;
};

/// `text` as a JSON string literal, for the peer's arguments.
[[nodiscard]] std::string jsonQuote(const std::string& text);

/// Path of the helper: $IOTHUBD_TEST_PEER (set by meson for the test).
[[nodiscard]] std::string testPeerBinary();

}  // namespace iothubd::testing
