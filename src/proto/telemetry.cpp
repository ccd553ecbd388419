// SPDX-License-Identifier: MIT
#include "iothubd/proto/telemetry.hpp"

#include <array>

#include "iothubd/core/utf8.hpp"
#include "iothubd/proto/percent_encoding.hpp"
#include "iothubd/proto/property_bag.hpp"
#include "iothubd/proto/utc_time.hpp"

namespace iothubd::proto {

namespace {

using core::Errc;
using Field = std::optional<std::string> SystemProperties::*;

struct SystemKey {
  std::string_view busName;
  std::string_view wireName;  ///< `$.xx` key, empty for the creation time (an app property)
  Field field;
};

// Topic order is [py]'s: $.on,$.mid,$.cid,$.uid,$.ct,$.ce,$.exp, then $.sub (not in [py]); the
// creation time is an application property written after them (protocol doc section 4).
constexpr std::array<SystemKey, 9> kSystemKeys = {{
    {kBusOutputName, "$.on", &SystemProperties::outputName},
    {kBusMessageId, "$.mid", &SystemProperties::messageId},
    {kBusCorrelationId, "$.cid", &SystemProperties::correlationId},
    {kBusUserId, "$.uid", &SystemProperties::userId},
    {kBusContentType, "$.ct", &SystemProperties::contentType},
    {kBusContentEncoding, "$.ce", &SystemProperties::contentEncoding},
    {kBusExpiryTimeUtc, "$.exp", &SystemProperties::expiryTimeUtc},
    {kBusComponentName, "$.sub", &SystemProperties::componentName},
    {kBusCreationTimeUtc, "", &SystemProperties::creationTimeUtc},
}};

bool startsWithIgnoreAsciiCase(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) {
    return false;
  }
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    char c = text[i];
    if (c >= 'A' && c <= 'Z') {
      c = static_cast<char>(c - 'A' + 'a');
    }
    if (c != prefix[i]) {
      return false;
    }
  }
  return true;
}

/// A name for an error message: at most 32 bytes of it, cut at a character boundary, so that a
/// huge name cannot make a huge error (or log line) nor an invalid UTF-8 one.
std::string shown(std::string_view name) {
  return core::validUtf8(name, 32);
}

/// Appends the system properties' entries to `out`, whose bag starts at `bagStart` (a `&` goes
/// before each entry but the bag's first).
void appendSystemBag(std::string& out, const SystemProperties& system, std::size_t bagStart) {
  for (const auto& key : kSystemKeys) {
    const auto& value = system.*(key.field);
    if (!value) {
      continue;
    }
    if (out.size() > bagStart) {
      out.push_back('&');
    }
    // enc("$.mid") is "%24.mid", the form every SDK sends.
    appendPercentEncoded(out, key.wireName.empty() ? kCreationTimeProperty : key.wireName);
    out.push_back('=');
    appendPercentEncoded(out, *value);
  }
}

/// Appends the custom properties' entries, as appendSystemBag().
void appendCustomBag(std::string& out, const std::map<std::string, std::string>& properties,
                     std::size_t bagStart) {
  for (const auto& [name, value] : properties) {
    if (out.size() > bagStart) {
      out.push_back('&');
    }
    appendPercentEncoded(out, name);
    out.push_back('=');
    appendPercentEncoded(out, value);
  }
}

core::Result<void> checkBagSize(std::size_t bag) {
  if (bag > kMaxPropertyBagBytes) {
    return core::fail(Errc::MessageTooLarge,
                      "the properties take " + std::to_string(bag) +
                          " bytes in the MQTT topic (percent-encoded); the limit is " +
                          std::to_string(kMaxPropertyBagBytes));
  }
  return {};
}

}  // namespace

core::Result<SystemProperties> systemPropertiesFromBus(
    const std::map<std::string, std::string>& busProps) {
  SystemProperties system;
  for (const auto& [name, value] : busProps) {
    const SystemKey* key = nullptr;
    for (const auto& candidate : kSystemKeys) {
      if (candidate.busName == name) {
        key = &candidate;
        break;
      }
    }
    if (key == nullptr) {
      return core::fail(Errc::InvalidArgument, "unknown system property '" + shown(name) + "'");
    }
    if (value.empty()) {
      return core::fail(Errc::InvalidArgument,
                        "system property '" + name + "' is empty (leave it out instead)");
    }
    system.*(key->field) = value;
  }
  // $.mid: at most 128 ASCII characters (protocol doc section 4).
  if (const auto& mid = system.messageId) {
    if (mid->size() > kMaxMessageIdLength) {
      return core::fail(Errc::InvalidArgument, "system property 'message-id' is longer than " +
                                                   std::to_string(kMaxMessageIdLength) +
                                                   " characters");
    }
    for (char c : *mid) {
      if (c < 0x20 || c > 0x7E) {
        return core::fail(Errc::InvalidArgument,
                          "system property 'message-id' contains a character outside printable "
                          "ASCII");
      }
    }
  }
  return system;
}

core::Result<void> validateCustomProperties(const std::map<std::string, std::string>& props) {
  for (const auto& [name, value] : props) {
    if (name.empty()) {
      return core::fail(Errc::InvalidArgument, "custom property with an empty name");
    }
    // `$` keys are system properties on the wire; `iothub-` names belong to the hub (e.g.
    // iothub-creation-time-utc, iothub-MessageType), so an app could spoof them.
    if (name.front() == '$' || startsWithIgnoreAsciiCase(name, "iothub-")) {
      return core::fail(Errc::InvalidArgument, "custom property '" + shown(name) +
                                                   "' uses a reserved prefix ('$' or 'iothub-')");
    }
  }
  return {};
}

std::string telemetryTopicPrefix(std::string_view deviceId, std::string_view moduleId) {
  // Ids are never encoded (section 4); the bag follows "events/" directly.
  std::string prefix("devices/");
  prefix.append(deviceId);
  if (!moduleId.empty()) {
    prefix.append("/modules/").append(moduleId);
  }
  prefix.append("/messages/events/");
  return prefix;
}

std::string telemetryTopic(std::string_view deviceId, std::string_view moduleId,
                           const OutgoingMessage& message) {
  std::string topic = telemetryTopicPrefix(deviceId, moduleId);
  const std::size_t bagStart = topic.size();
  appendSystemBag(topic, message.system, bagStart);
  appendCustomBag(topic, message.properties, bagStart);
  return topic;
}

std::size_t hubMessageSize(const OutgoingMessage& message) {
  std::size_t size = message.body.size();
  for (const auto& key : kSystemKeys) {
    if (const auto& value = message.system.*(key.field)) {
      // The creation time travels as an application property, so its name counts too.
      size += value->size() + (key.wireName.empty() ? kCreationTimeProperty.size() : 0);
    }
  }
  for (const auto& [name, value] : message.properties) {
    size += name.size() + value.size();
  }
  return size;
}

namespace {

/// The checks of validateOutgoingMessage() that need no encoding, cheapest first.
core::Result<void> checkFields(const OutgoingMessage& message) {
  // System properties are a fixed set; the count bounds the work of everything below.
  if (const std::size_t count = message.properties.size(); count > kMaxMessageProperties) {
    return core::fail(Errc::MessageTooLarge, "message has " + std::to_string(count) +
                                                 " custom properties; the limit is " +
                                                 std::to_string(kMaxMessageProperties));
  }
  if (auto valid = validateCustomProperties(message.properties); !valid) {
    return valid;
  }
  for (const auto& key : kSystemKeys) {
    if (const auto& value = message.system.*(key.field);
        value && value->size() > kMaxPropertyValueLength) {
      return core::fail(Errc::MessageTooLarge, "system property '" + std::string(key.busName) +
                                                   "' has a value longer than " +
                                                   std::to_string(kMaxPropertyValueLength) +
                                                   " bytes");
    }
  }
  for (const auto& [name, value] : message.properties) {
    if (name.size() > kMaxPropertyNameLength) {
      return core::fail(Errc::MessageTooLarge,
                        "custom property name '" + shown(name) + "' is longer than " +
                            std::to_string(kMaxPropertyNameLength) + " bytes");
    }
    if (value.size() > kMaxPropertyValueLength) {
      return core::fail(Errc::MessageTooLarge,
                        "custom property '" + shown(name) + "' has a value longer than " +
                            std::to_string(kMaxPropertyValueLength) + " bytes");
    }
  }
  // Protocol doc 4: the hub counts body + system property values + custom names and values.
  if (const std::size_t size = hubMessageSize(message); size > kMaxTelemetryBytes) {
    return core::fail(Errc::MessageTooLarge, "message is " + std::to_string(size) +
                                                 " bytes as IoT Hub counts it; the limit is " +
                                                 std::to_string(kMaxTelemetryBytes));
  }
  return {};
}

}  // namespace

core::Result<void> validateOutgoingMessage(const OutgoingMessage& message) {
  if (auto valid = checkFields(message); !valid) {
    return valid;
  }
  // Within 256 KiB unencoded, the encoded bag (at most three times that) is cheap to build.
  std::string bag;
  appendSystemBag(bag, message.system, 0);
  appendCustomBag(bag, message.properties, 0);
  return checkBagSize(bag.size());
}

std::string CheckedMessage::topic(std::string_view prefix) const {
  std::string topic;
  topic.reserve(prefix.size() + bag_.size());
  topic.append(prefix).append(bag_);
  return topic;
}

namespace {

/// `expiry-time-utc` as Unix seconds; nullopt if unset. Errors: InvalidArgument if unreadable.
core::Result<std::optional<std::uint64_t>> expiryOf(const SystemProperties& system) {
  if (!system.expiryTimeUtc) {
    return std::optional<std::uint64_t>();
  }
  auto parsed = parseUtcTime(*system.expiryTimeUtc);
  if (!parsed) {
    return core::fail(Errc::InvalidArgument, "system property 'expiry-time-utc' ('" +
                                                 shown(*system.expiryTimeUtc) +
                                                 "') is not an ISO 8601 UTC time");
  }
  return parsed;
}

}  // namespace

core::Result<CheckedMessage> checkOutgoingMessage(OutgoingMessage message) {
  if (!message.system.messageId || message.system.messageId->empty()) {
    return core::fail(Errc::InvalidArgument, "a message needs a message id");
  }
  if (auto valid = checkFields(message); !valid) {
    return core::fail(valid.error());
  }
  auto expiry = expiryOf(message.system);
  if (!expiry) {
    return core::fail(expiry.error());
  }
  CheckedMessage checked;
  checked.hubBytes_ = hubMessageSize(message);
  // Mostly unreserved bytes: the encoded bag is about as long as names and values, plus "=&".
  checked.bag_.reserve(checked.hubBytes_ - message.body.size() +
                       4 * (kSystemKeys.size() + message.properties.size()));
  appendSystemBag(checked.bag_, message.system, 0);
  const std::size_t systemEnd = checked.bag_.size();
  appendCustomBag(checked.bag_, message.properties, 0);
  checked.customOffset_ = message.properties.empty() ? checked.bag_.size()
                          : systemEnd == 0           ? 0
                                                     : systemEnd + 1;
  if (auto size = checkBagSize(checked.bag_.size()); !size) {
    return core::fail(size.error());
  }
  checked.body_ = std::move(message.body);
  checked.system_ = std::move(message.system);
  checked.expiresAt_ = *expiry;
  return checked;
}

core::Result<CheckedMessage> restoreCheckedMessage(std::string body, SystemProperties system,
                                                   std::string_view customPropertyBag,
                                                   std::size_t hubBytes) {
  if (!system.messageId || system.messageId->empty()) {
    return core::fail(Errc::Protocol, "the message has no id");
  }
  if (!isEncodedPropertyBag(customPropertyBag)) {
    return core::fail(Errc::Protocol, "the custom properties are not an encoded property bag");
  }
  auto expiry = expiryOf(system);
  if (!expiry) {
    return core::fail(Errc::Protocol, expiry.error().message);
  }
  CheckedMessage checked;
  appendSystemBag(checked.bag_, system, 0);
  if (!customPropertyBag.empty() && !checked.bag_.empty()) {
    checked.bag_.push_back('&');
  }
  checked.customOffset_ = checked.bag_.size();
  checked.bag_.append(customPropertyBag);
  if (auto size = checkBagSize(checked.bag_.size()); !size) {
    return core::fail(Errc::Protocol, size.error().message);
  }
  checked.body_ = std::move(body);
  checked.system_ = std::move(system);
  checked.hubBytes_ = hubBytes;
  checked.expiresAt_ = *expiry;
  return checked;
}

}  // namespace iothubd::proto
