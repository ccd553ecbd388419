// SPDX-License-Identifier: MIT
// Test support: a local IoT Hub emulator (mosquitto 2.0.11 + our plugin) per test, and a service
// client that observes and drives it. See README.md in this directory for the wire protocol.
//
// Threading: HubEmulator is used from the test thread only. ServiceClient runs libmosquitto's own
// network thread; its public methods may be called from any one test thread and block with a
// bounded timeout (condition variables, no sleeps).
// Errors: setup failures and failed control requests throw std::runtime_error (a test that cannot
// set up its hub should fail loudly); waits return std::nullopt / false on timeout.
#pragma once

#include <sys/types.h>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct mosquitto;
struct mosquitto_message;

namespace iothubd::hubemu {

using Properties = std::vector<std::pair<std::string, std::string>>;

// Path of the built plugin: $IOTHUBD_EMULATOR_PLUGIN if set, else the build-tree path compiled
// into this library.
std::string defaultPluginPath();

// Independent SAS helpers for tests (not src/proto): "SharedAccessSignature sr=…&sig=…&se=…" for
// clientId "dev" or "dev/mod", and the matching MQTT username.
std::string makeSasToken(const std::string& hubHost, const std::string& clientId,
                         const std::string& base64Key, int64_t expiryUnixSeconds);
std::string makeUsername(const std::string& hubHost, const std::string& clientId,
                         const std::string& apiVersion = "2021-04-12");
// Their DPS counterparts (dps_emulator.hpp): "SharedAccessSignature sr={enc(scope/registrations/
// id)}&sig=…&se=…&skn=registration" (without skn when `keyName` is empty, as [py] sends it), the
// user name "{scope}/registrations/{id}/api-version=2019-03-31", and the device key of a
// symmetric-key group enrollment, Base64(HMAC-SHA256(Base64-decode(groupKey), registrationId)).
std::string makeDpsSasToken(const std::string& idScope, const std::string& registrationId,
                            const std::string& base64Key, int64_t expiryUnixSeconds,
                            const std::string& keyName = "registration");
std::string makeDpsUsername(const std::string& idScope, const std::string& registrationId);
std::string deriveDeviceKey(const std::string& groupKeyBase64, const std::string& registrationId);
// A fresh random key of `bytes` bytes (device keys 32, DPS group keys 64), base64-encoded.
std::string randomKey(size_t bytes = 32);
// A TCP port on 127.0.0.1 that was free a moment ago (bind it soon; retry if it was taken).
int freeLoopbackPort();
// A fresh directory (mkdtemp under $TMPDIR, mode 0755 so an unprivileged daemon can reach a CA
// inside it); throws on failure.
std::string makeTestDirectory(const char* prefix);
// Percent-decodes a topic property bag "k=v&k2=v2" (RFC 3986, '+' stays '+').
Properties decodePropertyBag(std::string_view bag);

class HubEmulator {
 public:
  struct Options {
    std::string pluginPath = defaultPluginPath();
    std::string hubHost = "localhost";
    // Extra listeners, each on its own free port (all TLS, all with the same plugin):
    // x509Port(): requires a client certificate signed by the hub CA (caFile()), as a hub does
    //   for X.509 devices; SAS clients cannot use it.
    bool x509Listener = false;
    // gatewayPort(): stands in for an IoT Edge gateway: its server certificate comes from a
    //   second CA, gatewayCaFile(), and names 127.0.0.1 and localhost.
    bool gatewayListener = false;
    // websocketsPort(): MQTT over WebSockets over TLS (hub CA). mosquitto binds WebSocket
    //   listeners to every interface: only use it inside a private network namespace.
    bool websocketsListener = false;
    // The broker log has a line per MQTT packet (log_type all); benchmarks turn that off so the
    // broker's own logging does not compete for the CPU with what they measure.
    bool logEveryPacket = true;
    // The addresses the hub's port (port()) listens on. IPv4 only by default, like many real
    // networks' servers: with `::1 localhost` first in /etc/hosts (a stock Debian), a client
    // must fall back to 127.0.0.1 to get in.
    enum class Listen { Ipv4, Ipv6, Both };
    Listen listen = Listen::Ipv4;
    // The IPv4 address of the hub's port. Two emulators on one port (as two real hubs share
    // 8883, which a device with one [hub] port relies on) need two addresses: "127.0.0.2" is in
    // the server certificate too, so it can be a second hub's hubHost.
    std::string ipv4Address = "127.0.0.1";
    // The hub's port; 0 picks a free one. A fixed port is retried as such, never changed.
    int port = 0;
    // Traffic shaping on port(): the plugin's front (plugin/front.hpp, README "Traffic shaping")
    // terminates TLS and relays to the broker, so that ServiceClient::throttle() and a SUBACK
    // delay (HubBehaviour::subackDelay) can hold acknowledgements back per connection without
    // stalling the broker. Off by default (one more hop).
    bool shaping = false;
    // Further `plugin_opt_<key> <value>` lines: {"mode", "dps"} runs the plugin as DPS
    // (DpsEmulator, dps_emulator.hpp, sets them).
    std::vector<std::pair<std::string, std::string>> pluginOptions;
  };

  // Creates the per-test directory (mkdtemp under $TMPDIR) with the PKI; does not start the
  // broker yet, so that devices can be added first.
  HubEmulator();
  explicit HubEmulator(Options options);
  ~HubEmulator();  // stops the broker and removes the directory
  HubEmulator(const HubEmulator&) = delete;
  HubEmulator& operator=(const HubEmulator&) = delete;

  // Registers an identity ("dev" or "dev/mod") for the next start(). The second form generates
  // and returns a key.
  void addDevice(const std::string& id, const std::string& base64Key);
  std::string addDevice(const std::string& id);
  std::string deviceKey(const std::string& id) const;  // throws if unknown

  // Starts mosquitto on a free 127.0.0.1 port and returns once it accepts connections.
  void start();
  // SIGTERM, waitpid (SIGKILL after 5 s). Idempotent.
  void stop();
  // stop() then start() on the same port (twin, ledger and fault state are not kept).
  void restart();
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }  // the broker process (its CPU time, for benchmarks)

  int port() const { return port_; }
  // With Options::shaping: the broker's own plain listener behind the front (127.0.0.1).
  int innerPort() const { return innerPort_; }
  int x509Port() const { return x509Port_; }
  int gatewayPort() const { return gatewayPort_; }
  int websocketsPort() const { return websocketsPort_; }
  std::string caFile() const;
  std::string gatewayCaFile() const;
  // Writes a client certificate with subject CN `commonName`, signed by the hub CA (or, with
  // `selfSigned`, by itself), and its key; the key is encrypted with `passPhrase` if not empty.
  // Files are created with mode 0600 owned by `uid`/`gid` (unless -1).
  void issueClientCertificate(const std::string& commonName, const std::string& certPath,
                              const std::string& keyPath, const std::string& passPhrase = "",
                              bool selfSigned = false, int uid = -1, int gid = -1) const;
  const std::string& hubHost() const { return options_.hubHost; }
  const std::string& dir() const { return dir_; }
  const std::string& servicePassword() const { return servicePassword_; }
  const std::string& pluginPath() const { return options_.pluginPath; }

  // Full broker log (plugin messages are prefixed "hub-emulator:").
  std::string brokerLog() const;
  void printBrokerLog(std::ostream& os) const;
  // For a gtest fixture: `void TearDown() override { hub_.printBrokerLogIf(HasFailure()); }`.
  void printBrokerLogIf(bool failed) const;

 private:
  void writeConfig() const;
  bool launch();  // false if the port was taken

  Options options_;
  std::string dir_;
  std::string servicePassword_;
  std::map<std::string, std::string> devices_;
  int port_ = 0;
  int innerPort_ = 0;
  int x509Port_ = 0;
  int gatewayPort_ = 0;
  int websocketsPort_ = 0;
  pid_t pid_ = -1;
};

// One received telemetry message.
struct Telemetry {
  std::string topic;
  std::string payload;
  std::string device;     // client id: "dev" or "dev/mod"
  Properties properties;  // decoded property bag in wire order, keys like "$.mid"
  std::optional<std::string> property(std::string_view key) const;
};

// A plugin event from $hubemu/evt/{type}; `json` is the raw payload.
struct HubEvent {
  std::string type;
  std::string device;
  std::string json;
};

struct AuthEvent {
  std::string device;
  std::string method;       // "sas" or "x509"
  std::string username;     // the MQTT user name as the device sent it
  int64_t se = 0;           // token expiry the device sent
  int64_t authTimeMs = 0;   // Unix ms
  int64_t expiresAtMs = 0;  // when the emulator will kick (after a lifetime cap)
  bool capped = false;
  bool cleanSession = false;
};

struct MethodResult {
  int status = 0;
  std::string payload;  // the device's response body, raw
};

struct TwinFault {
  std::chrono::milliseconds delay{0};  // delay every twin response (100 ms granularity)
  int status = 0;                      // answer with this status instead (0 = normally)
  int count = -1;                      // ... for the next `count` requests, -1 = until cleared
};

// Hub-wide switches of the emulator (README, "Strictness"); unset members stay as they are.
struct HubBehaviour {
  // Close the connection on a QoS 2 publish or a publish to a topic the hub does not serve, as
  // IoT Hub does (default on). Off: such publishes are only denied by the ACL (still PUBACKed).
  std::optional<bool> strictTopics{};
  // Refuse reported patches beyond the hub's twin limits with 400 (default on).
  std::optional<bool> twinLimits{};
  // Hub-wide CONNECT rate limit; more in one second are closed without CONNACK (0 = none).
  std::optional<int64_t> connectsPerSecond{};
  // The hub's clock minus this machine's: tokens are checked against the hub's clock (expired
  // when `se` lies more than 5 minutes before it), and expiry kicks follow it.
  std::optional<std::chrono::milliseconds> clockOffset{};
  // New subscriptions take effect, and are acknowledged, this long after the SUBSCRIBE: a twin
  // request the hub gets before then is lost, as on a busy hub. Needs Options::shaping.
  std::optional<std::chrono::milliseconds> subackDelay{};
};

struct Ledger {
  int64_t total = 0;
  int64_t withoutId = 0;
  int64_t duplicates = 0;
  std::map<std::string, int64_t> ids;  // $.mid -> times received
};

class ServiceClient {
 public:
  using Ms = std::chrono::milliseconds;
  static constexpr Ms kDefaultTimeout{5000};

  // Connects as the service over TLS and subscribes to telemetry and events; throws on failure.
  explicit ServiceClient(const HubEmulator& hub, Ms timeout = kDefaultTimeout);
  ServiceClient(const std::string& host, int port, const std::string& caFile,
                const std::string& password, Ms timeout = kDefaultTimeout);
  ~ServiceClient();
  ServiceClient(const ServiceClient&) = delete;
  ServiceClient& operator=(const ServiceClient&) = delete;

  // After a hub restart the client reconnects by itself; this waits until it has resubscribed.
  bool waitReady(Ms timeout = kDefaultTimeout);

  // Next not-yet-returned telemetry message that matches `predicate` (all if empty).
  std::optional<Telemetry> waitForTelemetry(std::function<bool(const Telemetry&)> predicate = {},
                                            Ms timeout = kDefaultTimeout);
  std::vector<Telemetry> telemetry() const;  // everything received so far

  // Next not-yet-returned event of `type` for `device` (any device if empty).
  std::optional<HubEvent> waitForEvent(const std::string& type, const std::string& device = "",
                                       Ms timeout = kDefaultTimeout);
  std::vector<HubEvent> events(const std::string& type, const std::string& device = "") const;

  // Successful device authentications (one per CONNECT, so SAS renewals count).
  std::optional<AuthEvent> waitForAuth(const std::string& device, Ms timeout = kDefaultTimeout);
  bool waitForAuthCount(const std::string& device, size_t count, Ms timeout = kDefaultTimeout);
  std::vector<AuthEvent> authEvents(const std::string& device) const;
  size_t authCount(const std::string& device) const;
  std::optional<HubEvent> waitForDisconnect(const std::string& device,
                                            Ms timeout = kDefaultTimeout);
  size_t disconnectCount(const std::string& device) const;

  // Direct method with the hub's responseTimeout `timeout` (the hub's default is 30 s): {404, …}
  // if the device is not connected or not subscribed, {504, …} when it did not answer in time
  // (the hub then drops a late answer: event "method-response-late").
  MethodResult invokeMethod(const std::string& device, const std::string& name,
                            const std::string& payloadJson = "null",
                            Ms timeout = std::chrono::seconds(30));
  // Desired-properties merge patch; returns the new desired $version.
  int64_t patchDesired(const std::string& device, const std::string& patchJson);
  // {"desired":{…,"$version":N},"reported":{…,"$version":M}}
  std::string getTwin(const std::string& device);
  // C2D on devices/{device}/messages/devicebound/{bag}; system properties use their wire keys
  // ("$.mid", "$.cid", "$.ct", "$.ce", "$.uid", "$.exp", "$.to", "iothub-ack") and come first.
  void sendC2d(const std::string& device, const std::string& body,
               const Properties& systemProperties = {}, const Properties& customProperties = {});

  // Faults.
  void delayPuback(const std::string& device, Ms delay, int count = -1);
  void dropConnection(const std::string& device);
  // 0 clears. By default CONNACK "not authorised"; `closeWithoutConnack` closes the connection
  // instead, as an unavailable or throttling hub does.
  void refuseConnects(const std::string& device, int count = -1, bool closeWithoutConnack = false);
  void twinFault(const std::string& device, const TwinFault& fault);
  void capTokenLifetime(const std::string& device, std::chrono::seconds lifetime);  // 0 clears
  // Holds every PUBACK to `device` back by `delay` (0 clears), like a hub shaping a device's
  // traffic, without stalling other clients. Needs Options::shaping.
  void throttle(const std::string& device, Ms delay);
  void clearFaults(const std::string& device = "");
  // Sets the members of `behaviour` that are set; returns the response (every current value).
  std::string setBehaviour(const HubBehaviour& behaviour);

  Ledger ledger(const std::string& device);
  void clearLedger(const std::string& device = "");
  std::vector<std::string> connectedDevices();
  void registerDevice(const std::string& device, const std::string& base64Key);

  // Any control command (README, "Control-topic protocol"): returns the response JSON; throws on
  // timeout and, unless `allowError`, on a status other than 200.
  std::string request(const std::string& command, const std::string& argsJson = "{}",
                      Ms timeout = kDefaultTimeout, bool allowError = false);

 private:
  struct Entry {
    bool taken = false;
  };
  struct TelemetryEntry : Entry {
    Telemetry value;
  };
  struct EventEntry : Entry {
    HubEvent value;
  };
  struct MosqDeleter {
    void operator()(mosquitto* m) const;
  };

  static void onConnect(mosquitto* m, void* self, int rc);
  static void onSubscribe(mosquitto* m, void* self, int mid, int count, const int* granted);
  static void onMessage(mosquitto* m, void* self, const mosquitto_message* msg);
  void handleMessage(const std::string& topic, std::string payload);
  void publish(const std::string& topic, const std::string& payload);
  std::optional<HubEvent> takeEvent(const std::string& type, const std::string& device,
                                    const std::string& rid, Ms timeout);
  static AuthEvent toAuthEvent(const HubEvent& event);

  std::string clientId_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  int connectRc_ = -1;
  int subscribeMid_ = -1;
  bool ready_ = false;
  uint64_t nextRid_ = 1;
  std::vector<TelemetryEntry> telemetry_;
  std::vector<EventEntry> events_;
  std::map<std::string, std::string> responses_;  // rid -> response JSON
  // Last member: destroyed first, so the network thread is joined before the state it uses goes.
  std::unique_ptr<mosquitto, MosqDeleter> mosq_;
};

}  // namespace iothubd::hubemu
