// SPDX-License-Identifier: MIT
// The connection state machine alone: the table is well formed, every row is taken from a state
// reached the way the session would reach it, and what apps see follows the rows.
#include "iothubd/session/connection_machine.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <optional>
#include <queue>
#include <set>
#include <string>
#include <vector>

namespace iothubd::session {
namespace {

using A = LinkAction;
using E = LinkEvent;
using S = LinkState;

constexpr S kAllStates[] = {S::Idle,     S::Connecting, S::Up,      S::Draining, S::Renewing,
                            S::Resuming, S::Aborting,   S::Backoff, S::Closing,  S::Reopening};
constexpr E kAllEvents[] = {E::Start,    E::Stop,       E::Connacked, E::Lost,  E::GaveUp,
                            E::Closed,   E::TimedOut,   E::RetryDue,  E::Renew, E::Drained,
                            E::FellBack, E::StartLater, E::Deferred};

/// Records the actions performed; a test may hook one action to feed an event back.
class Recorder : public ConnectionMachine::Actions {
 public:
  void perform(LinkAction action, const ConnectionMachine::Step& step) override {
    performed.push_back(action);
    steps.push_back({step.transition.from, step.transition.to, step.before, step.after});
    if (onAction) {
      onAction(action);
    }
  }
  struct Seen {
    S from;
    S to;
    ConnectionState before;
    ConnectionState after;
  };
  std::vector<LinkAction> performed;
  std::vector<Seen> steps;
  std::function<void(LinkAction)> onAction;
};

std::vector<LinkAction> actionsOf(const ConnectionMachine::Transition& row) {
  std::vector<LinkAction> out;
  for (LinkAction a : row.actions) {
    if (a != A::None) {
      out.push_back(a);
    }
  }
  return out;
}

/// The shortest event sequence from Idle to every reachable state (breadth first over the table).
std::map<S, std::vector<E>> pathsFromIdle() {
  std::map<S, std::vector<E>> paths{{S::Idle, {}}};
  std::queue<S> todo;
  todo.push(S::Idle);
  while (!todo.empty()) {
    S at = todo.front();
    todo.pop();
    for (const auto& row : ConnectionMachine::table()) {
      if (row.from == at && !paths.contains(row.to)) {
        paths[row.to] = paths[at];
        paths[row.to].push_back(row.event);
        todo.push(row.to);
      }
    }
  }
  return paths;
}

std::string name(const ConnectionMachine::Transition& row) {
  return std::string(linkStateName(row.from)) + " --" + linkEventName(row.event) + "--> " +
         linkStateName(row.to);
}

TEST(ConnectionMachine, TheTableHasAtMostOneRowPerStateAndEvent) {
  std::set<std::pair<S, E>> seen;
  for (const auto& row : ConnectionMachine::table()) {
    EXPECT_TRUE(seen.insert({row.from, row.event}).second) << "two rows for " << name(row);
    EXPECT_EQ(ConnectionMachine::find(row.from, row.event), &row) << name(row);
  }
}

TEST(ConnectionMachine, EveryStateIsReachedFromIdleAndLeadsBackToIdle) {
  auto paths = pathsFromIdle();
  for (S s : kAllStates) {
    EXPECT_TRUE(paths.contains(s)) << linkStateName(s) << " is unreachable";
  }
  // Whatever the link is doing, disconnect() ends in Idle once the transport confirms the close.
  for (S s : kAllStates) {
    Recorder r;
    ConnectionMachine m(r);
    for (E e : paths[s]) {
      ASSERT_TRUE(m.handle(e));
    }
    ASSERT_EQ(m.state(), s);
    if (s != S::Closing) {
      ASSERT_TRUE(m.handle(E::Stop)) << linkStateName(s) << " has no way to stop";
    }
    if (m.state() == S::Closing) {
      ASSERT_TRUE(m.handle(E::Closed));
    }
    EXPECT_EQ(m.state(), S::Idle) << "from " << linkStateName(s);
    EXPECT_EQ(m.visible(), ConnectionState::Disconnected) << "from " << linkStateName(s);
  }
}

TEST(ConnectionMachine, WalksEveryTransitionPerformingItsActionsInOrder) {
  auto paths = pathsFromIdle();
  int walked = 0;
  for (const auto& row : ConnectionMachine::table()) {
    Recorder r;
    ConnectionMachine m(r);
    for (E e : paths.at(row.from)) {
      ASSERT_TRUE(m.handle(e));
    }
    ASSERT_EQ(m.state(), row.from);
    const ConnectionState before = m.visible();
    r.performed.clear();
    r.steps.clear();
    ASSERT_TRUE(m.handle(row.event)) << name(row);
    EXPECT_EQ(m.state(), row.to) << name(row);
    EXPECT_EQ(r.performed, actionsOf(row)) << name(row);
    switch (row.visible) {
      case Visible::Keep:
        EXPECT_EQ(m.visible(), before) << name(row);
        break;
      case Visible::Connected:
        EXPECT_EQ(m.visible(), ConnectionState::Connected) << name(row);
        break;
      case Visible::Disconnected:
        EXPECT_EQ(m.visible(), ConnectionState::Disconnected) << name(row);
        break;
      case Visible::Trying:
        EXPECT_TRUE(m.visible() == ConnectionState::Connecting ||
                    m.visible() == ConnectionState::Reconnecting)
            << name(row);
        break;
    }
    for (const auto& step : r.steps) {
      EXPECT_EQ(step.before, before) << name(row);
      EXPECT_EQ(step.after, m.visible()) << name(row);
    }
    ++walked;
  }
  EXPECT_EQ(walked, static_cast<int>(ConnectionMachine::table().size()));
}

TEST(ConnectionMachine, EventsWithoutARowAreIgnoredAndChangeNothing) {
  auto paths = pathsFromIdle();
  for (S s : kAllStates) {
    for (E e : kAllEvents) {
      if (ConnectionMachine::find(s, e) != nullptr) {
        continue;
      }
      Recorder r;
      ConnectionMachine m(r);
      for (E step : paths[s]) {
        ASSERT_TRUE(m.handle(step));
      }
      const ConnectionState visible = m.visible();
      r.performed.clear();
      EXPECT_FALSE(m.handle(e));
      EXPECT_EQ(m.state(), s);
      EXPECT_EQ(m.visible(), visible);
      EXPECT_TRUE(r.performed.empty());
    }
  }
}

/// A machine and its recorded actions, for the tests that drive one path.
class LinkTest : public ::testing::Test {
 protected:
  /// From Idle to Up, forgetting the actions it took.
  void up() {
    m.handle(E::Start);
    m.handle(E::Connacked);
    r.performed.clear();
  }
  Recorder r;
  ConnectionMachine m{r};
};

TEST_F(LinkTest, AppsSeeReconnectingOnlyAfterAnEstablishedLinkWasLost) {
  m.handle(E::Start);
  EXPECT_EQ(m.visible(), ConnectionState::Connecting);
  m.handle(E::Lost);  // the first attempt failed: still connecting, never connected yet
  EXPECT_EQ(m.visible(), ConnectionState::Connecting);
  EXPECT_FALSE(m.dropped());
  m.handle(E::RetryDue);
  m.handle(E::Connacked);
  EXPECT_EQ(m.visible(), ConnectionState::Connected);
  m.handle(E::Lost);
  EXPECT_TRUE(m.dropped());
  EXPECT_EQ(m.visible(), ConnectionState::Reconnecting);
  m.handle(E::RetryDue);
  m.handle(E::Lost);
  EXPECT_EQ(m.visible(), ConnectionState::Reconnecting) << "a failed retry is still a reconnect";
  m.handle(E::RetryDue);
  m.handle(E::Connacked);
  EXPECT_EQ(m.visible(), ConnectionState::Connected);
  EXPECT_FALSE(m.dropped());
}

TEST_F(LinkTest, APlannedReconnectIsInvisibleUnlessItsConnectFails) {
  up();
  m.handle(E::Renew);
  EXPECT_EQ(m.state(), S::Draining);
  m.handle(E::Drained);
  m.handle(E::Closed);
  EXPECT_EQ(m.state(), S::Resuming);
  EXPECT_EQ(m.visible(), ConnectionState::Connected);
  m.handle(E::Connacked);
  EXPECT_EQ(m.state(), S::Up);
  // The next renewal's CONNECT fails: that is an outage apps see, and it is retried.
  m.handle(E::Renew);
  m.handle(E::Drained);
  m.handle(E::Closed);
  m.handle(E::Lost);
  EXPECT_EQ(m.state(), S::Backoff);
  EXPECT_EQ(m.visible(), ConnectionState::Reconnecting);
}

TEST_F(LinkTest, AnEventFedFromAnActionWaitsForTheCurrentTransition) {
  up();
  // The session's BeginDrain feeds Drained at once when nothing is in flight.
  r.onAction = [&](LinkAction a) {
    if (a == A::BeginDrain) {
      EXPECT_TRUE(m.handle(E::Drained));
      EXPECT_EQ(m.state(), S::Draining) << "taken before the current transition completed";
    }
  };
  m.handle(E::Renew);
  EXPECT_EQ(m.state(), S::Renewing);
  EXPECT_EQ(r.performed, (std::vector{A::BeginDrain, A::EndDrain, A::CloseLink}));
}

TEST_F(LinkTest, DisconnectWhileClosingForADisconnectAndAConnectReopens) {
  up();
  m.handle(E::Stop);
  m.handle(E::Start);  // Connect() before the close completed
  EXPECT_EQ(m.state(), S::Reopening);
  r.performed.clear();
  m.handle(E::Closed);
  EXPECT_EQ(m.state(), S::Connecting);
  EXPECT_EQ(r.performed, (std::vector{A::LinkDown, A::FinishClose, A::Announce, A::BeginAttempt}));
  EXPECT_EQ(m.visible(), ConnectionState::Connecting);
}

// Issue 14: whatever asks for the link (Connect(), auto_connect), no attempt starts before the
// retry policy's delay has passed: no tight reconnect loop driven by apps.
TEST_F(LinkTest, AskingForTheLinkDuringTheBackoffWaitsForTheRetryTimer) {
  m.handle(E::Start);
  m.handle(E::Lost);
  ASSERT_EQ(m.state(), S::Backoff);
  r.performed.clear();
  EXPECT_FALSE(m.handle(E::Start));
  EXPECT_EQ(m.state(), S::Backoff);
  EXPECT_TRUE(r.performed.empty());
  // Given up (a refused operator token), then asked for within the delay: the timer decides.
  m.handle(E::RetryDue);
  m.handle(E::GaveUp);
  ASSERT_EQ(m.state(), S::Idle);
  r.performed.clear();
  m.handle(E::StartLater);
  EXPECT_EQ(m.state(), S::Backoff);
  EXPECT_EQ(r.performed, (std::vector{A::Announce, A::ArmRetry}));
  EXPECT_EQ(m.visible(), ConnectionState::Connecting);
  // New credentials go at once.
  r.performed.clear();
  m.handle(E::Renew);
  EXPECT_EQ(r.performed, (std::vector{A::CancelRetry, A::BeginAttempt}));
}

}  // namespace
}  // namespace iothubd::session
