// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <unordered_map>

#include "iothubd/core/result.hpp"

namespace iothubd::dbusapi {

/// Bounds the calls one bus peer may have outstanding at once (architecture doc 6.4): every
/// asynchronous method holds a Ticket from its dispatch until it is answered, and a peer's call
/// beyond the limit is refused with LimitExceeded naming it (max_pending_calls_per_app).
/// dbus-daemon's own bound (128 pending replies per connection by default) covers neither calls
/// sent with NO_REPLY_EXPECTED, which the daemon still runs, nor buses configured otherwise. Peers
/// are D-Bus unique names. Loop thread only.
class CallQuota {
  struct Counter;

 public:
  static constexpr std::size_t kDefaultMaxPerPeer = 256;

  /// One call's slot: destroying the ticket (or release()) frees it. A ticket may outlive its
  /// quota (completions of calls still running at shutdown).
  class Ticket {
   public:
    Ticket() = default;
    ~Ticket() { release(); }
    Ticket(Ticket&& other) noexcept : counter_(std::move(other.counter_)) {}
    Ticket& operator=(Ticket&& other) noexcept {
      if (this != &other) {
        release();
        counter_ = std::move(other.counter_);
      }
      return *this;
    }
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;

    /// Frees the slot now (the call was answered); idempotent.
    void release() noexcept;
    [[nodiscard]] explicit operator bool() const noexcept { return counter_ != nullptr; }

   private:
    friend class CallQuota;
    explicit Ticket(std::shared_ptr<Counter> counter) : counter_(std::move(counter)) {}
    std::shared_ptr<Counter> counter_;
  };

  explicit CallQuota(std::size_t maxPerPeer = kDefaultMaxPerPeer);

  /// A slot for one more call of `peer`, or Errc::LimitExceeded when it has maxPerPeer
  /// outstanding.
  [[nodiscard]] core::Result<Ticket> acquire(const std::string& peer);
  /// The peer left the bus: its entry goes at once. Its calls still run to their end (their
  /// answers go nowhere) and their tickets then free nothing.
  void peerGone(const std::string& peer);

  [[nodiscard]] std::size_t outstanding(const std::string& peer) const;
  /// Peers with calls outstanding (entries go when their last call is answered).
  [[nodiscard]] std::size_t peerCount() const { return peers_->size(); }
  [[nodiscard]] std::size_t maxPerPeer() const noexcept { return maxPerPeer_; }
  /// Configuration reload: later calls are admitted against `maxPerPeer`; calls outstanding
  /// already stay.
  void setMaxPerPeer(std::size_t maxPerPeer) noexcept { maxPerPeer_ = maxPerPeer; }

 private:
  using Peers = std::unordered_map<std::string, std::shared_ptr<Counter>>;
  struct Counter {
    std::string peer;
    std::size_t count = 0;
    std::weak_ptr<Peers> peers;  ///< the quota's table; gone with the quota
  };

  std::size_t maxPerPeer_;
  std::shared_ptr<Peers> peers_ = std::make_shared<Peers>();
};

}  // namespace iothubd::dbusapi
