// SPDX-License-Identifier: MIT
#include "iothubd/session/connection_machine.hpp"

#include <array>

#include "iothubd/core/assert.hpp"
#include "iothubd/core/log.hpp"

namespace iothubd::session {
namespace {

using A = LinkAction;
using E = LinkEvent;
using S = LinkState;
using V = Visible;

/// Every transition of the link. A state/event pair without a row is ignored: a duplicate
/// request (Start while connecting) or a timer that fired after its cause went away.
///
/// Why the rows are what they are:
/// - Failures become Lost (retried) or GaveUp by the RetryPolicy (protocol doc 9): after a refused
///   CONNACK the same credentials are not tried again unless made afresh (device key, X.509).
/// - Nothing starts an attempt before the policy's delay has passed: Start while in Backoff (an
///   app's Connect(), auto_connect) waits for the retry timer, and Start from Idle within the
///   delay after a failure is StartLater. Only new credentials or settings (Renew) go at once.
/// - A planned reconnect (token renewal, new settings) first drains in-flight PUBACKs so nothing is
///   sent twice (dbus-contract-notes "Connection"), then closes and reconnects at once; apps see
///   no change unless the new CONNECT fails.
/// - An attempt that must change (new settings while connecting, no CONNACK in time) is closed and
///   redone rather than left to finish with stale settings.
/// - Before an attempt (not a planned reconnect's) the session may wait, bounded, for a time
///   service to synchronise the clock (Deferred): no CONNECT goes out meanwhile.
/// - A new SAS token the hub refuses is not a failure while the accepted token it replaced is
///   still valid: the attempt is made again with that one (FellBack), apps see no change.
constexpr ConnectionMachine::Transition kTable[] = {
    // from         event          to             apps see      actions, in order
    {S::Idle, E::Start, S::Connecting, V::Trying, {A::Announce, A::BeginAttempt}},
    {S::Idle, E::Stop, S::Idle, V::Disconnected, {A::Announce, A::FinishClose}},
    {S::Idle, E::StartLater, S::Backoff, V::Trying, {A::Announce, A::ArmRetry}},

    {S::Backoff, E::RetryDue, S::Connecting, V::Keep, {A::BeginAttempt}},
    {S::Backoff, E::Renew, S::Connecting, V::Keep, {A::CancelRetry, A::BeginAttempt}},
    {S::Backoff, E::Stop, S::Idle, V::Disconnected, {A::CancelRetry, A::Announce, A::FinishClose}},

    {S::Connecting, E::Connacked, S::Up, V::Connected, {A::LinkUp, A::Announce, A::Release}},
    {S::Connecting, E::Lost, S::Backoff, V::Trying, {A::Record, A::Announce, A::ArmRetry}},
    {S::Connecting, E::FellBack, S::Connecting, V::Keep, {A::BeginAttempt}},
    {S::Connecting, E::Deferred, S::Backoff, V::Keep, {A::Announce, A::ArmRetry}},
    {S::Connecting, E::GaveUp, S::Idle, V::Disconnected, {A::Record, A::GiveUp, A::Announce}},
    {S::Connecting, E::TimedOut, S::Aborting, V::Keep, {A::CloseLink}},
    {S::Connecting, E::Renew, S::Renewing, V::Keep, {A::CloseLink}},
    {S::Connecting, E::Stop, S::Closing, V::Keep, {A::CloseLink}},

    {S::Up, E::Lost, S::Backoff, V::Trying, {A::LinkDown, A::Record, A::Announce, A::ArmRetry}},
    {S::Up, E::GaveUp, S::Idle, V::Disconnected, {A::LinkDown, A::Record, A::GiveUp, A::Announce}},
    {S::Up, E::Renew, S::Draining, V::Keep, {A::BeginDrain}},
    {S::Up, E::Stop, S::Closing, V::Keep, {A::CloseLink}},

    {S::Draining, E::Drained, S::Renewing, V::Keep, {A::EndDrain, A::CloseLink}},
    {S::Draining,
     E::Lost,
     S::Backoff,
     V::Trying,
     {A::EndDrain, A::LinkDown, A::Record, A::Announce, A::ArmRetry}},
    {S::Draining,
     E::GaveUp,
     S::Idle,
     V::Disconnected,
     {A::EndDrain, A::LinkDown, A::Record, A::GiveUp, A::Announce}},
    {S::Draining, E::Stop, S::Closing, V::Keep, {A::EndDrain, A::CloseLink}},

    {S::Renewing, E::Closed, S::Resuming, V::Keep, {A::LinkDown, A::BeginAttempt}},
    {S::Renewing,
     E::Lost,
     S::Backoff,
     V::Trying,
     {A::LinkDown, A::Record, A::Announce, A::ArmRetry}},
    {S::Renewing,
     E::GaveUp,
     S::Idle,
     V::Disconnected,
     {A::LinkDown, A::Record, A::GiveUp, A::Announce}},
    {S::Renewing, E::Stop, S::Closing, V::Keep, {}},

    {S::Resuming, E::Connacked, S::Up, V::Connected, {A::LinkUp, A::Announce, A::Release}},
    {S::Resuming, E::Lost, S::Backoff, V::Trying, {A::Record, A::Announce, A::ArmRetry}},
    {S::Resuming, E::FellBack, S::Resuming, V::Keep, {A::BeginAttempt}},
    {S::Resuming, E::GaveUp, S::Idle, V::Disconnected, {A::Record, A::GiveUp, A::Announce}},
    {S::Resuming, E::TimedOut, S::Aborting, V::Keep, {A::CloseLink}},
    {S::Resuming, E::Renew, S::Renewing, V::Keep, {A::CloseLink}},
    {S::Resuming, E::Stop, S::Closing, V::Keep, {A::CloseLink}},

    // The session reports any end of an aborted attempt as a failure (Timeout).
    {S::Aborting, E::Lost, S::Backoff, V::Trying, {A::Record, A::Announce, A::ArmRetry}},
    {S::Aborting, E::GaveUp, S::Idle, V::Disconnected, {A::Record, A::GiveUp, A::Announce}},
    {S::Aborting, E::Renew, S::Renewing, V::Keep, {}},
    {S::Aborting, E::Stop, S::Closing, V::Keep, {}},

    // The session reports any end of the link while closing as Closed.
    {S::Closing, E::Closed, S::Idle, V::Disconnected, {A::LinkDown, A::Announce, A::FinishClose}},
    {S::Closing, E::Start, S::Reopening, V::Keep, {}},

    {S::Reopening,
     E::Closed,
     S::Connecting,
     V::Trying,
     {A::LinkDown, A::FinishClose, A::Announce, A::BeginAttempt}},
    {S::Reopening, E::Stop, S::Closing, V::Keep, {}},
};

/// One row per pair at most (checked by the unit test that walks the table).
constexpr std::array<std::array<const ConnectionMachine::Transition*, kLinkEvents>, kLinkStates>
index() {
  std::array<std::array<const ConnectionMachine::Transition*, kLinkEvents>, kLinkStates> out{};
  for (const auto& row : kTable) {
    out[static_cast<std::size_t>(row.from)][static_cast<std::size_t>(row.event)] = &row;
  }
  return out;
}

constexpr auto kIndex = index();

}  // namespace

const char* linkStateName(LinkState state) noexcept {
  switch (state) {
    case S::Idle:
      return "Idle";
    case S::Connecting:
      return "Connecting";
    case S::Up:
      return "Up";
    case S::Draining:
      return "Draining";
    case S::Renewing:
      return "Renewing";
    case S::Resuming:
      return "Resuming";
    case S::Aborting:
      return "Aborting";
    case S::Backoff:
      return "Backoff";
    case S::Closing:
      return "Closing";
    case S::Reopening:
      return "Reopening";
  }
  return "?";
}

const char* linkEventName(LinkEvent event) noexcept {
  switch (event) {
    case E::Start:
      return "Start";
    case E::Stop:
      return "Stop";
    case E::Connacked:
      return "Connacked";
    case E::Lost:
      return "Lost";
    case E::GaveUp:
      return "GaveUp";
    case E::Closed:
      return "Closed";
    case E::TimedOut:
      return "TimedOut";
    case E::RetryDue:
      return "RetryDue";
    case E::Renew:
      return "Renew";
    case E::Drained:
      return "Drained";
    case E::FellBack:
      return "FellBack";
    case E::StartLater:
      return "StartLater";
    case E::Deferred:
      return "Deferred";
  }
  return "?";
}

const char* linkActionName(LinkAction action) noexcept {
  switch (action) {
    case A::None:
      return "None";
    case A::BeginAttempt:
      return "BeginAttempt";
    case A::CloseLink:
      return "CloseLink";
    case A::ArmRetry:
      return "ArmRetry";
    case A::CancelRetry:
      return "CancelRetry";
    case A::BeginDrain:
      return "BeginDrain";
    case A::EndDrain:
      return "EndDrain";
    case A::LinkUp:
      return "LinkUp";
    case A::Release:
      return "Release";
    case A::LinkDown:
      return "LinkDown";
    case A::Record:
      return "Record";
    case A::GiveUp:
      return "GiveUp";
    case A::FinishClose:
      return "FinishClose";
    case A::Announce:
      return "Announce";
  }
  return "?";
}

std::span<const ConnectionMachine::Transition> ConnectionMachine::table() noexcept {
  return kTable;
}

const ConnectionMachine::Transition* ConnectionMachine::find(LinkState state,
                                                             LinkEvent event) noexcept {
  return kIndex[static_cast<std::size_t>(state)][static_cast<std::size_t>(event)];
}

bool ConnectionMachine::handle(LinkEvent event) {
  if (busy_) {
    pending_.push_back(event);
    return true;
  }
  if (find(state_, event) == nullptr) {
    core::logf(core::LogLevel::Debug, "link: ", linkStateName(state_), " ignores ",
               linkEventName(event));
    return false;
  }
  busy_ = true;
  struct Done {
    bool& busy;
    ~Done() { busy = false; }
  } done{busy_};
  take(event);
  while (!pending_.empty()) {
    LinkEvent next = pending_.front();
    pending_.pop_front();
    if (find(state_, next) == nullptr) {
      core::logf(core::LogLevel::Debug, "link: ", linkStateName(state_), " ignores ",
                 linkEventName(next));
      continue;
    }
    take(next);
  }
  return true;
}

void ConnectionMachine::take(LinkEvent event) {
  const Transition* row = find(state_, event);
  IOTHUBD_ASSERT(row != nullptr, "take() is only called for an event with a row");
  const ConnectionState before = visible_;
  core::logf(core::LogLevel::Debug, "link: ", linkStateName(row->from), " --", linkEventName(event),
             "--> ", linkStateName(row->to));
  state_ = row->to;
  if (event == E::Connacked || event == E::Stop || event == E::GaveUp) {
    dropped_ = false;
  } else if (event == E::Lost && before == ConnectionState::Connected) {
    dropped_ = true;
  }
  switch (row->visible) {
    case V::Keep:
      break;
    case V::Disconnected:
      visible_ = ConnectionState::Disconnected;
      break;
    case V::Connected:
      visible_ = ConnectionState::Connected;
      break;
    case V::Trying:
      visible_ = dropped_ ? ConnectionState::Reconnecting : ConnectionState::Connecting;
      break;
  }
  const Step step{*row, before, visible_};
  for (LinkAction action : row->actions) {
    if (action != A::None) {
      actions_.perform(action, step);
    }
  }
}

}  // namespace iothubd::session
