// SPDX-License-Identifier: MIT
// The IoT Hub behaviour of the emulator plugin. All methods run on the broker's single thread
// (mosquitto 2.0.11 calls every plugin callback from its main loop), so there are no locks.
#pragma once

#include <mosquitto_broker.h>

#include <rapidjson/document.h>

#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker_util.hpp"
#include "json_util.hpp"

namespace iothubd::hubemu {

class Emulator {
 public:
  struct Options {
    std::string registryPath;
    std::string hubHost = "localhost";
    std::string servicePassword;
  };

  // Throws std::runtime_error when the registry cannot be read.
  explicit Emulator(Options options);

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
  int refuse(const std::string& clientId, const std::string& reason);
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
  void handleMethodResponse(const ClientInfo& info, std::string_view topic,
                            std::string_view payload);
  void handleControl(const ClientInfo& info, std::string_view topic, std::string_view payload);

  void cmdStatus(const Request& req, JsonOut& out);
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
  std::map<std::string, std::string> registry_;  // client id -> base64 key
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
  // broker keeps the subscriptions themselves.
  std::map<std::string, std::set<std::string>> subscriptions_;
  std::deque<Outgoing> delayed_;  // delayed twin responses, flushed on TICK
  std::vector<std::pair<std::string, std::string>> pendingKicks_;  // client id, reason
  std::map<std::string, Handler, std::less<>> commands_;
};

}  // namespace iothubd::hubemu
