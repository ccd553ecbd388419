// SPDX-License-Identifier: MIT
#include "emulator.hpp"

#include <mosquitto.h>
#include <mosquitto_plugin.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "sas.hpp"
#include "twin_limits.hpp"

namespace iothubd::hubemu {
namespace {

// Upper bound for a PUBACK delay: the delay blocks the whole broker (see README), so a typo must
// not freeze it for minutes.
constexpr int64_t kMaxPubackDelayMs = 10'000;
// An X.509 identity has no token to expire: its "expiry" lies beyond any test (year 33658).
constexpr int64_t kNoExpirySeconds = 1'000'000'000'000;
// The hub accepts a token until 5 minutes after its `se` (the service's SharedAccessSignature
// IsExpired(): ExpiresOn + MaxClockSkew < now, MaxClockSkew = 5 min): a device whose clock is
// further behind than its token lifetime plus these 5 minutes is refused.
constexpr int64_t kTokenClockSkewSeconds = 300;
// Direct method request and response payloads (IoT Hub direct methods doc).
constexpr size_t kMaxMethodPayloadBytes = 128 * 1024;
// The service's default responseTimeoutInSeconds for a direct method.
constexpr int64_t kDefaultMethodTimeoutMs = 30'000;

int64_t nowMs() {
  // Wall clock on purpose: token expiry (se) is absolute Unix time.
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// For delays and rates, which must not follow clock changes.
int64_t steadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

template <typename... Args>
void logf(int level, const char* fmt, Args... args) {
  mosquitto_log_printf(level, fmt, args...);
}

bool startsWith(std::string_view s, std::string_view prefix) {
  return s.starts_with(prefix);
}

}  // namespace

Emulator::Emulator(Options options) : options_(std::move(options)) {
  loadRegistry();
  if (options_.frontPort != 0) {
    front_ = std::make_unique<Front>(
        Front::Options{options_.frontListen, options_.frontPort, options_.frontBackendPort,
                       options_.frontCert, options_.frontKey},
        shaping_);
  }
  commands_ = {
      {"status", &Emulator::cmdStatus},
      {"behaviour", &Emulator::cmdBehaviour},
      {"throttle", &Emulator::cmdThrottle},
      {"register-device", &Emulator::cmdRegisterDevice},
      {"clear-faults", &Emulator::cmdClearFaults},
      {"delay-puback", &Emulator::cmdDelayPuback},
      {"drop", &Emulator::cmdDrop},
      {"refuse-connects", &Emulator::cmdRefuseConnects},
      {"cap-token-lifetime", &Emulator::cmdCapTokenLifetime},
      {"twin-fault", &Emulator::cmdTwinFault},
      {"twin-get", &Emulator::cmdTwinGet},
      {"twin-patch-desired", &Emulator::cmdTwinPatchDesired},
      {"invoke-method", &Emulator::cmdInvokeMethod},
      {"c2d", &Emulator::cmdC2d},
      {"ledger", &Emulator::cmdLedger},
      {"ledger-clear", &Emulator::cmdLedgerClear},
  };
}

Emulator::~Emulator() = default;

int64_t Emulator::hubNowMs() const {
  return nowMs() + behaviour_.clockOffsetMs;
}

void Emulator::loadRegistry() {
  if (options_.registryPath.empty())
    return;
  std::ifstream in(options_.registryPath);
  if (!in)
    throw std::runtime_error("cannot read registry " + options_.registryPath);
  std::string line;
  int lineNo = 0;
  while (std::getline(in, line)) {
    ++lineNo;
    std::istringstream fields(line);
    std::string id;
    std::string key;
    if (!(fields >> id) || id.starts_with('#'))
      continue;
    if (!(fields >> key) || !base64Decode(key)) {
      logf(MOSQ_LOG_WARNING, "hub-emulator: registry line %d: missing or non-base64 key for '%s'",
           lineNo, id.c_str());
      continue;
    }
    registry_[id] = key;
  }
  logf(MOSQ_LOG_NOTICE, "hub-emulator: %zu identities loaded from %s", registry_.size(),
       options_.registryPath.c_str());
}

// ---------------------------------------------------------------------------------------------
// Authentication and ACL

int Emulator::refuse(const std::string& clientId, const std::string& reason) {
  logf(MOSQ_LOG_NOTICE, "hub-emulator: refusing '%s': %s", clientId.c_str(), reason.c_str());
  emitEvent("auth-refused", JsonOut().str("device", clientId).str("reason", reason).finish());
  return MOSQ_ERR_AUTH;
}

int Emulator::onBasicAuth(const mosquitto_evt_basic_auth& event) {
  const char* rawId = mosquitto_client_id(event.client);
  const std::string clientId = rawId ? rawId : "";
  const std::string username = event.username ? event.username : "";
  const std::string password = event.password ? event.password : "";

  if (username == kServiceUser) {
    if (options_.servicePassword.empty() || password != options_.servicePassword) {
      return refuse(clientId, "wrong service password");
    }
    ClientInfo info;
    info.clientId = clientId;
    info.isService = true;
    clients_[event.client] = std::move(info);
    logf(MOSQ_LOG_INFO, "hub-emulator: service client '%s' connected", clientId.c_str());
    return MOSQ_ERR_SUCCESS;
  }

  // IoT Hub MQTT doc: username = {hubHost}/{clientId}/?api-version=… with the client id unencoded.
  const std::string prefix = options_.hubHost + "/" + clientId + "/?";
  if (clientId.empty() || !username.starts_with(prefix)) {
    return refuse(clientId, "username '" + username + "' is not " + prefix + "api-version=…");
  }
  bool hasApiVersion = false;
  for (auto& [k, v] : parseQuery(std::string_view(username).substr(prefix.size()))) {
    hasApiVersion = hasApiVersion || (k == "api-version" && !v.empty());
  }
  if (!hasApiVersion)
    return refuse(clientId, "username lacks api-version");

  Identity identity;
  const size_t slash = clientId.find('/');
  identity.device = clientId.substr(0, slash);
  if (slash != std::string::npos)
    identity.module = clientId.substr(slash + 1);
  if (identity.device.empty() || (slash != std::string::npos && identity.module.empty()) ||
      identity.module.find('/') != std::string::npos) {
    return refuse(clientId, "client id is neither {device} nor {device}/{module}");
  }

  Faults& faults = faults_[clientId];
  if (faults.refuseConnects != 0) {
    if (faults.refuseConnects > 0)
      --faults.refuseConnects;
    const int rc = refuse(clientId, "fault injection: refuse-connects");
    // Any error other than MOSQ_ERR_AUTH makes mosquitto 2.0.11 close the connection without a
    // CONNACK (handle_connect.c), which is how an unavailable or throttling hub looks.
    return faults.refuseByClosing ? MOSQ_ERR_UNKNOWN : rc;
  }

  if (connectThrottled(clientId)) {
    // Like refuseByClosing above: a throttled hub closes the connection without a CONNACK.
    return MOSQ_ERR_UNKNOWN;
  }

  const auto key = registry_.find(clientId);
  if (key == registry_.end())
    return refuse(clientId, "unknown identity");
  const int64_t now = hubNowMs();
  int64_t expiry = kNoExpirySeconds;
  std::string method = "sas";
  if (event.password == nullptr) {
    // IoT Hub MQTT doc: an X.509 device sends no password; the hub accepts the TLS client
    // certificate when it chains to a verified CA (the broker checked that) and its subject CN
    // is the device id.
    const auto cn = certificateCommonName(event.client);
    if (!cn)
      return refuse(clientId, "no password and no client certificate");
    if (*cn != clientId)
      return refuse(clientId, "client certificate is for '" + *cn + "', not '" + clientId + "'");
    method = "x509";
  } else {
    std::string resource = options_.hubHost + "/devices/" + identity.device;
    if (!identity.module.empty())
      resource += "/modules/" + identity.module;
    const SasCheck check =
        verifySasToken(password, resource, key->second, now / 1000 - kTokenClockSkewSeconds);
    if (!check.ok) {
      std::string reason = check.reason;
      if (reason.starts_with("token expired"))
        reason +=
            " (hub clock " + std::to_string(now / 1000) + ", 5 minutes of clock skew allowed)";
      return refuse(clientId, reason);
    }
    expiry = check.expiry;
  }

  ClientInfo info;
  info.clientId = clientId;
  info.identity = identity;
  info.se = expiry;
  info.authMs = now;
  info.expiresAtMs = effectiveExpiryMs(clientId, expiry, now);
  const bool cleanSession = mosquitto_client_clean_session(event.client);
  info.cleanSession = cleanSession;
  closeOlderConnections(clientId, event.client);
  clients_[event.client] = info;
  persistentSession_[clientId] = !cleanSession;
  // A clean session starts without subscriptions; a resumed one keeps them in the broker.
  if (cleanSession)
    subscriptions_.erase(clientId);

  logf(MOSQ_LOG_NOTICE, "hub-emulator: '%s' authenticated, se=%lld, kick at %lld ms",
       clientId.c_str(), static_cast<long long>(info.se), static_cast<long long>(info.expiresAtMs));
  emitEvent("auth", JsonOut()
                        .str("device", clientId)
                        .str("method", method)
                        .str("username", username)
                        .num("se", method == "x509" ? 0 : info.se)
                        .num("authTimeMs", info.authMs)
                        .num("expiresAtMs", info.expiresAtMs)
                        .boolean("capped", info.expiresAtMs < info.se * 1000)
                        .boolean("cleanSession", cleanSession)
                        .finish());

  // A resumed session may already hold the devicebound subscription. Published now, held C2D is
  // delivered at the start of the next loop pass, i.e. after the CONNACK of this connection.
  flushHeldC2d(clientId);
  return MOSQ_ERR_SUCCESS;
}

int64_t Emulator::effectiveExpiryMs(const std::string& clientId, int64_t se, int64_t authMs) const {
  int64_t cap = globalTokenCapSeconds_;
  if (auto f = faults_.find(clientId); f != faults_.end() && f->second.tokenCapSeconds > 0) {
    cap = f->second.tokenCapSeconds;
  }
  const int64_t expiry = se * 1000;
  return cap > 0 ? std::min(expiry, authMs + cap * 1000) : expiry;
}

bool Emulator::connectThrottled(const std::string& clientId) {
  if (behaviour_.connectsPerSecond <= 0)
    return false;
  const int64_t now = steadyMs();
  while (!recentConnects_.empty() && recentConnects_.front() <= now - 1000)
    recentConnects_.pop_front();
  if (static_cast<int64_t>(recentConnects_.size()) < behaviour_.connectsPerSecond) {
    recentConnects_.push_back(now);
    return false;
  }
  logf(MOSQ_LOG_NOTICE, "hub-emulator: throttling the CONNECT of '%s' (%lld per second)",
       clientId.c_str(), static_cast<long long>(behaviour_.connectsPerSecond));
  emitEvent("connect-throttled", JsonOut()
                                     .str("device", clientId)
                                     .num("connectsPerSecond", behaviour_.connectsPerSecond)
                                     .finish());
  return true;
}

void Emulator::closeOlderConnections(const std::string& clientId, const mosquitto* newer) {
  // One live connection per identity: the hub closes the older one (400027
  // ConnectionForcefullyClosedOnNewConnection). mosquitto does the closing itself when the new
  // connection is accepted (session takeover); this names the reason in the events.
  for (auto& [client, info] : clients_) {
    if (client != newer && !info.isService && info.clientId == clientId &&
        info.kickReason.empty()) {
      info.kickReason = "duplicate identity (400027 ConnectionForcefullyClosedOnNewConnection)";
      logf(MOSQ_LOG_NOTICE, "hub-emulator: a new connection of '%s' replaces the older one",
           clientId.c_str());
      emitEvent("kick", JsonOut().str("device", clientId).str("reason", info.kickReason).finish());
    }
  }
}

void Emulator::applyTokenCaps() {
  for (auto& [client, info] : clients_) {
    if (!info.isService)
      info.expiresAtMs = effectiveExpiryMs(info.clientId, info.se, info.authMs);
  }
}

int Emulator::onAclCheck(const mosquitto_evt_acl_check& event) {
  const auto it = clients_.find(event.client);
  if (it == clients_.end())
    return MOSQ_ERR_ACL_DENIED;
  if (it->second.isService)
    return MOSQ_ERR_SUCCESS;
  const std::string_view topic = event.topic ? event.topic : "";
  if (event.access == MOSQ_ACL_WRITE && behaviour_.strictTopics &&
      (event.qos > 1 || !hubServesPublish(it->second, topic))) {
    // IoT Hub closes the connection on a QoS 2 publish and on a publish to a topic it does not
    // serve (IoT Hub MQTT support doc). An ACL result other than success or denial makes
    // mosquitto 2.0.11 drop the client (handle_publish.c).
    ClientInfo& info = it->second;
    const std::string reason =
        event.qos > 1 ? "QoS 2 publish to '" + std::string(topic) + "'"
                      : "publish to a topic the hub does not serve: '" + std::string(topic) + "'";
    if (info.kickReason.empty())
      info.kickReason = reason;
    logf(MOSQ_LOG_NOTICE, "hub-emulator: closing '%s': %s", info.clientId.c_str(), reason.c_str());
    emitEvent("protocol-violation",
              JsonOut().str("device", info.clientId).str("reason", reason).finish());
    return MOSQ_ERR_UNKNOWN;
  }
  if (topicAllowed(it->second, topic, event.access)) {
    recordSubscription(it->second.clientId, std::string(topic), event.access);
    return MOSQ_ERR_SUCCESS;
  }
  logf(MOSQ_LOG_NOTICE, "hub-emulator: ACL denies '%s' access %d to '%s'",
       it->second.clientId.c_str(), event.access, event.topic);
  return MOSQ_ERR_ACL_DENIED;
}

bool Emulator::topicAllowed(const ClientInfo& info, std::string_view topic, int access) const {
  if (access == MOSQ_ACL_UNSUBSCRIBE)
    return true;
  const Identity& id = info.identity;
  const std::string own = id.module.empty()
                              ? "devices/" + id.device + "/"
                              : "devices/" + id.device + "/modules/" + id.module + "/";
  if (startsWith(topic, own)) {
    // A device identity must not reach into its modules' topics.
    return !(id.module.empty() && startsWith(topic.substr(own.size()), "modules/"));
  }
  if (startsWith(topic, "$iothub/")) {
    const std::string_view rest = topic.substr(8);
    switch (access) {
      case MOSQ_ACL_SUBSCRIBE:
        return true;
      case MOSQ_ACL_WRITE:
        // Only the device-to-cloud directions. Cloud-to-device topics (twin/res, desired
        // PATCH, methods/POST) are shared broker topics here, so a device writing them could
        // reach other devices' subscriptions, which the per-connection hub namespace forbids.
        return startsWith(rest, "twin/GET/") ||
               startsWith(rest, "twin/PATCH/properties/reported/") ||
               startsWith(rest, "methods/res/");
      default:
        // READ is only checked for subscription routing. Everything a device legitimately gets
        // on $iothub is addressed to it by the plugin (mosquitto_broker_publish to a client id
        // skips this check), so routed $iothub messages would come from other devices.
        return false;
    }
  }
  return false;
}

bool Emulator::hubServesPublish(const ClientInfo& info, std::string_view topic) const {
  const Identity& id = info.identity;
  const std::string events =
      id.module.empty() ? "devices/" + id.device + "/messages/events"
                        : "devices/" + id.device + "/modules/" + id.module + "/messages/events";
  if (topic == events || startsWith(topic, events + "/"))
    return true;
  return startsWith(topic, "$iothub/twin/GET/") ||
         startsWith(topic, "$iothub/twin/PATCH/properties/reported/") ||
         startsWith(topic, "$iothub/methods/res/");
}

void Emulator::recordSubscription(const std::string& clientId, const std::string& filter,
                                  int access) {
  if (access == MOSQ_ACL_SUBSCRIBE) {
    // A filter the identity already has stays in effect (a resubscription after a reconnect of
    // a persistent session); a new one takes effect when its (possibly delayed) SUBACK goes out.
    subscriptions_[clientId].try_emplace(filter, steadyMs() + shaping_.subackDelayMs());
    // The SUBACK goes out before our publish is processed (next loop pass), so held C2D arrives
    // after the subscription exists, as on the hub.
    flushHeldC2d(clientId);
  } else if (access == MOSQ_ACL_UNSUBSCRIBE) {
    if (auto it = subscriptions_.find(clientId); it != subscriptions_.end())
      it->second.erase(filter);
  }
}

bool Emulator::subscribed(const std::string& clientId, const std::string& topic) const {
  const auto it = subscriptions_.find(clientId);
  if (it == subscriptions_.end())
    return false;
  const int64_t now = steadyMs();
  return std::any_of(it->second.begin(), it->second.end(), [&](const auto& entry) {
    const auto& [filter, activeAtMs] = entry;
    bool match = false;
    return activeAtMs <= now &&
           mosquitto_topic_matches_sub(filter.c_str(), topic.c_str(), &match) == MOSQ_ERR_SUCCESS &&
           match;
  });
}

void Emulator::flushHeldC2d(const std::string& clientId) {
  auto held = heldC2d_.find(clientId);
  if (held == heldC2d_.end() || !connected(clientId))
    return;
  std::vector<Outgoing> keep;
  for (Outgoing& msg : held->second) {
    if (subscribed(clientId, msg.topic)) {
      publishTo(clientId, msg.topic, msg.payload, msg.qos);
    } else {
      keep.push_back(std::move(msg));
    }
  }
  if (keep.empty()) {
    heldC2d_.erase(held);
  } else {
    held->second = std::move(keep);
  }
}

bool Emulator::connected(const std::string& clientId) const {
  return std::any_of(clients_.begin(), clients_.end(), [&](const auto& entry) {
    return !entry.second.isService && entry.second.clientId == clientId;
  });
}

// ---------------------------------------------------------------------------------------------
// Messages

int Emulator::onMessage(const mosquitto_evt_message& event) {
  const auto it = clients_.find(event.client);
  if (it == clients_.end() || !event.topic)
    return MOSQ_ERR_SUCCESS;
  const ClientInfo& info = it->second;
  const std::string_view topic = event.topic;
  const std::string_view payload(static_cast<const char*>(event.payload), event.payloadlen);

  if (info.isService) {
    if (startsWith(topic, kRequestPrefix))
      handleControl(info, topic, payload);
    return MOSQ_ERR_SUCCESS;
  }

  const Identity& id = info.identity;
  const std::string telemetry =
      id.module.empty() ? "devices/" + id.device + "/messages/events"
                        : "devices/" + id.device + "/modules/" + id.module + "/messages/events";
  if (startsWith(topic, telemetry) &&
      (topic.size() == telemetry.size() || topic[telemetry.size()] == '/')) {
    const std::string_view bag =
        topic.size() > telemetry.size() ? topic.substr(telemetry.size() + 1) : std::string_view{};
    handleTelemetry(info, bag, event.qos);
  } else if (startsWith(topic, "$iothub/twin/")) {
    handleTwinRequest(info, topic, payload);
  } else if (startsWith(topic, "$iothub/methods/res/")) {
    handleMethodResponse(info, topic, payload);
  }
  return MOSQ_ERR_SUCCESS;
}

void Emulator::handleTelemetry(const ClientInfo& info, std::string_view bag, int qos) {
  LedgerEntry& entry = ledger_[info.clientId];
  ++entry.total;
  std::string mid;
  for (auto& [k, v] : parseQuery(bag)) {
    if (k == "$.mid")
      mid = v;
  }
  if (mid.empty()) {
    ++entry.withoutId;
  } else {
    ++entry.ids[mid];
  }

  Faults& faults = faults_[info.clientId];
  if (qos > 0 && faults.pubackDelayMs > 0 && faults.pubackDelayCount != 0) {
    if (faults.pubackDelayCount > 0)
      --faults.pubackDelayCount;
    const int64_t ms = std::min(faults.pubackDelayMs, kMaxPubackDelayMs);
    logf(MOSQ_LOG_NOTICE,
         "hub-emulator: delaying PUBACK to '%s' (mid '%s') by %lld ms; the broker is blocked "
         "meanwhile",
         info.clientId.c_str(), mid.c_str(), static_cast<long long>(ms));
    // mosquitto 2.0.11 queues the PUBACK right after this callback returns and offers plugins no
    // way to withhold or send it later (event qos is not written back; ACL denial still acks
    // MQTT 3.1.1; other errors disconnect). Blocking here is the only public-API way.
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  }
}

void Emulator::handleTwinRequest(const ClientInfo& info, std::string_view topic,
                                 std::string_view payload) {
  const bool isGet = startsWith(topic, "$iothub/twin/GET/");
  const bool isPatch = startsWith(topic, "$iothub/twin/PATCH/properties/reported/");
  if (!isGet && !isPatch) {
    logf(MOSQ_LOG_WARNING, "hub-emulator: '%s' published to unknown twin topic '%.*s'",
         info.clientId.c_str(), static_cast<int>(topic.size()), topic.data());
    return;
  }
  const std::string rid = queryValue(topic, "$rid");
  Faults& faults = faults_[info.clientId];
  Outgoing reply;
  reply.clientId = info.clientId;
  reply.dueMs = steadyMs() + faults.twinDelayMs;

  if (faults.twinStatus != 0 && faults.twinStatusCount != 0) {
    if (faults.twinStatusCount > 0)
      --faults.twinStatusCount;
    reply.topic = "$iothub/twin/res/" + std::to_string(faults.twinStatus) + "/?$rid=" + rid;
    reply.payload = JsonOut()
                        .num("errorCode", faults.twinStatus * 1000 + 1)
                        .str("message", "emulated fault")
                        .finish();
    logf(MOSQ_LOG_NOTICE, "hub-emulator: twin fault %lld for '%s' rid '%s'",
         static_cast<long long>(faults.twinStatus), info.clientId.c_str(), rid.c_str());
  } else if (isGet) {
    reply.topic = "$iothub/twin/res/200/?$rid=" + rid;
    reply.payload = twinJson(twins_[info.clientId]);
  } else {
    auto patch = parseObject(payload);
    const auto violation =
        patch && behaviour_.twinLimits ? twinLimitViolation(info.clientId, *patch) : std::nullopt;
    if (!patch || violation) {
      reply.topic = "$iothub/twin/res/400/?$rid=" + rid;
      reply.payload =
          JsonOut()
              .num("errorCode", 400004)
              .str("message", violation.value_or("reported patch must be a JSON object"))
              .finish();
      if (violation) {
        logf(MOSQ_LOG_NOTICE, "hub-emulator: refusing a reported patch of '%s': %s",
             info.clientId.c_str(), violation->c_str());
      }
    } else {
      Twin& twin = twins_[info.clientId];
      mergePatch(twin.reported, *patch, twin.reported.GetAllocator());
      ++twin.reportedVersion;
      reply.topic =
          "$iothub/twin/res/204/?$rid=" + rid + "&$version=" + std::to_string(twin.reportedVersion);
      emitEvent("twin-reported", JsonOut()
                                     .str("device", info.clientId)
                                     .num("version", twin.reportedVersion)
                                     .value("patch", *patch)
                                     .finish());
    }
  }

  if (faults.twinDelayMs > 0) {
    delayed_.push_back(std::move(reply));
  } else {
    sendTwinResponse(reply);
  }
}

std::optional<std::string> Emulator::twinLimitViolation(const std::string& clientId,
                                                        const rapidjson::Value& patch) {
  if (auto bad = twinFormatViolation(patch))
    return "reported properties: " + *bad;
  // The hub refuses an update that would take the section over its size limit.
  rapidjson::Document merged;
  merged.CopyFrom(twins_[clientId].reported, merged.GetAllocator());
  mergePatch(merged, patch, merged.GetAllocator());
  if (const int64_t size = twinSize(merged); size > kTwinSectionMaxBytes) {
    return "reported properties would be " + std::to_string(size) +
           " bytes, over the hub's limit of 32 KB";
  }
  return std::nullopt;
}

void Emulator::sendTwinResponse(const Outgoing& reply) {
  if (!subscribed(reply.clientId, reply.topic)) {
    logf(MOSQ_LOG_WARNING,
         "hub-emulator: dropping twin response '%s' to '%s': not subscribed to $iothub/twin/res/#",
         reply.topic.c_str(), reply.clientId.c_str());
    return;
  }
  publishTo(reply.clientId, reply.topic, reply.payload, reply.qos);
}

void Emulator::handleMethodResponse(const ClientInfo& info, std::string_view topic,
                                    std::string_view payload) {
  // $iothub/methods/res/{status}/?$rid={rid}
  const std::string_view rest = topic.substr(std::string_view("$iothub/methods/res/").size());
  const std::string status(rest.substr(0, rest.find('/')));
  const bool numeric = !status.empty() && std::all_of(status.begin(), status.end(), ::isdigit);
  const std::string rid = queryValue(topic, "$rid");
  if (!numeric || rid.empty()) {
    logf(MOSQ_LOG_WARNING, "hub-emulator: malformed method response topic '%.*s' from '%s'",
         static_cast<int>(topic.size()), topic.data(), info.clientId.c_str());
    return;
  }
  // A method response carries valid JSON (or nothing) of at most 128 KB (direct methods doc); the
  // hub refuses anything else, and the invocation then ends with its timeout.
  std::string invalid;
  if (payload.size() > kMaxMethodPayloadBytes) {
    invalid = "payload of " + std::to_string(payload.size()) + " bytes, over 128 KB";
  } else if (!payload.empty()) {
    rapidjson::Document doc;
    doc.Parse(payload.data(), payload.size());
    if (doc.HasParseError())
      invalid = "payload is not JSON";
  }
  if (!invalid.empty()) {
    logf(MOSQ_LOG_NOTICE, "hub-emulator: refusing a method response of '%s' for rid '%s': %s",
         info.clientId.c_str(), rid.c_str(), invalid.c_str());
    emitEvent(
        "method-response-refused",
        JsonOut().str("device", info.clientId).str("rid", rid).str("reason", invalid).finish());
    return;
  }
  const auto pending = pendingMethods_.find(rid);
  if (pending == pendingMethods_.end() || pending->second.device != info.clientId) {
    // The hub already answered the service (504 after its timeout) or never asked: the device's
    // answer goes nowhere.
    logf(MOSQ_LOG_NOTICE,
         "hub-emulator: dropping a method response of '%s' for rid '%s': no "
         "invocation waits for it",
         info.clientId.c_str(), rid.c_str());
    emitEvent("method-response-late", JsonOut()
                                          .str("device", info.clientId)
                                          .str("rid", rid)
                                          .num("status", std::stoll(status))
                                          .finish());
    return;
  }
  pendingMethods_.erase(pending);
  emitEvent("method-response", JsonOut()
                                   .str("device", info.clientId)
                                   .str("rid", rid)
                                   .num("status", std::stoll(status))
                                   .str("payload", payload)
                                   .finish());
}

// ---------------------------------------------------------------------------------------------
// Control topics: $hubemu/req/{command}/{rid}, JSON object payload, answered on
// $hubemu/res/{command}/{rid} to the requesting client only.

void Emulator::handleControl(const ClientInfo& info, std::string_view topic,
                             std::string_view payload) {
  serveControlRequest(topic, payload, info.clientId, [this](const Request& req, JsonOut& out) {
    const auto handler = commands_.find(req.command);
    if (handler == commands_.end())
      throw CommandError(404, "unknown command");
    (this->*(handler->second))(req, out);
  });
}

std::string Emulator::requireDevice(const Request& req) const {
  std::string device = requireString(req.args, "device");
  if (!registry_.contains(device))
    throw CommandError(404, "unknown device '" + device + "'");
  return device;
}

void Emulator::cmdStatus(const Request&, JsonOut& out) {
  rapidjson::Document doc(rapidjson::kObjectType);
  auto& alloc = doc.GetAllocator();
  rapidjson::Value connectedIds(rapidjson::kArrayType);
  for (const auto& [client, info] : clients_) {
    if (!info.isService)
      connectedIds.PushBack(rapidjson::Value(info.clientId.c_str(), alloc), alloc);
  }
  rapidjson::Value registered(rapidjson::kArrayType);
  for (const auto& [id, key] : registry_) {
    registered.PushBack(rapidjson::Value(id.c_str(), alloc), alloc);
  }
  out.value("connected", connectedIds).value("registered", registered);
}

void Emulator::cmdBehaviour(const Request& req, JsonOut& out) {
  const rapidjson::Value& args = req.args;
  auto flag = [&](const char* name, bool& target) {
    if (const auto it = args.FindMember(name); it != args.MemberEnd()) {
      if (!it->value.IsBool())
        throw CommandError(400, std::string("'") + name + "' must be true or false");
      target = it->value.GetBool();
    }
  };
  Behaviour next = behaviour_;
  flag("strictTopics", next.strictTopics);
  flag("twinLimits", next.twinLimits);
  next.connectsPerSecond =
      std::max<int64_t>(0, intOr(args, "connectsPerSecond", next.connectsPerSecond));
  next.clockOffsetMs = intOr(args, "clockOffsetMs", next.clockOffsetMs);
  if (args.HasMember("subackDelayMs")) {
    const int64_t ms = std::clamp<int64_t>(intOr(args, "subackDelayMs", 0), 0, 600'000);
    if (ms > 0 && !front_)
      throw CommandError(400, "a SUBACK delay needs the front (HubEmulator::Options::shaping)");
    shaping_.setSubackDelayMs(ms);
  }
  if (next.clockOffsetMs != behaviour_.clockOffsetMs) {
    logf(MOSQ_LOG_NOTICE, "hub-emulator: the hub's clock is now %lld ms off this machine's",
         static_cast<long long>(next.clockOffsetMs));
  }
  behaviour_ = next;
  out.boolean("strictTopics", behaviour_.strictTopics)
      .boolean("twinLimits", behaviour_.twinLimits)
      .num("connectsPerSecond", behaviour_.connectsPerSecond)
      .num("clockOffsetMs", behaviour_.clockOffsetMs)
      .num("hubTimeMs", hubNowMs())
      .num("subackDelayMs", shaping_.subackDelayMs())
      .boolean("shaping", front_ != nullptr);
}

void Emulator::cmdThrottle(const Request& req, JsonOut&) {
  const std::string device = requireDevice(req);
  const int64_t ms = std::clamp<int64_t>(intOr(req.args, "pubackDelayMs", 0), 0, 600'000);
  if (ms > 0 && !front_)
    throw CommandError(400, "a throttle needs the front (HubEmulator::Options::shaping)");
  shaping_.setPubackDelayMs(device, ms);
}

void Emulator::cmdRegisterDevice(const Request& req, JsonOut&) {
  const std::string device = requireString(req.args, "device");
  const std::string key = requireString(req.args, "key");
  if (!base64Decode(key))
    throw CommandError(400, "key is not base64");
  registry_[device] = key;
}

void Emulator::cmdClearFaults(const Request& req, JsonOut&) {
  if (auto device = optionalString(req.args, "device")) {
    faults_.erase(*device);
    shaping_.setPubackDelayMs(*device, 0);
  } else {
    faults_.clear();
    globalTokenCapSeconds_ = 0;
    shaping_.clearPubackDelays();
  }
  applyTokenCaps();
}

void Emulator::cmdDelayPuback(const Request& req, JsonOut&) {
  Faults& f = faults_[requireDevice(req)];
  f.pubackDelayMs = std::clamp<int64_t>(intOr(req.args, "ms", 0), 0, kMaxPubackDelayMs);
  f.pubackDelayCount = intOr(req.args, "count", -1);
}

void Emulator::cmdDrop(const Request& req, JsonOut& out) {
  const std::string device = requireDevice(req);
  const bool isConnected = connected(device);
  // Kicked from the next TICK rather than from inside this MESSAGE callback, so the broker never
  // re-enters our DISCONNECT handler while we are handling another client's packet.
  if (isConnected)
    pendingKicks_.emplace_back(device, "fault injection: drop");
  out.boolean("connected", isConnected);
}

void Emulator::cmdRefuseConnects(const Request& req, JsonOut&) {
  Faults& faults = faults_[requireDevice(req)];
  faults.refuseConnects = intOr(req.args, "count", -1);
  faults.refuseByClosing = intOr(req.args, "close", 0) != 0;
}

void Emulator::cmdCapTokenLifetime(const Request& req, JsonOut&) {
  const int64_t seconds = std::max<int64_t>(0, intOr(req.args, "seconds", 0));
  if (auto device = optionalString(req.args, "device")) {
    if (!registry_.contains(*device))
      throw CommandError(404, "unknown device '" + *device + "'");
    faults_[*device].tokenCapSeconds = seconds;
  } else {
    globalTokenCapSeconds_ = seconds;
  }
  // Also applies to connections that are already up: the cap counts from their auth time.
  applyTokenCaps();
}

void Emulator::cmdTwinFault(const Request& req, JsonOut&) {
  Faults& f = faults_[requireDevice(req)];
  f.twinDelayMs = std::max<int64_t>(0, intOr(req.args, "delayMs", 0));
  f.twinStatus = intOr(req.args, "status", 0);
  f.twinStatusCount = f.twinStatus != 0 ? intOr(req.args, "count", -1) : 0;
}

std::string Emulator::twinJson(const Twin& twin) const {
  rapidjson::Document doc(rapidjson::kObjectType);
  auto& alloc = doc.GetAllocator();
  rapidjson::Value desired(twin.desired, alloc);
  desired.AddMember("$version", twin.desiredVersion, alloc);
  rapidjson::Value reported(twin.reported, alloc);
  reported.AddMember("$version", twin.reportedVersion, alloc);
  doc.AddMember("desired", desired, alloc);
  doc.AddMember("reported", reported, alloc);
  return toJson(doc);
}

void Emulator::cmdTwinGet(const Request& req, JsonOut& out) {
  out.raw("twin", twinJson(twins_[requireDevice(req)]));
}

void Emulator::cmdTwinPatchDesired(const Request& req, JsonOut& out) {
  const std::string device = requireDevice(req);
  const auto patch = req.args.FindMember("patch");
  if (patch == req.args.MemberEnd() || !patch->value.IsObject()) {
    throw CommandError(400, "argument 'patch' must be a JSON object");
  }
  Twin& twin = twins_[device];
  mergePatch(twin.desired, patch->value, twin.desired.GetAllocator());
  ++twin.desiredVersion;
  // The hub does not queue desired patches: only a connected, subscribed device hears about it.
  const std::string topic =
      "$iothub/twin/PATCH/properties/desired/?$version=" + std::to_string(twin.desiredVersion);
  const bool sent = connected(device) && subscribed(device, topic);
  if (sent) {
    rapidjson::Document body(rapidjson::kObjectType);
    body.CopyFrom(patch->value, body.GetAllocator());
    body.AddMember("$version", twin.desiredVersion, body.GetAllocator());
    publishTo(device, topic, toJson(body), 0);
  }
  out.num("version", twin.desiredVersion).boolean("sent", sent);
}

void Emulator::cmdInvokeMethod(const Request& req, JsonOut& out) {
  const std::string device = requireDevice(req);
  const std::string method = requireString(req.args, "method");
  const std::string rid = optionalString(req.args, "rid").value_or(req.rid);
  std::string payload = "null";
  if (const auto p = req.args.FindMember("payload"); p != req.args.MemberEnd()) {
    payload = toJson(p->value);
  }
  out.str("rid", rid);
  const std::string topic = "$iothub/methods/POST/" + percentEncode(method) + "/?$rid=" + rid;
  if (!connected(device) || !subscribed(device, topic)) {
    // Like the hub with connectTimeoutInSeconds=0: a device that is offline (or has not
    // subscribed to methods) fails the call with 404.
    const std::string error =
        connected(device) ? "device not subscribed to methods" : "device not connected";
    emitEvent("method-response", JsonOut()
                                     .str("device", device)
                                     .str("rid", rid)
                                     .num("status", 404)
                                     .str("payload", JsonOut().str("message", error).finish())
                                     .str("error", error)
                                     .finish());
    throw CommandError(404, error);
  }
  // responseTimeoutInSeconds of the service API, in ms here; the hub answers 504 after it.
  const int64_t timeoutMs =
      std::clamp<int64_t>(intOr(req.args, "timeoutMs", kDefaultMethodTimeoutMs), 0, 300'000);
  pendingMethods_[rid] = PendingMethod{device, steadyMs() + timeoutMs};
  out.num("timeoutMs", timeoutMs);
  publishTo(device, topic, payload, 0);
}

void Emulator::cmdC2d(const Request& req, JsonOut& out) {
  const std::string device = requireDevice(req);
  if (device.find('/') != std::string::npos)
    throw CommandError(400, "modules have no C2D");
  std::string body = optionalString(req.args, "body").value_or("");
  if (auto b64 = optionalString(req.args, "bodyBase64")) {
    auto decoded = base64Decode(*b64);
    if (!decoded)
      throw CommandError(400, "bodyBase64 is not base64");
    body = std::move(*decoded);
  }
  // Properties keep the caller's order: an object, or an array of [key, value] pairs.
  std::string bag;
  auto append = [&](const rapidjson::Value& k, const rapidjson::Value& v) {
    if (!k.IsString() || !(v.IsString() || v.IsNull())) {
      throw CommandError(400, "property keys and values must be strings");
    }
    if (!bag.empty())
      bag += '&';
    bag += percentEncode(std::string_view(k.GetString(), k.GetStringLength()));
    if (v.IsString())
      bag += "=" + percentEncode(std::string_view(v.GetString(), v.GetStringLength()));
  };
  if (const auto props = req.args.FindMember("properties"); props != req.args.MemberEnd()) {
    if (props->value.IsObject()) {
      for (auto it = props->value.MemberBegin(); it != props->value.MemberEnd(); ++it) {
        append(it->name, it->value);
      }
    } else if (props->value.IsArray()) {
      for (const auto& pair : props->value.GetArray()) {
        if (!pair.IsArray() || pair.Size() != 2)
          throw CommandError(400, "pairs must be [k, v]");
        append(pair[0], pair[1]);
      }
    } else {
      throw CommandError(400, "properties must be an object or an array of pairs");
    }
  }
  const std::string topic = "devices/" + device + "/messages/devicebound/" + bag;
  const bool isConnected = connected(device);
  const auto persistent = persistentSession_.find(device);
  const bool hasSession =
      isConnected || (persistent != persistentSession_.end() && persistent->second);
  // Held back on earlier held messages too, so that C2D stays in order.
  const bool brokerQueues = hasSession && subscribed(device, topic) && !heldC2d_.contains(device);
  if (brokerQueues) {
    // QoS 1 to the client id: mosquitto delivers it now or keeps it in the offline session.
    publishTo(device, topic, body, 1);
  } else {
    heldC2d_[device].push_back(Outgoing{0, device, topic, body, 1});
  }
  out.str("topic", topic)
      .boolean("connected", isConnected)
      .str("queue", brokerQueues ? "broker" : "emulator");
}

void Emulator::cmdLedger(const Request& req, JsonOut& out) {
  const auto device = optionalString(req.args, "device");
  rapidjson::Document doc(rapidjson::kObjectType);
  auto& alloc = doc.GetAllocator();
  for (const auto& [id, entry] : ledger_) {
    if (device && *device != id)
      continue;
    rapidjson::Value ids(rapidjson::kObjectType);
    int64_t duplicates = 0;
    for (const auto& [mid, count] : entry.ids) {
      ids.AddMember(rapidjson::Value(mid.c_str(), alloc), rapidjson::Value(count), alloc);
      duplicates += count - 1;
    }
    rapidjson::Value e(rapidjson::kObjectType);
    e.AddMember("total", entry.total, alloc);
    e.AddMember("withoutId", entry.withoutId, alloc);
    e.AddMember("duplicates", duplicates, alloc);
    e.AddMember("ids", ids, alloc);
    doc.AddMember(rapidjson::Value(id.c_str(), alloc), e, alloc);
  }
  out.value("devices", doc);
}

void Emulator::cmdLedgerClear(const Request& req, JsonOut&) {
  if (auto device = optionalString(req.args, "device")) {
    ledger_.erase(*device);
  } else {
    ledger_.clear();
  }
}

// ---------------------------------------------------------------------------------------------
// Tick and disconnect

void Emulator::onTick() {
  for (const std::string& line : shaping_.takeLog())
    logf(MOSQ_LOG_NOTICE, "hub-emulator: %s", line.c_str());
  const int64_t steady = steadyMs();
  for (auto it = pendingMethods_.begin(); it != pendingMethods_.end();) {
    if (it->second.dueMs > steady) {
      ++it;
      continue;
    }
    logf(MOSQ_LOG_NOTICE, "hub-emulator: method rid '%s' of '%s' timed out", it->first.c_str(),
         it->second.device.c_str());
    // What the service API answers: 504 GatewayTimeout, errorCode 504101.
    emitEvent("method-response",
              JsonOut()
                  .str("device", it->second.device)
                  .str("rid", it->first)
                  .num("status", 504)
                  .str("payload", JsonOut()
                                      .num("errorCode", 504101)
                                      .str("message",
                                           "Timed out waiting for the response from "
                                           "device.")
                                      .finish())
                  .boolean("timeout", true)
                  .finish());
    it = pendingMethods_.erase(it);
  }
  // Subscriptions that took effect after a SUBACK delay release the C2D held for them.
  std::vector<std::string> holding;
  for (const auto& entry : heldC2d_)
    holding.push_back(entry.first);
  for (const std::string& device : holding)
    flushHeldC2d(device);

  const int64_t now = hubNowMs();
  std::vector<std::pair<std::string, std::string>> kicks;
  kicks.swap(pendingKicks_);
  for (auto& [client, info] : clients_) {
    if (!info.isService && info.kickReason.empty() && info.expiresAtMs <= now) {
      info.kickReason = "token expired";
      kicks.emplace_back(info.clientId, info.kickReason);
    }
  }
  // Kicking re-enters onDisconnect, which edits clients_, so it happens after the scan.
  for (const auto& [clientId, reason] : kicks) {
    for (auto& [client, info] : clients_) {
      if (info.clientId == clientId && info.kickReason.empty())
        info.kickReason = reason;
    }
    logf(MOSQ_LOG_NOTICE, "hub-emulator: kicking '%s': %s", clientId.c_str(), reason.c_str());
    emitEvent("kick", JsonOut().str("device", clientId).str("reason", reason).finish());
    mosquitto_kick_client_by_clientid(clientId.c_str(), false);
  }

  while (!delayed_.empty()) {
    // Every delayed reply of a device carries the same delay, so the queue is ordered by due time
    // per device; stopping at the first not-yet-due entry keeps replies in request order.
    auto due = std::find_if(delayed_.begin(), delayed_.end(),
                            [&](const Outgoing& o) { return o.dueMs <= steady; });
    if (due == delayed_.end())
      break;
    sendTwinResponse(*due);
    delayed_.erase(due);
  }
}

void Emulator::onDisconnect(const mosquitto_evt_disconnect& event) {
  const auto it = clients_.find(event.client);
  if (it == clients_.end())
    return;  // refused at auth, never ours
  const ClientInfo info = std::move(it->second);
  clients_.erase(it);
  if (info.isService)
    return;
  if (info.cleanSession && !connected(info.clientId))
    subscriptions_.erase(info.clientId);
  logf(MOSQ_LOG_NOTICE, "hub-emulator: '%s' disconnected (reason %d%s%s)", info.clientId.c_str(),
       event.reason, info.kickReason.empty() ? "" : ", ", info.kickReason.c_str());
  emitEvent("disconnect", JsonOut()
                              .str("device", info.clientId)
                              .num("reason", event.reason)
                              .str("kick", info.kickReason)
                              .finish());
}

// ---------------------------------------------------------------------------------------------

void Emulator::publishTo(const std::string& clientId, const std::string& topic,
                         const std::string& payload, int qos) {
  publishToClient(clientId, topic, payload, qos);
}

void Emulator::emitEvent(std::string_view type, const std::string& json) {
  emitControlEvent(type, json);
}

}  // namespace iothubd::hubemu
