// SPDX-License-Identifier: MIT
// The connection state machine of HubSession: where the one MQTT link is, which event moves it
// where, and what each move does. Every transition is one row of one table
// (connection_machine.cpp); the session performs the rows' actions. Pure: no timers, no transport,
// no clock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>

#include "iothubd/session/connection_state.hpp"

namespace iothubd::session {

/// Where the link is. Finer than ConnectionState, which is what apps see (the table says which
/// one each transition shows).
enum class LinkState : std::uint8_t {
  Idle,        ///< no link and none wanted: before start(), after disconnect() or giving up
  Connecting,  ///< a CONNECT is under way, waiting for its CONNACK
  Up,          ///< CONNACK 0 came: publishing
  Draining,    ///< a planned reconnect waits for the PUBACKs of what is in flight; link still up
  Renewing,    ///< a planned reconnect: our DISCONNECT is under way, a CONNECT follows at once
  Resuming,    ///< a planned reconnect's CONNECT is under way; apps still see the old state
  Aborting,    ///< no CONNACK in time: our DISCONNECT of the attempt is under way
  Backoff,     ///< waiting for the retry timer
  Closing,     ///< disconnect(): our DISCONNECT is under way
  Reopening,   ///< closing for disconnect(), and wanted again meanwhile: connects once closed
};
inline constexpr std::size_t kLinkStates = 10;

/// What happens to the link. The session turns transport callbacks, timers and API calls into
/// these; a failure becomes Lost or GaveUp by asking the RetryPolicy.
enum class LinkEvent : std::uint8_t {
  Start,      ///< the link is wanted: start(), connect(), an operation under auto_connect
  Stop,       ///< disconnect()
  Connacked,  ///< CONNACK 0
  Lost,       ///< the attempt failed or the link ended unasked; the retry policy tries again
  GaveUp,     ///< ... and it does not (connection_retry off, credentials refused, not wanted)
  Closed,     ///< our own DISCONNECT completed
  TimedOut,   ///< no CONNACK within operation_timeout
  RetryDue,   ///< the retry timer fired
  Renew,      ///< reconnect on purpose: token renewal, new settings, a new SAS token
  Drained,    ///< nothing awaits its PUBACK any more, or the drain bound passed
  /// The hub refused a new SAS token (UpdateSasToken) and the accepted one it replaced is back:
  /// the attempt is made again at once with it, without apps seeing a change.
  FellBack,
  /// The link is wanted, but the retry policy's delay after the last failure has not passed
  /// (an operation under auto_connect, Connect()): the attempt waits for the retry timer.
  StartLater,
  /// The attempt waits, bounded, for a time service to synchronise the clock (a token made with
  /// a wrong clock is refused): the retry timer fires at the bound, or earlier once it is.
  Deferred,
};
inline constexpr std::size_t kLinkEvents = 13;

/// What a transition does, in the order its row lists them. The session performs them.
enum class LinkAction : std::uint8_t {
  None,          ///< (unused slot)
  BeginAttempt,  ///< make the password, CONNECT, arm the CONNACK timer
  CloseLink,     ///< DISCONNECT (the transport answers with its end-of-link callback)
  ArmRetry,      ///< arm the retry timer with the policy's delay
  CancelRetry,   ///< disarm it
  BeginDrain,    ///< wait (bounded) for in-flight PUBACKs; Drained at once if none
  EndDrain,      ///< stop waiting for them
  LinkUp,        ///< the link is established: subscribe, arm the token renewal
  Release,       ///< let waiting work go: Connect() callers, held publishes, twin requests
  LinkDown,      ///< the link is gone: in-flight publishes fail, twin answers are lost
  Record,        ///< a failed attempt or a drop: LastError, the log, Connect() callers
  GiveUp,        ///< no more attempts: everything waiting for the link fails
  FinishClose,   ///< disconnect() callers complete
  Announce,      ///< apps see the row's ConnectionState (PropertiesChanged, STATUS=)
};

/// What apps see after a transition.
enum class Visible : std::uint8_t {
  Keep,          ///< no change
  Disconnected,  ///< ConnectionState::Disconnected
  Connected,     ///< ConnectionState::Connected
  Trying,        ///< Connecting, or Reconnecting once an established link was lost
};

[[nodiscard]] const char* linkStateName(LinkState state) noexcept;
[[nodiscard]] const char* linkEventName(LinkEvent event) noexcept;
[[nodiscard]] const char* linkActionName(LinkAction action) noexcept;

class ConnectionMachine {
 public:
  static constexpr std::size_t kMaxActions = 5;

  /// One row of the table.
  struct Transition {
    LinkState from;
    LinkEvent event;
    LinkState to;
    Visible visible;
    LinkAction actions[kMaxActions];
  };

  /// A transition being taken: its row and the app-visible state before and after it.
  struct Step {
    const Transition& transition;
    ConnectionState before;
    ConnectionState after;
  };

  /// Performs actions. An action may feed further events (handle()): they are taken after the
  /// current transition's actions have all run (run to completion), never in between.
  class Actions {
   public:
    virtual ~Actions() = default;
    virtual void perform(LinkAction action, const Step& step) = 0;
  };

  explicit ConnectionMachine(Actions& actions) : actions_(actions) {}
  ConnectionMachine(const ConnectionMachine&) = delete;
  ConnectionMachine& operator=(const ConnectionMachine&) = delete;

  /// Takes the transition for `event` in the current state and performs its actions; every
  /// transition is logged at debug. An event the current state has no row for is ignored (logged
  /// at debug too); returns whether there was a row. Called from inside an action, the event
  /// waits until the current transition is complete, and the call returns true.
  bool handle(LinkEvent event);

  [[nodiscard]] LinkState state() const noexcept { return state_; }
  /// What apps see.
  [[nodiscard]] ConnectionState visible() const noexcept { return visible_; }
  /// An established link was lost and not regained yet (Trying shows as Reconnecting).
  [[nodiscard]] bool dropped() const noexcept { return dropped_; }

  /// The whole table, for the tests that walk it and for documentation.
  [[nodiscard]] static std::span<const Transition> table() noexcept;
  /// The row for `event` in `state`, or nullptr.
  [[nodiscard]] static const Transition* find(LinkState state, LinkEvent event) noexcept;

 private:
  void take(LinkEvent event);

  Actions& actions_;
  LinkState state_ = LinkState::Idle;
  ConnectionState visible_ = ConnectionState::Disconnected;
  bool dropped_ = false;
  bool busy_ = false;
  std::deque<LinkEvent> pending_;
};

}  // namespace iothubd::session
