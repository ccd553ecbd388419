// SPDX-License-Identifier: MIT
#include "iothubd/proto/provisioning.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <limits>
#include <map>
#include <utility>

#include "decimal.hpp"
#include "iothubd/core/utf8.hpp"
#include "iothubd/proto/base64.hpp"
#include "iothubd/proto/mqtt_identity.hpp"
#include "iothubd/proto/percent_encoding.hpp"
#include "iothubd/proto/sas_token.hpp"
#include "json_reader.hpp"

namespace iothubd::proto {
namespace {

using core::Errc;
using core::fail;

constexpr std::string_view kResponsePrefix = "$dps/registrations/res/";

bool isAlnum(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// "'c'" for a printable character, else "0xNN", so a message never carries raw control bytes.
std::string showChar(char ch) {
  const auto c = static_cast<unsigned char>(ch);
  if (c > 0x20 && c < 0x7F) {
    return std::string("'") + ch + "'";
  }
  std::array<char, 8> hex{};
  std::snprintf(hex.data(), hex.size(), "0x%02X", c);
  return hex.data();
}

core::Result<void> badChar(std::string_view what, std::string_view text, std::size_t at,
                           std::string_view rule) {
  return fail(Errc::InvalidArgument, std::string(what) + " contains " + showChar(text[at]) +
                                         " at offset " + std::to_string(at) + ", " +
                                         std::string(rule));
}

std::string_view stringOf(const rapidjson::Value& value) {
  return {value.GetString(), value.GetStringLength()};
}

std::string compactJson(const rapidjson::Value& value) {
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  value.Accept(writer);
  return {buffer.GetString(), buffer.GetSize()};
}

// A string member of `object`: nullopt when absent, an error when present with another type.
core::Result<std::optional<std::string>> optionalString(const rapidjson::Value& object,
                                                        const char* name, const char* where) {
  const auto it = object.FindMember(name);
  if (it == object.MemberEnd() || it->value.IsNull()) {
    return std::optional<std::string>();
  }
  if (!it->value.IsString()) {
    return fail(Errc::Protocol, std::string(where) + " '" + name + "' is " +
                                    detail::typeName(it->value) + ", not a string");
  }
  return std::optional<std::string>(std::string(stringOf(it->value)));
}

std::optional<DpsOperationStatus> operationStatusOf(std::string_view text) {
  std::string lower(text);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  });
  static const std::map<std::string, DpsOperationStatus, std::less<>> kStatuses = {
      {"unassigned", DpsOperationStatus::Unassigned}, {"assigning", DpsOperationStatus::Assigning},
      {"assigned", DpsOperationStatus::Assigned},     {"failed", DpsOperationStatus::Failed},
      {"disabled", DpsOperationStatus::Disabled},
  };
  const auto it = kStatuses.find(lower);
  if (it == kStatuses.end()) {
    return std::nullopt;
  }
  return it->second;
}

core::Result<DpsRegistrationState> parseRegistrationState(const rapidjson::Value& state) {
  constexpr const char* kWhere = "DPS registrationState";
  DpsRegistrationState out;
  const std::pair<const char*, std::string*> strings[] = {
      {"registrationId", &out.registrationId},
      {"assignedHub", &out.assignedHub},
      {"deviceId", &out.deviceId},
      {"status", &out.status},
      {"substatus", &out.substatus},
      {"createdDateTimeUtc", &out.createdDateTimeUtc},
      {"lastUpdatedDateTimeUtc", &out.lastUpdatedDateTimeUtc},
      {"errorMessage", &out.errorMessage},
  };
  for (const auto& [name, target] : strings) {
    auto value = optionalString(state, name, kWhere);
    if (!value) {
      return fail(value.error());
    }
    *target = value->value_or("");
  }
  if (const auto it = state.FindMember("errorCode"); it != state.MemberEnd()) {
    if (!it->value.IsUint()) {
      return fail(Errc::Protocol, std::string(kWhere) + " 'errorCode' is not a number");
    }
    out.errorCode = it->value.GetUint();
  }
  if (const auto it = state.FindMember("payload"); it != state.MemberEnd() && !it->value.IsNull()) {
    out.payload = compactJson(it->value);
  }
  return out;
}

}  // namespace

core::Result<void> validateRegistrationId(std::string_view registrationId) {
  constexpr std::string_view kWhat = "registration id";
  if (registrationId.empty()) {
    return fail(Errc::InvalidArgument, "registration id is empty");
  }
  if (registrationId.size() > kMaxRegistrationIdLength) {
    return fail(Errc::InvalidArgument, "registration id is longer than " +
                                           std::to_string(kMaxRegistrationIdLength) +
                                           " characters");
  }
  for (std::size_t i = 0; i < registrationId.size(); ++i) {
    const char c = registrationId[i];
    if (!isAlnum(c) && c != '-' && c != '.' && c != '_' && c != ':') {
      return badChar(kWhat, registrationId, i,
                     "which DPS does not allow (letters, digits, '-', '.', '_', ':')");
    }
  }
  if (const char last = registrationId.back(); !isAlnum(last) && last != '-') {
    return badChar(kWhat, registrationId, registrationId.size() - 1,
                   "but DPS wants the last character to be a letter, a digit or '-'");
  }
  return {};
}

core::Result<void> validateIdScope(std::string_view idScope) {
  constexpr std::size_t kMaxIdScopeLength = 64;
  if (idScope.empty()) {
    return fail(Errc::InvalidArgument, "ID scope is empty");
  }
  if (idScope.size() > kMaxIdScopeLength) {
    return fail(Errc::InvalidArgument,
                "ID scope is longer than " + std::to_string(kMaxIdScopeLength) + " characters");
  }
  for (std::size_t i = 0; i < idScope.size(); ++i) {
    if (!isAlnum(idScope[i])) {
      return badChar("ID scope", idScope, i,
                     "but an ID scope has only letters and digits (like 0ne00012345)");
    }
  }
  return {};
}

std::string dpsUsername(std::string_view idScope, std::string_view registrationId,
                        std::string_view userAgent) {
  std::string username(idScope);
  username.append("/registrations/").append(registrationId);
  username.append("/api-version=").append(kDpsApiVersion);
  username.append("&ClientVersion=").append(percentEncode(userAgent));
  return username;
}

std::string dpsSasResourceUri(std::string_view idScope, std::string_view registrationId) {
  std::string uri(idScope);
  uri.append("/registrations/").append(registrationId);
  return uri;
}

core::Result<core::Secret<>> makeDpsSasToken(std::string_view idScope,
                                             std::string_view registrationId,
                                             const core::Secret<>& deviceKeyBase64,
                                             std::uint64_t expiryUnix) {
  return makeSasToken(dpsSasResourceUri(idScope, registrationId), deviceKeyBase64, expiryUnix,
                      kDpsSasKeyName);
}

core::Result<core::Secret<>> deriveGroupDeviceKey(const core::Secret<>& groupKeyBase64,
                                                  std::string_view registrationId) {
  auto decoded = base64Decode(groupKeyBase64.reveal());
  if (!decoded || decoded->empty()) {
    return fail(Errc::InvalidArgument, "Invalid Symmetric Key");
  }
  const core::Secret<> groupKey(std::move(*decoded));
  std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
  unsigned int macLength = 0;
  if (HMAC(EVP_sha256(), groupKey.reveal().data(), static_cast<int>(groupKey.reveal().size()),
           reinterpret_cast<const unsigned char*>(registrationId.data()), registrationId.size(),
           mac.data(), &macLength) == nullptr) {
    return fail(Errc::Internal, "HMAC-SHA256 failed");
  }
  core::Secret<> deviceKey(
      base64Encode(std::string_view(reinterpret_cast<const char*>(mac.data()), macLength)));
  OPENSSL_cleanse(mac.data(), mac.size());
  return deviceKey;
}

std::string dpsRegisterTopic(std::string_view requestId) {
  return "$dps/registrations/PUT/iotdps-register/?$rid=" + percentEncode(requestId);
}

std::string dpsOperationStatusTopic(std::string_view requestId, std::string_view operationId) {
  return "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=" + percentEncode(requestId) +
         "&operationId=" + percentEncode(operationId);
}

core::Result<std::string> dpsRegisterPayload(std::string_view registrationId,
                                             std::string_view customPayloadJson,
                                             std::string_view modelId) {
  rapidjson::Document payload;
  const bool hasCustom = !customPayloadJson.empty();
  if (hasCustom) {
    if (customPayloadJson.size() > kMaxDpsPayloadBytes) {
      return fail(Errc::InvalidArgument, "payload is " + std::to_string(customPayloadJson.size()) +
                                             " bytes; the limit is " +
                                             std::to_string(kMaxDpsPayloadBytes));
    }
    if (auto ok = detail::parseJson(customPayloadJson, payload, Errc::InvalidArgument); !ok) {
      return fail(Errc::InvalidArgument, "payload is not valid JSON: " + ok.error().message);
    }
    // Custom allocation functions read payload members by name ([py] provisioning_payload is
    // sent as is, but every documented use is an object), and a model id must go into one.
    if (!payload.IsObject()) {
      return fail(Errc::InvalidArgument,
                  std::string("payload must be a JSON object, got ") + detail::typeName(payload));
    }
  } else {
    payload.SetObject();
  }
  if (!modelId.empty()) {
    const auto it = payload.FindMember("modelId");
    if (it == payload.MemberEnd()) {
      payload.AddMember(
          "modelId",
          rapidjson::Value(modelId.data(), static_cast<rapidjson::SizeType>(modelId.size()),
                           payload.GetAllocator()),
          payload.GetAllocator());
    } else if (!it->value.IsString() || stringOf(it->value) != modelId) {
      const std::string named =
          it->value.IsString()
              ? "'" + core::validUtf8(stringOf(it->value), 200) + "'"
              : std::string("a ") + detail::typeName(it->value) + " instead of a string";
      return fail(Errc::InvalidArgument, "payload names modelId " + named +
                                             ", but product_info names '" + std::string(modelId) +
                                             "'");
    }
  }
  rapidjson::StringBuffer buffer;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buffer);
  writer.StartObject();
  writer.Key("registrationId");
  writer.String(registrationId.data(), static_cast<rapidjson::SizeType>(registrationId.size()));
  if (hasCustom || !modelId.empty()) {
    writer.Key("payload");
    payload.Accept(writer);
  }
  writer.EndObject();
  return std::string(buffer.GetString(), buffer.GetSize());
}

bool isDpsResponseTopic(std::string_view topic) {
  return topic.substr(0, kResponsePrefix.size()) == kResponsePrefix;
}

core::Result<DpsResponseTopic> parseDpsResponseTopic(std::string_view topic) {
  auto bad = [](const std::string& why) {
    return fail(Errc::Protocol, "DPS response topic " + why);
  };
  if (!isDpsResponseTopic(topic)) {
    return bad("does not start with $dps/registrations/res/");
  }
  std::string_view rest = topic.substr(kResponsePrefix.size());
  const std::size_t slash = rest.find('/');
  const std::string_view status = rest.substr(0, slash);
  if (status.size() != 3 ||
      !std::all_of(status.begin(), status.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      status[0] == '0') {
    return bad("has no 3-digit status");
  }
  DpsResponseTopic out;
  out.status = (status[0] - '0') * 100 + (status[1] - '0') * 10 + (status[2] - '0');
  if (slash == std::string_view::npos || rest.substr(slash, 2) != "/?") {
    return bad("has no '/?' after the status");
  }
  std::string_view query = rest.substr(slash + 2);
  std::map<std::string, std::string, std::less<>> fields;
  while (!query.empty()) {
    const std::size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) {
      continue;
    }
    const std::size_t eq = pair.find('=');
    auto key = percentDecode(pair.substr(0, eq));
    auto value =
        percentDecode(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1));
    if (!key || !value) {
      return bad("has a malformed %-escape");
    }
    if (!fields.emplace(std::move(*key), std::move(*value)).second) {
      return bad("repeats a key");
    }
  }
  const auto rid = fields.find("$rid");
  if (rid == fields.end() || rid->second.empty()) {
    return bad("has no $rid");
  }
  out.requestId = rid->second;
  if (const auto retry = fields.find("retry-after"); retry != fields.end()) {
    out.retryAfterSeconds = detail::parseDecimal(retry->second, detail::Overflow::Saturate);
    if (!out.retryAfterSeconds) {
      return bad("has a retry-after that is not a number of seconds");
    }
  }
  return out;
}

const char* dpsOperationStatusName(DpsOperationStatus status) noexcept {
  switch (status) {
    case DpsOperationStatus::Unassigned:
      return "unassigned";
    case DpsOperationStatus::Assigning:
      return "assigning";
    case DpsOperationStatus::Assigned:
      return "assigned";
    case DpsOperationStatus::Failed:
      return "failed";
    case DpsOperationStatus::Disabled:
      return "disabled";
  }
  return "unassigned";
}

core::Result<DpsOperation> parseDpsOperation(std::string_view json) {
  rapidjson::Document doc;
  if (auto ok = detail::parseJson(json, doc, Errc::Protocol); !ok) {
    return fail(Errc::Protocol, "DPS response: " + ok.error().message);
  }
  if (!doc.IsObject()) {
    return fail(Errc::Protocol,
                std::string("DPS response is a JSON ") + detail::typeName(doc) + ", not an object");
  }
  DpsOperation out;
  for (const char* name : {"operationId", "status"}) {
    auto value = optionalString(doc, name, "DPS response");
    if (!value) {
      return fail(value.error());
    }
    if (!*value || (*value)->empty()) {
      return fail(Errc::Protocol, std::string("DPS response lacks '") + name + "'");
    }
    if (std::string_view(name) == "operationId") {
      out.operationId = std::move(**value);
      continue;
    }
    const auto status = operationStatusOf(**value);
    if (!status) {
      return fail(Errc::Protocol,
                  "DPS response 'status' is '" + core::validUtf8(**value, 64) + "'");
    }
    out.status = *status;
  }
  if (const auto it = doc.FindMember("registrationState");
      it != doc.MemberEnd() && !it->value.IsNull()) {
    if (!it->value.IsObject()) {
      return fail(Errc::Protocol, std::string("DPS response 'registrationState' is a ") +
                                      detail::typeName(it->value) + ", not an object");
    }
    auto state = parseRegistrationState(it->value);
    if (!state) {
      return fail(state.error());
    }
    out.registrationState = std::move(*state);
  }
  if (out.status == DpsOperationStatus::Assigned) {
    // Both become what we connect to and who we say we are: check them like configured ones.
    if (!out.registrationState) {
      return fail(Errc::Protocol, "DPS assignment has no registrationState");
    }
    if (auto ok = validateHostName(out.registrationState->assignedHub); !ok) {
      return fail(Errc::Protocol, "DPS assignment 'assignedHub': " + ok.error().message);
    }
    if (auto ok = validateDeviceId(out.registrationState->deviceId); !ok) {
      return fail(Errc::Protocol, "DPS assignment 'deviceId': " + ok.error().message);
    }
  }
  return out;
}

DpsServiceError parseDpsServiceError(std::string_view json) {
  DpsServiceError out;
  rapidjson::Document doc;
  if (!detail::parseJson(json, doc, Errc::Protocol) || !doc.IsObject()) {
    return out;
  }
  const std::pair<const char*, std::string*> strings[] = {
      {"trackingId", &out.trackingId},
      {"message", &out.message},
      {"timestampUtc", &out.timestampUtc},
  };
  for (const auto& [name, target] : strings) {
    if (const auto it = doc.FindMember(name); it != doc.MemberEnd() && it->value.IsString()) {
      *target = std::string(stringOf(it->value));
    }
  }
  if (const auto it = doc.FindMember("errorCode"); it != doc.MemberEnd() && it->value.IsUint()) {
    out.errorCode = it->value.GetUint();
  }
  return out;
}

std::string describeDpsError(int status, const DpsServiceError& error) {
  static const std::map<int, const char*> kReasons = {
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {403, "Forbidden"},
      {404, "Not Found"},
      {412, "Precondition Failed"},
      {429, "Too Many Requests"},
      {500, "Internal Server Error"},
      {503, "Service Unavailable"},
  };
  std::string text = std::to_string(status);
  if (const auto it = kReasons.find(status); it != kReasons.end()) {
    text.append(" ").append(it->second);
  }
  std::string details;
  if (error.errorCode != 0) {
    details = "errorCode " + std::to_string(error.errorCode);
  }
  if (!error.message.empty()) {
    details += (details.empty() ? "" : ": ") + core::validUtf8(error.message, 200);
  }
  if (!error.trackingId.empty()) {
    details += (details.empty() ? "" : ", ") + std::string("trackingId ") +
               core::validUtf8(error.trackingId, 100);
  }
  if (!details.empty()) {
    text.append(" (").append(details).append(")");
  }
  return text;
}

std::chrono::seconds dpsRetryDelay(std::optional<std::uint64_t> retryAfterSeconds) {
  if (!retryAfterSeconds) {
    return kDpsDefaultPollingInterval;
  }
  const auto max = static_cast<std::uint64_t>(kDpsMaxRetryAfter.count());
  const auto min = static_cast<std::uint64_t>(kDpsMinRetryAfter.count());
  return std::chrono::seconds(
      static_cast<std::chrono::seconds::rep>(std::clamp(*retryAfterSeconds, min, max)));
}

DpsStatusClass classifyDpsStatus(int status) noexcept {
  switch (status) {
    case 200:
      return DpsStatusClass::Ok;
    case 202:
      return DpsStatusClass::Accepted;
    case 400:
      return DpsStatusClass::BadRequest;
    case 401:
      return DpsStatusClass::Unauthorized;
    case 404:
      return DpsStatusClass::NotFound;
    case 429:
      return DpsStatusClass::Throttled;
    default:
      break;
  }
  // [py]: 300 <= status < 429 ends the registration, status >= 429 is retried. Other 2xx are
  // not in the protocol; treated as an error that ends it.
  return status > 429 ? DpsStatusClass::ServerError : DpsStatusClass::OtherClientError;
}

}  // namespace iothubd::proto
