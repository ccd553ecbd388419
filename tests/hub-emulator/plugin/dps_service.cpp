// SPDX-License-Identifier: MIT
#include "dps_service.hpp"

#include <mosquitto.h>
#include <mosquitto_plugin.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "sas.hpp"

namespace iothubd::hubemu {
namespace {

// Topics of the DPS MQTT device protocol (Microsoft Learn, "Communicate with DPS using the MQTT
// protocol"). DPS serves exactly these; it is not a general broker.
constexpr std::string_view kResponseFilter = "$dps/registrations/res/#";
constexpr std::string_view kRegisterPrefix = "$dps/registrations/PUT/iotdps-register/?";
constexpr std::string_view kPollPrefix = "$dps/registrations/GET/iotdps-get-operationstatus/?";

int64_t nowSeconds() {
  // Wall clock on purpose: token expiry (se) is absolute Unix time.
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string utcNow() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer;
}

// The query after `prefix` as a map (the first of repeated keys wins).
std::map<std::string, std::string> queryOf(std::string_view text, size_t prefixLength) {
  std::map<std::string, std::string> out;
  for (auto& [key, value] : parseQuery(text.substr(prefixLength)))
    out.emplace(std::move(key), std::move(value));
  return out;
}

void emitEvent(std::string_view type, const std::string& json) {
  emitControlEvent(type, json);
}

const char* attestationText(bool x509) {
  return x509 ? "x509" : "symmetric-key";
}

}  // namespace

DpsService::DpsService(Options options) : options_(std::move(options)) {
  loadConfig();
  commands_ = {
      {"status", &DpsService::cmdStatus},
      {"dps-enroll", &DpsService::cmdEnroll},
      {"dps-unenroll", &DpsService::cmdUnenroll},
      {"dps-assign", &DpsService::cmdAssign},
      {"dps-fault", &DpsService::cmdFault},
      {"dps-fail-allocation", &DpsService::cmdFailAllocation},
      {"dps-assigning", &DpsService::cmdAssigning},
      {"dps-registrations", &DpsService::cmdRegistrations},
      {"clear-faults", &DpsService::cmdClearFaults},
  };
}

void DpsService::loadConfig() {
  std::ifstream in(options_.configPath);
  if (!in)
    throw std::runtime_error("cannot read DPS configuration " + options_.configPath);
  std::stringstream text;
  text << in.rdbuf();
  auto doc = parseObject(text.str());
  if (!doc)
    throw std::runtime_error("DPS configuration is not a JSON object");
  idScope_ = requireString(*doc, "idScope");
  if (const auto hubs = doc->FindMember("hubs");
      hubs != doc->MemberEnd() && hubs->value.IsArray()) {
    for (const auto& hub : hubs->value.GetArray()) {
      if (hub.IsString())
        hubs_.emplace_back(hub.GetString(), hub.GetStringLength());
    }
  }
  if (hubs_.empty())
    throw std::runtime_error("DPS configuration names no hubs");
  retryAfter_ = intOr(*doc, "retryAfter", 1);
  assigningPolls_ = intOr(*doc, "assigningPolls", 1);
  if (const auto list = doc->FindMember("enrollments");
      list != doc->MemberEnd() && list->value.IsArray()) {
    for (const auto& value : list->value.GetArray()) {
      Enrollment e = parseEnrollment(value);
      enrollments_[enrollmentKey(e)] = std::move(e);
    }
  }
  mosquitto_log_printf(MOSQ_LOG_NOTICE,
                       "hub-emulator: DPS mode, ID scope %s, %zu enrollments, %zu hubs",
                       idScope_.c_str(), enrollments_.size(), hubs_.size());
}

DpsService::Enrollment DpsService::parseEnrollment(const rapidjson::Value& value) const {
  if (!value.IsObject())
    throw CommandError(400, "an enrollment is a JSON object");
  Enrollment e;
  const std::string kind = optionalString(value, "kind").value_or("individual");
  if (kind != "individual" && kind != "group")
    throw CommandError(400, "kind must be individual or group");
  e.group = kind == "group";
  e.name = requireString(value, "name");
  const std::string attestation = optionalString(value, "attestation").value_or("symmetric-key");
  if (attestation == "x509") {
    e.attestation = Attestation::X509;
  } else if (attestation != "symmetric-key") {
    throw CommandError(400, "attestation must be symmetric-key or x509");
  }
  if (e.attestation == Attestation::SymmetricKey) {
    e.key = requireString(value, "key");
    if (!base64Decode(e.key))
      throw CommandError(400, "key is not base64");
  }
  e.hub = optionalString(value, "hub").value_or("");
  if (!e.hub.empty() && std::find(hubs_.begin(), hubs_.end(), e.hub) == hubs_.end())
    throw CommandError(400, "hub '" + e.hub + "' is not one of this DPS's hubs");
  e.deviceId = optionalString(value, "deviceId").value_or("");
  if (const auto enabled = value.FindMember("enabled");
      enabled != value.MemberEnd() && enabled->value.IsBool()) {
    e.enabled = enabled->value.GetBool();
  }
  return e;
}

std::string DpsService::enrollmentKey(const Enrollment& e) {
  return (e.group ? "group/" : "individual/") + e.name;
}

// ---------------------------------------------------------------------------------------------
// Connection: DPS takes the CONNECT of any well-formed registration and judges the attestation
// when the device registers (a wrong key is a 401 answer, not a refused CONNECT:
// MicrosoftDocs/azure-docs#43157).

int DpsService::refuse(const std::string& clientId, const std::string& reason) {
  mosquitto_log_printf(MOSQ_LOG_NOTICE, "hub-emulator: DPS refusing '%s': %s", clientId.c_str(),
                       reason.c_str());
  emitEvent("auth-refused", JsonOut().str("device", clientId).str("reason", reason).finish());
  return MOSQ_ERR_AUTH;
}

int DpsService::onBasicAuth(const mosquitto_evt_basic_auth& event) {
  const char* rawId = mosquitto_client_id(event.client);
  ClientInfo info;
  info.clientId = rawId ? rawId : "";
  info.username = event.username ? event.username : "";
  if (info.username == kServiceUser) {
    if (options_.servicePassword.empty() || event.password == nullptr ||
        options_.servicePassword != event.password) {
      return refuse(info.clientId, "wrong service password");
    }
    info.isService = true;
    clients_[event.client] = std::move(info);
    return MOSQ_ERR_SUCCESS;
  }
  // {idScope}/registrations/{registrationId}/api-version=…[&ClientVersion=…], client id =
  // registration id.
  const std::string marker = "/registrations/" + info.clientId + "/";
  const size_t at = info.username.find(marker);
  if (info.clientId.empty() || at == std::string::npos || at == 0) {
    return refuse(info.clientId, "username '" + info.username +
                                     "' is not {idScope}/registrations/" + info.clientId +
                                     "/api-version=…");
  }
  info.idScope = info.username.substr(0, at);
  const auto query = queryOf(info.username, at + marker.size());
  const auto version = query.find("api-version");
  if (version == query.end() || version->second.empty())
    return refuse(info.clientId, "username lacks api-version");
  info.hasPassword = event.password != nullptr;
  info.password = event.password ? event.password : "";
  info.certificateCn = certificateCommonName(event.client);
  emitEvent("auth", JsonOut()
                        .str("device", info.clientId)
                        .str("username", info.username)
                        .str("method", info.hasPassword ? "sas" : "x509")
                        .boolean("cleanSession", mosquitto_client_clean_session(event.client))
                        .finish());
  subscriptions_.erase(info.clientId);  // DPS keeps no session, whatever CleanSession says
  clients_[event.client] = std::move(info);
  return MOSQ_ERR_SUCCESS;
}

int DpsService::onAclCheck(const mosquitto_evt_acl_check& event) {
  const auto it = clients_.find(event.client);
  if (it == clients_.end())
    return MOSQ_ERR_ACL_DENIED;
  if (it->second.isService)
    return MOSQ_ERR_SUCCESS;
  const std::string_view topic = event.topic ? event.topic : "";
  bool allowed = false;
  switch (event.access) {
    case MOSQ_ACL_SUBSCRIBE:
      allowed = topic == kResponseFilter;
      if (allowed)
        subscriptions_[it->second.clientId].insert(std::string(topic));
      break;
    case MOSQ_ACL_UNSUBSCRIBE:
      allowed = true;
      subscriptions_[it->second.clientId].erase(std::string(topic));
      break;
    case MOSQ_ACL_WRITE:
      allowed = topic.starts_with(kRegisterPrefix) || topic.starts_with(kPollPrefix);
      break;
    default:
      // Answers are addressed to their device by the plugin; nothing is routed to devices.
      allowed = false;
      break;
  }
  if (!allowed) {
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "hub-emulator: DPS ACL denies '%s' access %d to '%s'",
                         it->second.clientId.c_str(), event.access, event.topic);
  }
  return allowed ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

void DpsService::onDisconnect(const mosquitto_evt_disconnect& event) {
  const auto it = clients_.find(event.client);
  if (it == clients_.end())
    return;
  const ClientInfo info = std::move(it->second);
  clients_.erase(it);
  if (info.isService)
    return;
  subscriptions_.erase(info.clientId);
  emitEvent("disconnect",
            JsonOut().str("device", info.clientId).num("reason", event.reason).finish());
}

// ---------------------------------------------------------------------------------------------
// Registration

int DpsService::onMessage(const mosquitto_evt_message& event) {
  const auto it = clients_.find(event.client);
  if (it == clients_.end() || !event.topic)
    return MOSQ_ERR_SUCCESS;
  const ClientInfo& info = it->second;
  const std::string_view topic = event.topic;
  const std::string_view payload(static_cast<const char*>(event.payload), event.payloadlen);
  if (info.isService) {
    if (topic.starts_with(kRequestPrefix))
      handleControl(info, topic, payload);
    return MOSQ_ERR_SUCCESS;
  }
  const bool isRegister = topic.starts_with(kRegisterPrefix);
  const auto query = queryOf(topic, isRegister ? kRegisterPrefix.size() : kPollPrefix.size());
  const auto rid = query.find("$rid");
  if (rid == query.end() || rid->second.empty()) {
    // Without a request id there is no topic to answer on.
    mosquitto_log_printf(MOSQ_LOG_WARNING, "hub-emulator: DPS request without $rid from '%s'",
                         info.clientId.c_str());
    return MOSQ_ERR_SUCCESS;
  }
  if (isRegister) {
    handleRegister(info, rid->second, payload);
  } else {
    const auto op = query.find("operationId");
    handlePoll(info, rid->second, op == query.end() ? std::string() : op->second);
  }
  return MOSQ_ERR_SUCCESS;
}

bool DpsService::sasTokenValid(const ClientInfo& info, const std::string& base64Key,
                               std::string& why) const {
  if (!info.hasPassword) {
    why = "no SAS token and no client certificate";
    return false;
  }
  // The policy name must be "registration" when given ([c] sends it, [py] leaves it out).
  const std::string& token = info.password;
  if (const size_t skn = token.find("skn="); skn != std::string::npos) {
    const size_t end = token.find('&', skn);
    const std::string name = token.substr(skn + 4, end == std::string::npos ? end : end - skn - 4);
    if (name != "registration") {
      why = "skn is '" + name + "', not 'registration'";
      return false;
    }
  }
  const SasCheck check =
      verifySasToken(token, idScope_ + "/registrations/" + info.clientId, base64Key, nowSeconds());
  why = check.reason;
  return check.ok;
}

DpsService::Verdict DpsService::attest(const ClientInfo& info) const {
  if (info.idScope != idScope_)
    return {nullptr, 401, "Unauthorized"};
  const bool x509 = !info.hasPassword;
  if (x509) {
    if (!info.certificateCn)
      return {nullptr, 401, "Unauthorized"};
    if (*info.certificateCn != info.clientId)
      return {nullptr, 401, "Invalid certificate."};
  }
  const auto individual = enrollments_.find("individual/" + info.clientId);
  std::string why;
  if (individual != enrollments_.end()) {
    const Enrollment& e = individual->second;
    if ((e.attestation == Attestation::X509) != x509)
      return {nullptr, 401, "Unauthorized"};
    if (!x509 && !sasTokenValid(info, e.key, why))
      return {nullptr, 401, "Unauthorized"};
    return {&e, 200, ""};
  }
  bool anyGroup = false;
  for (const auto& [key, e] : enrollments_) {
    if (!e.group || (e.attestation == Attestation::X509) != x509)
      continue;
    anyGroup = true;
    // X.509 groups: the broker verified the chain against the CA the group stands for.
    if (x509)
      return {&e, 200, ""};
    const std::string derived = base64Encode(hmacSha256(*base64Decode(e.key), info.clientId));
    if (sasTokenValid(info, derived, why))
      return {&e, 200, ""};
  }
  if (anyGroup)
    return {nullptr, 401, "Unauthorized"};
  return {nullptr, 404, "Device registration not found."};
}

bool DpsService::answerFault(const ClientInfo& info, const std::string& rid, bool polling) {
  for (const std::string& who : {info.clientId, std::string()}) {
    auto list = faults_.find(who);
    if (list == faults_.end())
      continue;
    for (auto it = list->second.begin(); it != list->second.end(); ++it) {
      Fault& f = *it;
      if (f.on != "any" && f.on != (polling ? "poll" : "register"))
        continue;
      const Fault copy = f;
      if (f.count > 0 && --f.count == 0)
        list->second.erase(it);
      const int64_t code = copy.errorCode != 0 ? copy.errorCode : copy.status * 1000 + 1;
      mosquitto_log_printf(MOSQ_LOG_NOTICE, "hub-emulator: DPS fault %d for '%s'", copy.status,
                           info.clientId.c_str());
      answerError(info, rid, copy.status, code,
                  copy.message.empty() ? "emulated fault" : copy.message, copy.retryAfter);
      return true;
    }
  }
  return false;
}

void DpsService::handleRegister(const ClientInfo& info, const std::string& rid,
                                std::string_view payload) {
  Registration& record = registrations_[info.clientId];
  ++record.registerRequests;
  record.attestation = attestationText(!info.hasPassword);
  emitEvent("dps-register", JsonOut()
                                .str("device", info.clientId)
                                .str("rid", rid)
                                .str("payload", payload)
                                .str("attestation", record.attestation)
                                .str("username", info.username)
                                .finish());
  if (answerFault(info, rid, false))
    return;
  // DPS REST "DeviceRegistration": {"registrationId": "...", "payload": {...}}.
  auto body = parseObject(payload);
  std::optional<std::string> claimed;
  try {
    claimed = body ? optionalString(*body, "registrationId") : std::nullopt;
  } catch (const CommandError&) {
    claimed.reset();  // not a string
  }
  if (!body || claimed != info.clientId) {
    answerError(info, rid, 400, 400004,
                "The registration request body must be a JSON object whose registrationId is "
                "the registration id of the connection.");
    return;
  }
  record.payload.clear();
  if (const auto custom = body->FindMember("payload"); custom != body->MemberEnd())
    record.payload = toJson(custom->value);
  const Verdict verdict = attest(info);
  if (verdict.enrollment == nullptr) {
    answerError(info, rid, verdict.status, verdict.status == 401 ? 401002 : 404201,
                verdict.message);
    return;
  }
  const std::string operationId = newOperationId();
  operations_[operationId] = Operation{info.clientId, enrollmentKey(*verdict.enrollment),
                                       assigningPolls_, record.attestation};
  answer(info, rid, 202,
         JsonOut().str("operationId", operationId).str("status", "assigning").finish(),
         retryAfter_);
}

void DpsService::handlePoll(const ClientInfo& info, const std::string& rid,
                            const std::string& operationId) {
  Registration& record = registrations_[info.clientId];
  ++record.polls;
  if (answerFault(info, rid, true))
    return;
  const auto op = operations_.find(operationId);
  if (op == operations_.end() || op->second.registrationId != info.clientId) {
    answerError(info, rid, 404, 404202, "Operation not found.");
    return;
  }
  if (op->second.pollsLeft > 0) {
    --op->second.pollsLeft;
    answer(
        info, rid, 202,
        JsonOut()
            .str("operationId", operationId)
            .str("status", "assigning")
            .raw("registrationState",
                 JsonOut().str("registrationId", info.clientId).str("status", "assigning").finish())
            .finish(),
        retryAfter_);
    return;
  }
  answer(info, rid, 200, assignedJson(operationId, op->second));
}

std::string DpsService::assignedJson(const std::string& operationId, const Operation& op) {
  const std::string& regId = op.registrationId;
  Registration& record = registrations_[regId];
  const auto enrollment = enrollments_.find(op.enrollmentKey);
  const std::string now = utcNow();
  JsonOut state;
  state.str("registrationId", regId);
  if (record.createdUtc.empty())
    record.createdUtc = now;
  state.str("createdDateTimeUtc", record.createdUtc);
  if (enrollment == enrollments_.end() || !enrollment->second.enabled) {
    emitEvent("dps-assigned", JsonOut().str("device", regId).str("status", "disabled").finish());
    return JsonOut()
        .str("operationId", operationId)
        .str("status", "disabled")
        .raw("registrationState", state.str("status", "disabled").finish())
        .finish();
  }
  if (auto failure = allocationFailures_.find(regId); failure != allocationFailures_.end()) {
    const AllocationFailure f = failure->second;
    if (failure->second.count > 0 && --failure->second.count == 0)
      allocationFailures_.erase(failure);
    emitEvent("dps-assigned", JsonOut().str("device", regId).str("status", "failed").finish());
    return JsonOut()
        .str("operationId", operationId)
        .str("status", "failed")
        .raw("registrationState", state.str("status", "failed")
                                      .num("errorCode", f.errorCode)
                                      .str("errorMessage", f.message)
                                      .str("lastUpdatedDateTimeUtc", now)
                                      .finish())
        .finish();
  }
  const Enrollment& e = enrollment->second;
  std::string hub = e.hub.empty() ? hubs_.front() : e.hub;
  if (auto moved = allocations_.find(regId); moved != allocations_.end())
    hub = moved->second;
  const std::string deviceId = !e.group && !e.deviceId.empty() ? e.deviceId : regId;
  // Re-provisioning policy "re-provision and migrate data" (the default): a device that comes
  // back to another hub is reported as migrated.
  const std::string substatus =
      record.hub.empty() || record.hub == hub ? "initialAssignment" : "deviceDataMigrated";
  record.hub = hub;
  record.deviceId = deviceId;
  record.substatus = substatus;
  emitEvent("dps-assigned", JsonOut()
                                .str("device", regId)
                                .str("status", "assigned")
                                .str("hub", hub)
                                .str("deviceId", deviceId)
                                .str("substatus", substatus)
                                .str("operationId", operationId)
                                .finish());
  state.str("assignedHub", hub)
      .str("deviceId", deviceId)
      .str("status", "assigned")
      .str("substatus", substatus)
      .str("lastUpdatedDateTimeUtc", now)
      .str("etag", "\"" + operationId.substr(operationId.size() - 8) + "\"");
  if (e.attestation == Attestation::X509) {
    state.raw("x509", "{}");
  } else {
    state.raw("symmetricKey", "{}");
  }
  return JsonOut()
      .str("operationId", operationId)
      .str("status", "assigned")
      .raw("registrationState", state.finish())
      .finish();
}

void DpsService::answer(const ClientInfo& info, const std::string& rid, int status,
                        const std::string& body, int64_t retryAfter) {
  std::string topic = "$dps/registrations/res/" + std::to_string(status) + "/?$rid=" + rid;
  if (retryAfter >= 0)
    topic += "&retry-after=" + std::to_string(retryAfter);
  registrations_[info.clientId].lastStatus = status;
  emitEvent(
      "dps-response",
      JsonOut().str("device", info.clientId).num("status", status).str("topic", topic).finish());
  // Like the hub: answers only reach a device that subscribed to them.
  const auto subs = subscriptions_.find(info.clientId);
  if (subs == subscriptions_.end() || !subs->second.contains(std::string(kResponseFilter))) {
    mosquitto_log_printf(MOSQ_LOG_WARNING,
                         "hub-emulator: DPS dropping answer '%s' to '%s': not subscribed to %s",
                         topic.c_str(), info.clientId.c_str(), kResponseFilter.data());
    return;
  }
  // QoS 1: DPS grants at most QoS 1 and delivers with it (the MQTT article).
  publishToClient(info.clientId, topic, body, 1);
}

void DpsService::answerError(const ClientInfo& info, const std::string& rid, int status,
                             int64_t errorCode, const std::string& message, int64_t retryAfter) {
  answer(info, rid, status,
         JsonOut()
             .num("errorCode", errorCode)
             .str("trackingId", trackingId())
             .str("message", message)
             .str("timestampUtc", utcNow())
             .finish(),
         retryAfter);
}

std::string DpsService::newOperationId() {
  // The service's form: "4." + 16 hex digits + "." + a GUID.
  static constexpr char kHex[] = "0123456789abcdef";
  auto hexDigits = [&](int n) {
    std::string s;
    for (int i = 0; i < n; ++i)
      s.push_back(kHex[random_() % 16]);
    return s;
  };
  return "4." + hexDigits(16) + "." + trackingId();
}

std::string DpsService::trackingId() {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id;
  for (int i = 0; i < 32; ++i) {
    if (i == 8 || i == 12 || i == 16 || i == 20)
      id.push_back('-');
    id.push_back(kHex[random_() % 16]);
  }
  return id;
}

// ---------------------------------------------------------------------------------------------
// Control topics (same protocol as the hub emulation: $hubemu/req/{command}/{rid}).

void DpsService::handleControl(const ClientInfo& info, std::string_view topic,
                               std::string_view payload) {
  serveControlRequest(topic, payload, info.clientId, [this](const Request& req, JsonOut& out) {
    const auto handler = commands_.find(req.command);
    if (handler == commands_.end())
      throw CommandError(404, "unknown command");
    (this->*(handler->second))(req, out);
  });
}

void DpsService::cmdStatus(const Request&, JsonOut& out) {
  rapidjson::Document doc(rapidjson::kObjectType);
  auto& alloc = doc.GetAllocator();
  rapidjson::Value connected(rapidjson::kArrayType);
  for (const auto& [client, info] : clients_) {
    if (!info.isService)
      connected.PushBack(rapidjson::Value(info.clientId.c_str(), alloc), alloc);
  }
  rapidjson::Value enrollments(rapidjson::kArrayType);
  for (const auto& [key, e] : enrollments_)
    enrollments.PushBack(rapidjson::Value(key.c_str(), alloc), alloc);
  out.str("idScope", idScope_).value("connected", connected).value("enrollments", enrollments);
}

void DpsService::cmdEnroll(const Request& req, JsonOut&) {
  Enrollment e = parseEnrollment(req.args);
  enrollments_[enrollmentKey(e)] = std::move(e);
}

void DpsService::cmdUnenroll(const Request& req, JsonOut&) {
  const std::string kind = optionalString(req.args, "kind").value_or("individual");
  if (enrollments_.erase(kind + "/" + requireString(req.args, "name")) == 0)
    throw CommandError(404, "no such enrollment");
}

void DpsService::cmdAssign(const Request& req, JsonOut&) {
  const std::string regId = requireString(req.args, "registrationId");
  const std::string hub = requireString(req.args, "hub");
  if (std::find(hubs_.begin(), hubs_.end(), hub) == hubs_.end())
    throw CommandError(400, "hub '" + hub + "' is not one of this DPS's hubs");
  allocations_[regId] = hub;
}

void DpsService::cmdFault(const Request& req, JsonOut&) {
  Fault f;
  f.status = static_cast<int>(intOr(req.args, "status", 0));
  if (f.status < 300 || f.status > 599)
    throw CommandError(400, "status must be an error status (300..599)");
  f.retryAfter = intOr(req.args, "retryAfter", -1);
  f.count = intOr(req.args, "count", 1);
  f.on = optionalString(req.args, "on").value_or("any");
  if (f.on != "any" && f.on != "register" && f.on != "poll")
    throw CommandError(400, "on must be register, poll or any");
  f.errorCode = intOr(req.args, "errorCode", 0);
  f.message = optionalString(req.args, "message").value_or("");
  faults_[optionalString(req.args, "registrationId").value_or("")].push_back(std::move(f));
}

void DpsService::cmdFailAllocation(const Request& req, JsonOut&) {
  AllocationFailure f;
  f.errorCode = intOr(req.args, "errorCode", f.errorCode);
  f.message = optionalString(req.args, "message").value_or(f.message);
  f.count = intOr(req.args, "count", 1);
  allocationFailures_[requireString(req.args, "registrationId")] = std::move(f);
}

void DpsService::cmdAssigning(const Request& req, JsonOut&) {
  assigningPolls_ = std::max<int64_t>(0, intOr(req.args, "polls", assigningPolls_));
  retryAfter_ = std::max<int64_t>(0, intOr(req.args, "retryAfter", retryAfter_));
}

void DpsService::cmdRegistrations(const Request& req, JsonOut& out) {
  const auto only = optionalString(req.args, "registrationId");
  rapidjson::Document doc(rapidjson::kObjectType);
  auto& alloc = doc.GetAllocator();
  for (const auto& [id, r] : registrations_) {
    if (only && *only != id)
      continue;
    rapidjson::Value e(rapidjson::kObjectType);
    auto str = [&](const char* key, const std::string& value) {
      e.AddMember(rapidjson::StringRef(key), rapidjson::Value(value.c_str(), alloc), alloc);
    };
    e.AddMember("registerRequests", r.registerRequests, alloc);
    e.AddMember("polls", r.polls, alloc);
    e.AddMember("lastStatus", r.lastStatus, alloc);
    str("hub", r.hub);
    str("deviceId", r.deviceId);
    str("substatus", r.substatus);
    str("payload", r.payload);
    str("attestation", r.attestation);
    doc.AddMember(rapidjson::Value(id.c_str(), alloc), e, alloc);
  }
  out.value("registrations", doc);
}

void DpsService::cmdClearFaults(const Request& req, JsonOut&) {
  if (auto regId = optionalString(req.args, "registrationId")) {
    faults_.erase(*regId);
    allocationFailures_.erase(*regId);
  } else {
    faults_.clear();
    allocationFailures_.clear();
  }
}

}  // namespace iothubd::hubemu
