// SPDX-License-Identifier: MIT
#include "call_quota.hpp"

namespace iothubd::dbusapi {

void CallQuota::Ticket::release() noexcept {
  if (!counter_) {
    return;
  }
  auto counter = std::move(counter_);
  counter_.reset();
  if (--counter->count > 0) {
    return;
  }
  // The peer's last call was answered: forget it, unless it left already (then its entry went
  // with peerGone, and the table may hold nothing of it or even a newer counter).
  if (auto peers = counter->peers.lock()) {
    if (auto it = peers->find(counter->peer); it != peers->end() && it->second == counter) {
      peers->erase(it);
    }
  }
}

CallQuota::CallQuota(std::size_t maxPerPeer) : maxPerPeer_(maxPerPeer) {}

core::Result<CallQuota::Ticket> CallQuota::acquire(const std::string& peer) {
  auto& counter = (*peers_)[peer];
  if (!counter) {
    counter = std::make_shared<Counter>(Counter{peer, 0, peers_});
  }
  if (counter->count >= maxPerPeer_) {
    return core::fail(core::Errc::LimitExceeded,
                      "the caller already has " + std::to_string(counter->count) +
                          " calls outstanding; the limit per caller is " +
                          std::to_string(maxPerPeer_) + " (max_pending_calls_per_app)");
  }
  ++counter->count;
  return Ticket(counter);
}

void CallQuota::peerGone(const std::string& peer) {
  peers_->erase(peer);
}

std::size_t CallQuota::outstanding(const std::string& peer) const {
  auto it = peers_->find(peer);
  return it == peers_->end() ? 0 : it->second->count;
}

}  // namespace iothubd::dbusapi
