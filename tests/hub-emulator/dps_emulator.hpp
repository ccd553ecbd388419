// SPDX-License-Identifier: MIT
// Test support: a local Device Provisioning Service emulator (mosquitto 2.0.11 + our plugin in
// DPS mode) per test, and DpsControl to script it. See README.md, "DPS emulator".
//
// A DpsEmulator is a HubEmulator broker whose plugin runs plugin/dps_service.cpp: same PKI (so
// device certificates issued by any emulator's issueClientCertificate() are accepted by both),
// same listeners (TLS, optional X.509 and WebSockets), same control protocol.
// Threading and errors: as hub_emulator.hpp.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "hub_emulator.hpp"

namespace iothubd::hubemu {

// deriveDeviceKey(), makeDpsSasToken() and makeDpsUsername() are in hub_emulator.hpp.

// One enrollment of the emulated DPS.
struct DpsEnrollment {
  enum class Kind { Individual, Group };
  enum class Attestation { SymmetricKey, X509 };
  Kind kind = Kind::Individual;
  std::string name;  // the registration id (individual) or the group's name
  Attestation attestation = Attestation::SymmetricKey;
  std::string key;       // Base64: the individual key or the group key (symmetric-key)
  std::string hub;       // allocation: one of Options::hubs; empty = the first
  std::string deviceId;  // individual only; empty = the registration id
  bool enabled = true;
};

class DpsEmulator {
 public:
  struct Options {
    std::string pluginPath = defaultPluginPath();
    std::string idScope = "0ne0000E1E1";
    // Host names of the hubs DPS allocates to (the hub emulators' hubHost(): "localhost" and
    // "127.0.0.1" name two emulators on one machine, both in the emulators' certificate).
    std::vector<std::string> hubs = {"localhost"};
    int retryAfterSeconds = 1;  // sent with every 202
    int assigningPolls = 1;     // polls answered 202 before the assignment
    bool x509Listener = false;  // x509Port(): client certificate required (X.509 attestation)
    bool websocketsListener = false;
    bool logEveryPacket = true;
  };

  DpsEmulator();
  explicit DpsEmulator(Options options);
  ~DpsEmulator();  // stops the broker, removes its directories
  DpsEmulator(const DpsEmulator&) = delete;
  DpsEmulator& operator=(const DpsEmulator&) = delete;

  // Before start(); at run time use DpsControl::enroll().
  void addEnrollment(const DpsEnrollment& enrollment);
  // A symmetric-key individual enrollment with a fresh key, which it returns.
  std::string addIndividualEnrollment(const std::string& registrationId,
                                      const std::string& hub = "");
  // A symmetric-key group enrollment with a fresh group key, which it returns.
  std::string addGroupEnrollment(const std::string& name, const std::string& hub = "");

  void start();  // free port(s), returns once the broker accepts connections; throws with the log
  void stop();
  void restart();  // same port; enrollments from the start, run-time state (faults, moves) gone
  bool running() const { return broker_.running(); }

  int port() const { return broker_.port(); }
  int x509Port() const { return broker_.x509Port(); }
  int websocketsPort() const { return broker_.websocketsPort(); }
  std::string caFile() const { return broker_.caFile(); }
  const std::string& host() const { return broker_.hubHost(); }  // "localhost"
  const std::string& idScope() const { return options_.idScope; }
  const std::vector<std::string>& hubs() const { return options_.hubs; }
  const std::string& servicePassword() const { return broker_.servicePassword(); }
  const std::string& dir() const { return broker_.dir(); }
  void issueClientCertificate(const std::string& commonName, const std::string& certPath,
                              const std::string& keyPath) const {
    broker_.issueClientCertificate(commonName, certPath, keyPath);
  }
  std::string brokerLog() const { return broker_.brokerLog(); }
  void printBrokerLogIf(bool failed) const { broker_.printBrokerLogIf(failed); }

 private:
  void writeConfig() const;

  Options options_;
  std::string configDir_;  // dps.json (enrollment keys, 0600); the broker reads it at start
  HubEmulator broker_;
  std::vector<DpsEnrollment> enrollments_;
};

// A scripted failure (dps-fault).
struct DpsFault {
  std::string registrationId;  // empty = every registration
  int status = 0;              // 401, 404, 429, 500, ...
  int retryAfterSeconds = -1;  // -1 = no retry-after on the answer
  int count = 1;               // answers to fault; -1 = until cleared
  std::string on = "any";      // "register", "poll" or "any"
};

// What the emulated DPS saw of one registration id.
struct DpsRegistration {
  int64_t registerRequests = 0;
  int64_t polls = 0;
  int lastStatus = 0;
  std::string hub;  // of the last assignment
  std::string deviceId;
  std::string substatus;
  std::string payload;  // the last register request's "payload", compact JSON
  std::string attestation;
};

// The service side of a DpsEmulator: scripts it and waits for what devices do (events
// dps-register, dps-response, dps-assigned, auth, auth-refused, disconnect).
class DpsControl {
 public:
  using Ms = ServiceClient::Ms;
  explicit DpsControl(const DpsEmulator& dps, Ms timeout = ServiceClient::kDefaultTimeout);

  void enroll(const DpsEnrollment& enrollment);
  void unenroll(DpsEnrollment::Kind kind, const std::string& name);
  // The device is moved: its next registration is assigned to `hub`.
  void assign(const std::string& registrationId, const std::string& hub);
  void fault(const DpsFault& fault);
  // The next registration of `registrationId` ends in status "failed" with this error.
  void failAllocation(
      const std::string& registrationId, int errorCode = 400207,
      const std::string& message = "Custom allocation failed with status code: 400");
  void setAssigning(int polls, int retryAfterSeconds);
  void clearFaults();
  std::optional<DpsRegistration> registration(const std::string& registrationId);

  ServiceClient& service() { return service_; }

 private:
  ServiceClient service_;
};

}  // namespace iothubd::hubemu
