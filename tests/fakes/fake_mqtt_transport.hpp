// SPDX-License-Identifier: MIT
// Test double for mqtt::MqttTransport: records what the session asks for and lets the test play
// the broker's side (CONNACK, PUBACK, drops) explicitly.
#pragma once

#include <string>
#include <vector>

#include "iothubd/mqtt/mqtt_transport.hpp"

namespace iothubd::fakes {

class FakeMqttTransport final : public mqtt::MqttTransport {
 public:
  struct Published {
    std::string topic;
    std::string payload;
    int qos;
    int mid;
  };

  void setListener(Listener* l) override { listener_ = l; }
  core::Result<void> connect(const mqtt::ConnectOptions& o) override {
    connects.push_back(o);
    connecting = true;
    return {};
  }
  void disconnect() override { disconnectRequested = true; }
  core::Result<int> publish(std::string_view topic, std::string_view payload, int qos) override {
    if (!connected) {
      return core::fail(core::Errc::NotConnected, "not connected");
    }
    published.push_back({std::string(topic), std::string(payload), qos, nextMid_});
    return nextMid_++;
  }
  core::Result<int> subscribe(std::string_view topic, int) override {
    subscriptions.emplace_back(topic);
    lastSubscribeMid = nextMid_;
    unacknowledgedSubscribes_.push_back(nextMid_);
    return nextMid_++;
  }

  // --- the broker's side ------------------------------------------------------------------
  void acceptConnect() {
    connecting = false;
    connected = true;
    listener_->onConnected();
    if (subackOnConnect) {
      subackAll();
    }
  }
  void refuseConnect(int connackCode) {
    connecting = false;
    mqtt::Disconnect d;
    d.connackCode = connackCode;
    d.error = {connackCode == 5 || connackCode == 4 ? core::Errc::Unauthorized
                                                    : core::Errc::ConnectionFailed,
               "refused", connackCode};
    listener_->onDisconnected(d);
  }
  void failConnect(const std::string& why = "connection refused") {
    connecting = false;
    listener_->onDisconnected({core::Error{core::Errc::ConnectionFailed, why}, false, -1});
  }
  void drop() {
    connected = false;
    listener_->onDisconnected({core::Error{core::Errc::ConnectionDropped, "lost"}, false, -1});
  }
  /// Completes a requested disconnect().
  void finishDisconnect() {
    connected = false;
    connecting = false;
    disconnectRequested = false;
    listener_->onDisconnected({core::Error{core::Errc::Cancelled, "bye"}, true, -1});
  }
  void ack(int mid) { listener_->onPublishAcked(mid); }
  /// SUBACK for the subscription subscribe() answered with `mid`.
  void suback(int mid) { listener_->onSubscribed(mid); }
  /// SUBACKs for every subscription not acknowledged yet, in order.
  void subackAll() {
    auto mids = std::move(unacknowledgedSubscribes_);
    unacknowledgedSubscribes_.clear();
    for (int mid : mids) {
      listener_->onSubscribed(mid);
    }
  }
  void deliver(const std::string& topic, const std::string& payload) {
    listener_->onMessage(topic, payload);
  }
  /// The last publish whose topic starts with `prefix`, if any.
  const Published* lastPublished(std::string_view prefix) const {
    for (auto it = published.rbegin(); it != published.rend(); ++it) {
      if (it->topic.rfind(prefix, 0) == 0) {
        return &*it;
      }
    }
    return nullptr;
  }
  /// The $rid of a request topic ".../?$rid=X".
  static std::string ridOf(const std::string& topic) {
    auto pos = topic.find("$rid=");
    return pos == std::string::npos ? std::string() : topic.substr(pos + 5);
  }

  std::vector<mqtt::ConnectOptions> connects;
  std::vector<Published> published;
  std::vector<std::string> subscriptions;
  int lastSubscribeMid = 0;
  /// acceptConnect() SUBACKs the subscriptions the CONNACK caused.
  bool subackOnConnect = false;
  bool connecting = false;
  bool connected = false;
  bool disconnectRequested = false;

 private:
  Listener* listener_ = nullptr;
  int nextMid_ = 1;
  std::vector<int> unacknowledgedSubscribes_;
};

}  // namespace iothubd::fakes
