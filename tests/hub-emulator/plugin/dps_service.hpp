// SPDX-License-Identifier: MIT
// The plugin's DPS mode (plugin_opt_mode dps): plays the Azure IoT Hub Device Provisioning
// Service's MQTT device endpoint on its own broker. See ../README.md, "DPS emulator". Like the
// hub emulation, every method runs on the broker's single thread; no locks.
#pragma once

#include <mosquitto_broker.h>

#include <rapidjson/document.h>

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "broker_util.hpp"
#include "json_util.hpp"

namespace iothubd::hubemu {

class DpsService {
 public:
  struct Options {
    std::string configPath;  ///< JSON: idScope, hubs, retryAfter, assigningPolls, enrollments
    std::string servicePassword;
  };

  // Throws std::runtime_error when the configuration cannot be read.
  explicit DpsService(Options options);

  int onBasicAuth(const mosquitto_evt_basic_auth& event);
  int onAclCheck(const mosquitto_evt_acl_check& event);
  int onMessage(const mosquitto_evt_message& event);
  void onTick() {}
  void onDisconnect(const mosquitto_evt_disconnect& event);

 private:
  enum class Attestation { SymmetricKey, X509 };

  struct Enrollment {
    bool group = false;
    std::string name;  // registration id, or the group's name
    Attestation attestation = Attestation::SymmetricKey;
    std::string key;       // base64: the individual key, or the group key
    std::string hub;       // allocation; empty = the first hub
    std::string deviceId;  // individual only; empty = the registration id
    bool enabled = true;
  };

  struct ClientInfo {
    std::string clientId;
    bool isService = false;
    std::string username;
    std::string idScope;   // as the user name says
    std::string password;  // the SAS token, checked at registration time as DPS does
    bool hasPassword = false;
    std::optional<std::string> certificateCn;  // subject CN of the verified client certificate
  };

  struct Fault {
    int status = 0;
    int64_t retryAfter = -1;  // seconds; -1 = no retry-after on the topic
    int64_t count = 1;        // answers still to fault; -1 = until cleared
    std::string on = "any";   // register | poll | any
    int64_t errorCode = 0;    // 0: status * 1000 + 1
    std::string message;
  };

  struct AllocationFailure {
    int64_t errorCode = 400207;
    std::string message = "Custom allocation failed with status code: 400";
    int64_t count = 1;
  };

  struct Operation {
    std::string registrationId;
    std::string enrollmentKey;  // looked up again at the end: it may be changed or removed
    int64_t pollsLeft = 0;
    std::string attestation;  // "symmetric-key" or "x509", for the records
  };

  struct Registration {
    int64_t registerRequests = 0;
    int64_t polls = 0;
    std::string hub;  // of the last assignment
    std::string deviceId;
    std::string substatus;
    std::string payload;  // the last registration's "payload", compact JSON, or empty
    std::string createdUtc;
    std::string attestation;
    int lastStatus = 0;
  };

  using Request = ControlRequest;
  using Handler = void (DpsService::*)(const Request&, JsonOut&);

  void loadConfig();
  Enrollment parseEnrollment(const rapidjson::Value& value) const;
  static std::string enrollmentKey(const Enrollment& e);
  int refuse(const std::string& clientId, const std::string& reason);

  void handleRegister(const ClientInfo& info, const std::string& rid, std::string_view payload);
  void handlePoll(const ClientInfo& info, const std::string& rid, const std::string& operationId);
  bool answerFault(const ClientInfo& info, const std::string& rid, bool polling);
  // Whose attestation this is: the enrollment it proves, or an error status and message.
  struct Verdict {
    const Enrollment* enrollment = nullptr;
    int status = 0;
    std::string message;
  };
  Verdict attest(const ClientInfo& info) const;
  bool sasTokenValid(const ClientInfo& info, const std::string& base64Key, std::string& why) const;
  std::string assignedJson(const std::string& operationId, const Operation& op);
  void answer(const ClientInfo& info, const std::string& rid, int status, const std::string& body,
              int64_t retryAfter = -1);
  void answerError(const ClientInfo& info, const std::string& rid, int status, int64_t errorCode,
                   const std::string& message, int64_t retryAfter = -1);
  std::string newOperationId();
  std::string trackingId();

  void handleControl(const ClientInfo& info, std::string_view topic, std::string_view payload);
  void cmdStatus(const Request& req, JsonOut& out);
  void cmdEnroll(const Request& req, JsonOut& out);
  void cmdUnenroll(const Request& req, JsonOut& out);
  void cmdAssign(const Request& req, JsonOut& out);
  void cmdFault(const Request& req, JsonOut& out);
  void cmdFailAllocation(const Request& req, JsonOut& out);
  void cmdAssigning(const Request& req, JsonOut& out);
  void cmdRegistrations(const Request& req, JsonOut& out);
  void cmdClearFaults(const Request& req, JsonOut& out);

  Options options_;
  std::string idScope_;
  std::vector<std::string> hubs_;
  int64_t retryAfter_ = 1;
  int64_t assigningPolls_ = 1;
  std::map<std::string, Enrollment> enrollments_;  // by enrollmentKey()
  std::unordered_map<const mosquitto*, ClientInfo> clients_;
  std::map<std::string, std::set<std::string>> subscriptions_;  // per connected client id
  std::map<std::string, Operation> operations_;                 // by operation id
  std::map<std::string, Registration> registrations_;           // by registration id
  std::map<std::string, std::string> allocations_;              // registration id -> hub
  std::map<std::string, std::vector<Fault>> faults_;            // "" = every registration
  std::map<std::string, AllocationFailure> allocationFailures_;
  std::map<std::string, Handler, std::less<>> commands_;
  std::mt19937_64 random_{std::random_device{}()};
};

}  // namespace iothubd::hubemu
