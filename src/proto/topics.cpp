// SPDX-License-Identifier: MIT
#include "iothubd/proto/topics.hpp"

#include <limits>

#include "iothubd/proto/percent_encoding.hpp"
#include "iothubd/proto/property_bag.hpp"
#include "iothubd/proto/telemetry.hpp"

namespace iothubd::proto {

namespace {

using core::Errc;

constexpr std::string_view kMethodPostPrefix = "$iothub/methods/POST/";
constexpr std::string_view kTwinResPrefix = "$iothub/twin/res/";
constexpr std::string_view kTwinDesiredPrefix = "$iothub/twin/PATCH/properties/desired/";

bool startsWith(std::string_view text, std::string_view prefix) {
  return text.substr(0, prefix.size()) == prefix;
}

std::string c2dPrefix(std::string_view deviceId) {
  return "devices/" + std::string(deviceId) + "/messages/devicebound/";
}

core::Result<std::uint64_t> parseUint64(std::string_view text) {
  if (text.empty()) {
    return core::fail(Errc::Protocol, "empty number");
  }
  std::uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') {
      return core::fail(Errc::Protocol, "not a decimal number");
    }
    const auto digit = static_cast<std::uint64_t>(c - '0');
    if (value > (std::numeric_limits<std::uint64_t>::max() - digit) / 10) {
      return core::fail(Errc::Protocol, "number out of range");
    }
    value = value * 10 + digit;
  }
  return value;
}

// The query of a `$iothub/...` topic: the part after "/?". [py] strips a leading `$` from each key
// (section 6), so `$rid` and `rid` are the same key.
struct Query {
  std::optional<std::string> rid;
  std::optional<std::string> version;
};

core::Result<Query> parseQuery(std::string_view topic, std::string_view what) {
  const std::size_t mark = topic.find("/?");
  if (mark == std::string_view::npos) {
    return core::fail(Errc::Protocol, std::string(what) + " topic has no '/?' query");
  }
  auto entries = parsePropertyBag(topic.substr(mark + 2));
  if (!entries) {
    return core::fail(Errc::Protocol,
                      std::string(what) + " topic query: " + entries.error().message);
  }
  Query query;
  for (auto& entry : *entries) {
    std::string_view key = entry.key;
    if (!key.empty() && key.front() == '$') {
      key.remove_prefix(1);
    }
    if (key == "rid") {
      query.rid = std::move(entry.value);
    } else if (key == "version") {
      query.version = std::move(entry.value);
    }
  }
  return query;
}

// Maps the wire keys of a C2D/input bag to bus names (dbus-contract-notes "Messages").
std::string_view busNameOf(std::string_view wireKey) {
  struct Mapping {
    std::string_view wire, bus;
  };
  static constexpr Mapping kMappings[] = {
      {"$.mid", kBusMessageId},
      {"$.cid", kBusCorrelationId},
      {"$.uid", kBusUserId},
      {"$.ct", kBusContentType},
      {"$.ce", kBusContentEncoding},
      {"$.exp", kBusExpiryTimeUtc},
      {"$.to", kBusTo},
      {"$.on", kBusOutputName},
      {"$.sub", kBusComponentName},
      {"$.ctime", kBusCreationTimeUtc},
      {kCreationTimeProperty, kBusCreationTimeUtc},
      {"iothub-ack", kBusAck},
  };
  for (const auto& m : kMappings) {
    if (m.wire == wireKey) {
      return m.bus;
    }
  }
  return {};
}

core::Result<C2dProperties> parseMessageBag(std::string_view bag) {
  auto entries = parsePropertyBag(bag);
  if (!entries) {
    return core::fail(entries.error());
  }
  C2dProperties result;
  for (auto& entry : *entries) {
    if (const auto bus = busNameOf(entry.key); !bus.empty()) {
      result.systemProperties.insert_or_assign(std::string(bus), std::move(entry.value));
    } else if (startsWith(entry.key, "$.") || startsWith(entry.key, "iothub-")) {
      // Unknown system keys keep their wire name; they never mix with application properties.
      result.systemProperties.insert_or_assign(std::move(entry.key), std::move(entry.value));
    } else {
      result.properties.insert_or_assign(std::move(entry.key), std::move(entry.value));
    }
  }
  return result;
}

}  // namespace

std::string c2dSubscribeTopic(std::string_view deviceId) {
  return c2dPrefix(deviceId) + "#";
}

std::string moduleInputsSubscribeTopic(std::string_view deviceId, std::string_view moduleId) {
  return "devices/" + std::string(deviceId) + "/modules/" + std::string(moduleId) + "/inputs/#";
}

std::string methodResponseTopic(int status, std::string_view requestId) {
  return "$iothub/methods/res/" + std::to_string(status) + "/?$rid=" + percentEncode(requestId);
}

std::string twinGetTopic(std::string_view requestId) {
  return "$iothub/twin/GET/?$rid=" + percentEncode(requestId);
}

std::string twinPatchReportedTopic(std::string_view requestId) {
  return "$iothub/twin/PATCH/properties/reported/?$rid=" + percentEncode(requestId);
}

InboundKind classifyTopic(std::string_view topic, std::string_view deviceId) {
  if (startsWith(topic, c2dPrefix(deviceId))) {
    return InboundKind::C2d;
  }
  if (startsWith(topic, kMethodPostPrefix)) {
    return InboundKind::MethodRequest;
  }
  if (startsWith(topic, kTwinResPrefix)) {
    return InboundKind::TwinResponse;
  }
  if (startsWith(topic, kTwinDesiredPrefix)) {
    return InboundKind::TwinDesiredPatch;
  }
  return InboundKind::Unknown;
}

core::Result<C2dProperties> parseC2dTopic(std::string_view topic, std::string_view deviceId) {
  const std::string prefix = c2dPrefix(deviceId);
  if (!startsWith(topic, prefix)) {
    return core::fail(Errc::Protocol, "not a C2D topic of device '" + std::string(deviceId) + "'");
  }
  // The whole rest is the bag: values are encoded, so a raw '/' cannot come from a conforming
  // hub, and keeping it is better than silently dropping what follows (as [py]'s split does).
  auto bag = parseMessageBag(topic.substr(prefix.size()));
  if (!bag) {
    return core::fail(Errc::Protocol, "C2D topic: " + bag.error().message);
  }
  return bag;
}

core::Result<ModuleInputMessage> parseModuleInputTopic(std::string_view topic,
                                                       std::string_view deviceId,
                                                       std::string_view moduleId) {
  const std::string prefix =
      "devices/" + std::string(deviceId) + "/modules/" + std::string(moduleId) + "/inputs/";
  if (!startsWith(topic, prefix)) {
    return core::fail(Errc::Protocol, "not an input topic of module '" + std::string(deviceId) +
                                          "/" + std::string(moduleId) + "'");
  }
  const std::string_view rest = topic.substr(prefix.size());
  const std::size_t slash = rest.find('/');
  if (slash == std::string_view::npos) {
    return core::fail(Errc::Protocol, "input topic has no '/' after the input name");
  }
  auto name = percentDecode(rest.substr(0, slash));
  if (!name) {
    return core::fail(Errc::Protocol, "input topic name has a " + name.error().message);
  }
  if (name->empty()) {
    return core::fail(Errc::Protocol, "input topic has an empty input name");
  }
  auto bag = parseMessageBag(rest.substr(slash + 1));
  if (!bag) {
    return core::fail(Errc::Protocol, "input topic: " + bag.error().message);
  }
  return ModuleInputMessage{std::move(*name), std::move(*bag)};
}

core::Result<MethodRequest> parseMethodRequestTopic(std::string_view topic) {
  if (!startsWith(topic, kMethodPostPrefix)) {
    return core::fail(Errc::Protocol, "not a method request topic");
  }
  // $iothub/methods/POST/{name}/?$rid={rid}: the name is the segment before "/?" (section 6).
  const std::string_view rest = topic.substr(kMethodPostPrefix.size());
  const std::size_t mark = rest.find("/?");
  if (mark == std::string_view::npos) {
    return core::fail(Errc::Protocol, "method request topic has no '/?' query");
  }
  const std::string_view rawName = rest.substr(0, mark);
  if (rawName.find('/') != std::string_view::npos) {
    return core::fail(Errc::Protocol, "method request topic has extra '/' in the method name");
  }
  auto name = percentDecode(rawName);
  if (!name) {
    return core::fail(Errc::Protocol, "method name has a " + name.error().message);
  }
  if (name->empty()) {
    return core::fail(Errc::Protocol, "method request topic has an empty method name");
  }
  auto query = parseQuery(rest.substr(mark), "method request");
  if (!query) {
    return core::fail(query.error());
  }
  if (!query->rid || query->rid->empty()) {
    return core::fail(Errc::Protocol, "method request topic has no $rid");
  }
  return MethodRequest{std::move(*name), std::move(*query->rid)};
}

core::Result<TwinResponse> parseTwinResponseTopic(std::string_view topic) {
  if (!startsWith(topic, kTwinResPrefix)) {
    return core::fail(Errc::Protocol, "not a twin response topic");
  }
  // $iothub/twin/res/{status}/?$rid={rid}[&$version={v}] (section 7).
  const std::string_view rest = topic.substr(kTwinResPrefix.size());
  const std::size_t mark = rest.find("/?");
  if (mark == std::string_view::npos) {
    return core::fail(Errc::Protocol, "twin response topic has no '/?' query");
  }
  const std::string_view statusText = rest.substr(0, mark);
  auto status = parseUint64(statusText);
  if (!status || statusText.size() != 3 || *status < 100) {
    return core::fail(Errc::Protocol, "twin response topic has an invalid status '" +
                                          std::string(statusText) + "'");
  }
  auto query = parseQuery(rest.substr(mark), "twin response");
  if (!query) {
    return core::fail(query.error());
  }
  if (!query->rid || query->rid->empty()) {
    return core::fail(Errc::Protocol, "twin response topic has no $rid");
  }
  TwinResponse response;
  response.status = static_cast<int>(*status);
  response.requestId = std::move(*query->rid);
  if (query->version) {
    auto version = parseUint64(*query->version);
    if (!version) {
      return core::fail(Errc::Protocol, "twin response topic $version: " + version.error().message);
    }
    response.version = *version;
  }
  return response;
}

core::Result<std::uint64_t> parseDesiredPatchTopic(std::string_view topic) {
  if (!startsWith(topic, kTwinDesiredPrefix)) {
    return core::fail(Errc::Protocol, "not a desired-properties patch topic");
  }
  // $iothub/twin/PATCH/properties/desired/?$version={v} (section 7); the prefix ends in '/'.
  if (topic.substr(kTwinDesiredPrefix.size(), 1) != "?") {
    return core::fail(Errc::Protocol, "desired patch topic has no '/?' query after 'desired'");
  }
  auto query = parseQuery(topic.substr(kTwinDesiredPrefix.size() - 1), "desired patch");
  if (!query) {
    return core::fail(query.error());
  }
  if (!query->version) {
    return core::fail(Errc::Protocol, "desired patch topic has no $version");
  }
  auto version = parseUint64(*query->version);
  if (!version) {
    return core::fail(Errc::Protocol, "desired patch topic $version: " + version.error().message);
  }
  return version;
}

}  // namespace iothubd::proto
