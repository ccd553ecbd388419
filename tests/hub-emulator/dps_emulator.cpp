// SPDX-License-Identifier: MIT
#include "dps_emulator.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace iothubd::hubemu {
namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("dps-emulator: " + what);
}

void put(Writer& w, const char* key, const std::string& value) {
  w.Key(key);
  w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

void writeEnrollment(Writer& w, const DpsEnrollment& e) {
  w.StartObject();
  put(w, "kind", e.kind == DpsEnrollment::Kind::Group ? "group" : "individual");
  put(w, "name", e.name);
  put(w, "attestation",
      e.attestation == DpsEnrollment::Attestation::X509 ? "x509" : "symmetric-key");
  if (!e.key.empty())
    put(w, "key", e.key);
  if (!e.hub.empty())
    put(w, "hub", e.hub);
  if (!e.deviceId.empty())
    put(w, "deviceId", e.deviceId);
  w.Key("enabled");
  w.Bool(e.enabled);
  w.EndObject();
}

std::string enrollmentJson(const DpsEnrollment& e) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  writeEnrollment(w, e);
  return std::string(buffer.GetString(), buffer.GetSize());
}

rapidjson::Document parse(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse(text.c_str(), text.size());
  if (doc.HasParseError() || !doc.IsObject())
    fail("unexpected JSON from the emulator: " + text);
  return doc;
}

std::string stringMember(const rapidjson::Value& v, const char* name) {
  const auto it = v.FindMember(name);
  return it != v.MemberEnd() && it->value.IsString()
             ? std::string(it->value.GetString(), it->value.GetStringLength())
             : std::string();
}

int64_t intMember(const rapidjson::Value& v, const char* name) {
  const auto it = v.FindMember(name);
  return it != v.MemberEnd() && it->value.IsInt64() ? it->value.GetInt64() : 0;
}

HubEmulator::Options brokerOptions(const DpsEmulator::Options& o, const std::string& configPath) {
  HubEmulator::Options b;
  b.pluginPath = o.pluginPath;
  b.pluginOptions = {{"mode", "dps"}, {"dps_config", configPath}};
  b.x509Listener = o.x509Listener;
  b.websocketsListener = o.websocketsListener;
  b.logEveryPacket = o.logEveryPacket;
  return b;
}

}  // namespace

// ---- DpsEmulator -------------------------------------------------------------------------------

DpsEmulator::DpsEmulator() : DpsEmulator(Options{}) {}

DpsEmulator::DpsEmulator(Options options)
    : options_(std::move(options)),
      configDir_(makeTestDirectory("dps-emulator")),
      broker_(brokerOptions(options_, configDir_ + "/dps.json")) {
  if (options_.hubs.empty())
    fail("a DPS needs at least one hub to allocate to");
}

DpsEmulator::~DpsEmulator() {
  broker_.stop();
  std::error_code ec;
  std::filesystem::remove_all(configDir_, ec);
}

void DpsEmulator::addEnrollment(const DpsEnrollment& enrollment) {
  if (broker_.running())
    fail("addEnrollment() after start(): use DpsControl::enroll()");
  enrollments_.push_back(enrollment);
}

std::string DpsEmulator::addIndividualEnrollment(const std::string& registrationId,
                                                 const std::string& hub) {
  DpsEnrollment e;
  e.name = registrationId;
  e.key = randomKey();
  e.hub = hub;
  addEnrollment(e);
  return e.key;
}

std::string DpsEmulator::addGroupEnrollment(const std::string& name, const std::string& hub) {
  DpsEnrollment e;
  e.kind = DpsEnrollment::Kind::Group;
  e.name = name;
  e.key = randomKey(64);  // as the portal generates group keys
  e.hub = hub;
  addEnrollment(e);
  return e.key;
}

void DpsEmulator::writeConfig() const {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  put(w, "idScope", options_.idScope);
  w.Key("hubs");
  w.StartArray();
  for (const auto& hub : options_.hubs)
    w.String(hub.c_str(), static_cast<rapidjson::SizeType>(hub.size()));
  w.EndArray();
  w.Key("retryAfter");
  w.Int(options_.retryAfterSeconds);
  w.Key("assigningPolls");
  w.Int(options_.assigningPolls);
  w.Key("enrollments");
  w.StartArray();
  for (const auto& e : enrollments_)
    writeEnrollment(w, e);
  w.EndArray();
  w.EndObject();
  // Holds enrollment keys: created 0600.
  const std::string path = configDir_ + "/dps.json";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    fail("cannot write " + path + ": " + std::strerror(errno));
  const std::string text(buffer.GetString(), buffer.GetSize());
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  if (!ok)
    fail("cannot write " + path);
}

void DpsEmulator::start() {
  writeConfig();
  broker_.start();
}

void DpsEmulator::stop() {
  broker_.stop();
}

void DpsEmulator::restart() {
  broker_.stop();
  start();
}

// ---- DpsControl --------------------------------------------------------------------------------

DpsControl::DpsControl(const DpsEmulator& dps, Ms timeout)
    : service_(dps.host(), dps.port(), dps.caFile(), dps.servicePassword(), timeout) {}

void DpsControl::enroll(const DpsEnrollment& enrollment) {
  service_.request("dps-enroll", enrollmentJson(enrollment));
}

void DpsControl::unenroll(DpsEnrollment::Kind kind, const std::string& name) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  put(w, "kind", kind == DpsEnrollment::Kind::Group ? "group" : "individual");
  put(w, "name", name);
  w.EndObject();
  service_.request("dps-unenroll", buffer.GetString());
}

void DpsControl::assign(const std::string& registrationId, const std::string& hub) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  put(w, "registrationId", registrationId);
  put(w, "hub", hub);
  w.EndObject();
  service_.request("dps-assign", buffer.GetString());
}

void DpsControl::fault(const DpsFault& f) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  if (!f.registrationId.empty())
    put(w, "registrationId", f.registrationId);
  w.Key("status");
  w.Int(f.status);
  if (f.retryAfterSeconds >= 0) {
    w.Key("retryAfter");
    w.Int(f.retryAfterSeconds);
  }
  w.Key("count");
  w.Int(f.count);
  put(w, "on", f.on);
  w.EndObject();
  service_.request("dps-fault", buffer.GetString());
}

void DpsControl::failAllocation(const std::string& registrationId, int errorCode,
                                const std::string& message) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  put(w, "registrationId", registrationId);
  w.Key("errorCode");
  w.Int(errorCode);
  put(w, "message", message);
  w.EndObject();
  service_.request("dps-fail-allocation", buffer.GetString());
}

void DpsControl::setAssigning(int polls, int retryAfterSeconds) {
  service_.request("dps-assigning", "{\"polls\":" + std::to_string(polls) + ",\"retryAfter\":" +
                                        std::to_string(retryAfterSeconds) + "}");
}

void DpsControl::clearFaults() {
  service_.request("clear-faults");
}

std::optional<DpsRegistration> DpsControl::registration(const std::string& registrationId) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  put(w, "registrationId", registrationId);
  w.EndObject();
  const rapidjson::Document doc = parse(service_.request("dps-registrations", buffer.GetString()));
  const auto all = doc.FindMember("registrations");
  if (all == doc.MemberEnd() || !all->value.IsObject())
    return std::nullopt;
  const auto it = all->value.FindMember(registrationId.c_str());
  if (it == all->value.MemberEnd())
    return std::nullopt;
  const auto& r = it->value;
  DpsRegistration out;
  out.registerRequests = intMember(r, "registerRequests");
  out.polls = intMember(r, "polls");
  out.lastStatus = static_cast<int>(intMember(r, "lastStatus"));
  out.hub = stringMember(r, "hub");
  out.deviceId = stringMember(r, "deviceId");
  out.substatus = stringMember(r, "substatus");
  out.payload = stringMember(r, "payload");
  out.attestation = stringMember(r, "attestation");
  return out;
}

}  // namespace iothubd::hubemu
