// SPDX-License-Identifier: MIT
// The IoT Hub behaviour of the emulator plugin. All methods run on the broker's single thread
// (mosquitto 2.0.11 calls every plugin callback from its main loop), so there are no locks.
#pragma once

#include <mosquitto_broker.h>

#include <rapidjson/document.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker_util.hpp"
#include "front.hpp"
#include "json_util.hpp"

namespace iothubd::hubemu {

class Emulator {
 public:
  struct Options {
    std::string registryPath;
    std::string hubHost = "localhost";
    std::string servicePassword;
    // The front (front.hpp) on the public port when frontPort != 0, in front of the broker's
    // plain listener on 127.0.0.1:frontBackendPort.
    int frontPort = 0;
    int frontBackendPort = 0;
    std::vector<std::string> frontListen;  // numeric addresses
    std::string frontCert;
    std::string frontKey;
  };

  // Throws std::runtime_error when the registry cannot be read or the front cannot listen.
  explicit Emulator(Options options);
  ~Emulator();

  int onBasicAuth(const mosquitto_evt_basic_auth& event);
  int onAclCheck(const mosquitto_evt_acl_check& event);
  int onMessage(const mosquitto_evt_message& event);
  void onTick();
  void onDisconnect(const mosquitto_evt_disconnect& event);

 private:
  struct Identity {
    std::string device;
    std::string module;  // empty for a device identity
  };

  struct ClientInfo {
    std::string clientId;
    Identity identity;
    bool isService = false;
    bool cleanSession = true;
    int64_t se = 0;           // expiry the token claims, Unix seconds
    int64_t authMs = 0;       // wall clock of the successful auth
    int64_t expiresAtMs = 0;  // effective expiry after a lifetime cap
    std::string kickReason;   // set once a kick was issued, so it is issued only once
  };

  struct Twin {
    rapidjson::Document desired{rapidjson::kObjectType};
    rapidjson::Document reported{rapidjson::kObjectType};
    int64_t desiredVersion = 1;
    int64_t reportedVersion = 1;
  };

  // Hub-wide behaviour switches (control command "behaviour"; README, "Strictness").
  struct Behaviour {
    bool strictTopics = true;       // close the connection on a publish the hub does not serve
    bool twinLimits = true;         // refuse reported patches beyond the hub's twin limits
    int64_t connectsPerSecond = 0;  // hub-wide CONNECT rate limit; 0 = none
    int64_t clockOffsetMs = 0;      // the hub's clock minus this machine's
  };

  struct PendingMethod {
    std::string device;
    int64_t dueMs = 0;  // steady clock
  };

  struct Faults {
    int64_t pubackDelayMs = 0;
    int64_t pubackDelayCount = -1;  // messages still to delay; -1 = until cleared
    int64_t refuseConnects = 0;     // connects still to refuse; -1 = until cleared
    bool refuseByClosing = false;   // close without CONNACK (hub unavailable) instead of rc 5
    int64_t tokenCapSeconds = 0;    // 0 = no cap
    int64_t twinDelayMs = 0;
    int64_t twinStatus = 0;       // 0 = answer normally
    int64_t twinStatusCount = 0;  // requests still to fail; -1 = until cleared
  };

  struct LedgerEntry {
    int64_t total = 0;
    int64_t withoutId = 0;
    std::map<std::string, int64_t> ids;  // $.mid -> times received
  };

  struct Outgoing {
    int64_t dueMs = 0;
    std::string clientId;
    std::string topic;
    std::string payload;
    int qos = 0;
  };

  using Request = ControlRequest;
  using Handler = void (Emulator::*)(const Request&, JsonOut&);

  void loadRegistry();
  // The hub's wall clock in Unix ms (this machine's plus Behaviour::clockOffsetMs).
  int64_t hubNowMs() const;
  int refuse(const std::string& clientId, const std::string& reason);
  bool connectThrottled(const std::string& clientId);
  void closeOlderConnections(const std::string& clientId, const mosquitto* newer);
  // Whether the hub serves publishes from this identity on `topic` (IoT Hub MQTT support doc).
  bool hubServesPublish(const ClientInfo& info, std::string_view topic) const;
  bool topicAllowed(const ClientInfo& info, std::string_view topic, int access) const;
  bool connected(const std::string& clientId) const;
  // Whether one of the client's subscription filters matches `topic`. The hub only delivers on
  // topics a device subscribed to; the broker's publish-to-client-id would deliver regardless.
  bool subscribed(const std::string& clientId, const std::string& topic) const;
  void recordSubscription(const std::string& clientId, const std::string& filter, int access);
  void flushHeldC2d(const std::string& clientId);
  int64_t effectiveExpiryMs(const std::string& clientId, int64_t se, int64_t authMs) const;
  void applyTokenCaps();

  void handleTelemetry(const ClientInfo& info, std::string_view bag, int qos);
  void handleTwinRequest(const ClientInfo& info, std::string_view topic, std::string_view payload);
  void sendTwinResponse(const Outgoing& reply);
  // Why the hub would refuse this reported patch (twin_limits.hpp), or nullopt.
  std::optional<std::string> twinLimitViolation(const std::string& clientId,
                                                const rapidjson::Value& patch);
  void handleMethodResponse(const ClientInfo& info, std::string_view topic,
                            std::string_view payload);
  void handleControl(const ClientInfo& info, std::string_view topic, std::string_view payload);

  void cmdStatus(const Request& req, JsonOut& out);
  void cmdBehaviour(const Request& req, JsonOut& out);
  void cmdThrottle(const Request& req, JsonOut& out);
  void cmdRegisterDevice(const Request& req, JsonOut& out);
  void cmdClearFaults(const Request& req, JsonOut& out);
  void cmdDelayPuback(const Request& req, JsonOut& out);
  void cmdDrop(const Request& req, JsonOut& out);
  void cmdRefuseConnects(const Request& req, JsonOut& out);
  void cmdCapTokenLifetime(const Request& req, JsonOut& out);
  void cmdTwinFault(const Request& req, JsonOut& out);
  void cmdTwinGet(const Request& req, JsonOut& out);
  void cmdTwinPatchDesired(const Request& req, JsonOut& out);
  void cmdInvokeMethod(const Request& req, JsonOut& out);
  void cmdC2d(const Request& req, JsonOut& out);
  void cmdLedger(const Request& req, JsonOut& out);
  void cmdLedgerClear(const Request& req, JsonOut& out);

  // The device named by the request's "device" argument; CommandError(404) if not registered.
  std::string requireDevice(const Request& req) const;
  std::string twinJson(const Twin& twin) const;
  void publishTo(const std::string& clientId, const std::string& topic, const std::string& payload,
                 int qos);
  void emitEvent(std::string_view type, const std::string& json);

  Options options_;
  Behaviour behaviour_;
  Shaping shaping_;
  std::unique_ptr<Front> front_;
  std::deque<int64_t> recentConnects_;  // steady ms of admitted CONNECTs in the last second
  std::map<std::string, PendingMethod> pendingMethods_;  // rid -> invocation awaiting an answer
  std::map<std::string, std::string> registry_;          // client id -> base64 key
  std::unordered_map<const mosquitto*, ClientInfo> clients_;
  std::map<std::string, Twin> twins_;
  std::map<std::string, Faults> faults_;
  int64_t globalTokenCapSeconds_ = 0;
  std::map<std::string, LedgerEntry> ledger_;
  // Whether the broker keeps an offline session for the id (last connect had clean session 0).
  // C2D that the broker cannot hold (no session, or no devicebound subscription yet) is held
  // here until the device subscribes, as the hub's C2D queue would.
  std::map<std::string, bool> persistentSession_;
  std::map<std::string, std::vector<Outgoing>> heldC2d_;
  // Subscription filters per client id, kept across reconnects of persistent sessions like the
  // broker keeps the subscriptions themselves; the value is when the filter takes effect (steady
  // ms): with a SUBACK delay the hub serves a new subscription only once it acknowledged it.
  std::map<std::string, std::map<std::string, int64_t>> subscriptions_;
  std::deque<Outgoing> delayed_;  // delayed twin responses, flushed on TICK
  std::vector<std::pair<std::string, std::string>> pendingKicks_;  // client id, reason
  std::map<std::string, Handler, std::less<>> commands_;
};

}  // namespace iothubd::hubemu
