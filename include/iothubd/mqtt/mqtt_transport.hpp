// SPDX-License-Identifier: MIT
#pragma once

#include <string>
#include <string_view>

#include "iothubd/core/proxy.hpp"
#include "iothubd/core/result.hpp"
#include "iothubd/core/secret.hpp"
#include "iothubd/core/tls_settings.hpp"

namespace iothubd::mqtt {

using TlsSettings = core::TlsSettings;

/// One MQTT 3.1.1 CONNECT (protocol doc 1.2). CleanSession is always 0, as in every SDK.
struct ConnectOptions {
  std::string host;  ///< TCP/TLS peer (the gateway when GatewayHostName is set); also SNI
  int port = 8883;
  std::string clientId;
  std::string username;
  core::Secret<> password;  ///< SAS token; empty for X.509
  int keepAliveSeconds = 60;
  TlsSettings tls;
  /// MQTT over WebSockets over TLS (protocol doc 1.1): HTTP Upgrade on `websocketPath` with
  /// subprotocol "mqtt"; `port` is then usually 443.
  bool websockets = false;
  std::string websocketPath = "/$iothub/websocket";
  std::string userAgent;      ///< User-Agent of the WebSocket upgrade request
  core::ProxySettings proxy;  ///< protocol doc 1.6; Type None = direct
};

/// How a connection attempt or connection ended, already classified for the session.
struct Disconnect {
  core::Error error;       ///< code ConnectionFailed/ConnectionDropped/Unauthorized/...
  bool requested = false;  ///< the result of our own disconnect()
  int connackCode = -1;    ///< CONNACK return code when the broker refused, else -1
};

/// The MQTT connection as the session sees it. Implementations are loop-driven and never block.
/// All callbacks arrive on the loop thread, never from inside a call to this interface.
class MqttTransport {
 public:
  class Listener {
   public:
    virtual ~Listener() = default;
    /// CONNACK 0 arrived.
    virtual void onConnected() = 0;
    /// The attempt failed or the connection ended (exactly once per connect()).
    virtual void onDisconnected(const Disconnect& reason) = 0;
    /// PUBACK for a QoS 1 publish.
    virtual void onPublishAcked(int messageId) = 0;
    virtual void onSubscribed(int messageId) = 0;
    virtual void onMessage(std::string_view topic, std::string_view payload) = 0;
  };

  virtual ~MqttTransport() = default;
  virtual void setListener(Listener* listener) = 0;
  /// Starts an attempt; the outcome comes through the listener. Fails at once only for
  /// invalid options.
  [[nodiscard]] virtual core::Result<void> connect(const ConnectOptions& options) = 0;
  /// Sends DISCONNECT and closes; onDisconnected(requested=true) follows.
  virtual void disconnect() = 0;
  /// Queues a publish; returns its message id (QoS 1: an onPublishAcked with the same id follows).
  [[nodiscard]] virtual core::Result<int> publish(std::string_view topic, std::string_view payload,
                                                  int qos) = 0;
  [[nodiscard]] virtual core::Result<int> subscribe(std::string_view topic, int qos) = 0;
};

}  // namespace iothubd::mqtt
