// SPDX-License-Identifier: MIT
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "iothubd/core/result.hpp"
#include "iothubd/proto/mqtt_identity.hpp"

namespace iothubd::proto {

/// System properties of a device-to-cloud message. Unset = std::nullopt.
struct SystemProperties {
  std::optional<std::string> messageId;        ///< `$.mid`, at most 128 printable ASCII characters
  std::optional<std::string> correlationId;    ///< `$.cid`
  std::optional<std::string> userId;           ///< `$.uid`
  std::optional<std::string> contentType;      ///< `$.ct`
  std::optional<std::string> contentEncoding;  ///< `$.ce`
  std::optional<std::string> expiryTimeUtc;    ///< `$.exp`
  std::optional<std::string> outputName;       ///< `$.on`, modules only (section 10)
  std::optional<std::string> componentName;    ///< `$.sub`
  std::optional<std::string> creationTimeUtc;  ///< application property `iothub-creation-time-utc`
};

/// D-Bus names of the system properties (dbus-contract-notes "System-property keys").
inline constexpr std::string_view kBusMessageId = "message-id";
inline constexpr std::string_view kBusCorrelationId = "correlation-id";
inline constexpr std::string_view kBusUserId = "user-id";
inline constexpr std::string_view kBusContentType = "content-type";
inline constexpr std::string_view kBusContentEncoding = "content-encoding";
inline constexpr std::string_view kBusExpiryTimeUtc = "expiry-time-utc";
inline constexpr std::string_view kBusOutputName = "output-name";
inline constexpr std::string_view kBusComponentName = "component-name";
inline constexpr std::string_view kBusCreationTimeUtc = "creation-time-utc";
/// C2D-only bus names (`$.to`, `iothub-ack`).
inline constexpr std::string_view kBusTo = "to";
inline constexpr std::string_view kBusAck = "ack";

/// The application property that carries the creation time on MQTT (protocol doc section 4).
inline constexpr std::string_view kCreationTimeProperty = "iothub-creation-time-utc";

/// Longest message id the hub accepts (protocol doc section 4, `$.mid`).
inline constexpr std::size_t kMaxMessageIdLength = 128;

/// Builds SystemProperties from the D-Bus map, keyed by the bus names above.
/// Errors (Errc::InvalidArgument, naming the key): a key outside the list ("unknown system property
/// 'foo'"), an empty value (almost certainly a caller bug; leave the key out instead), a message-id
/// longer than 128 bytes or with characters outside printable ASCII.
[[nodiscard]] core::Result<SystemProperties> systemPropertiesFromBus(
    const std::map<std::string, std::string>& busProps);

/// A device-to-cloud message ready for the topic builder.
struct OutgoingMessage {
  std::string body;
  std::map<std::string, std::string> properties;  ///< custom (application) properties
  SystemProperties system;
};

/// Custom property keys must be non-empty, and keys starting with `$` or `iothub-` (any case; the
/// hub's own application properties use that prefix) are reserved.
/// Errors: Errc::InvalidArgument naming the key.
[[nodiscard]] core::Result<void> validateCustomProperties(
    const std::map<std::string, std::string>& props);

/// The telemetry topic (protocol doc sections 4 and 10): `devices/{dev}/messages/events/` or
/// `devices/{dev}/modules/{mod}/messages/events/`, immediately followed by the property bag: system
/// properties first as `%24.xx=enc(value)` in the order `$.on,$.mid,$.cid,$.uid,$.ct,$.ce,$.exp,
/// $.sub` ([py] order), then `iothub-creation-time-utc=enc(v)`, then custom properties in key order
/// as `enc(key)=enc(value)`, joined with `&`. Ids are never encoded. Expects validated input
/// (validateCustomProperties); does not check the size (hubMessageSize).
[[nodiscard]] std::string telemetryTopic(std::string_view deviceId, std::string_view moduleId,
                                         const OutgoingMessage& message);
/// The part of the telemetry topic before the property bag: `devices/{dev}/messages/events/` or
/// `devices/{dev}/modules/{mod}/messages/events/` (sections 4 and 10).
[[nodiscard]] std::string telemetryTopicPrefix(std::string_view deviceId,
                                               std::string_view moduleId);

/// The hub's message size limit: 256 KB (protocol doc section 4).
inline constexpr std::size_t kMaxTelemetryBytes = 262144;

/// The size the hub counts against kMaxTelemetryBytes (protocol doc section 4): body + values of
/// the system properties + names and values of the custom properties, where the creation time
/// counts as the custom property `iothub-creation-time-utc` (name and value). Unencoded bytes.
[[nodiscard]] std::size_t hubMessageSize(const OutgoingMessage& message);

/// Bounds on a message's properties (architecture doc 6.4), each over-limit MessageTooLarge. The
/// property bag travels in the MQTT topic, which holds at most 65 535 bytes (MQTT 3.1.1 1.5.3;
/// libmosquitto refuses a longer one): a message whose bag does not fit could be stored but
/// never sent, and would hold up everything queued behind it.
inline constexpr std::size_t kMaxMessageProperties = 256;  ///< custom ones (system: a fixed set)
inline constexpr std::size_t kMaxPropertyNameLength = 256;
inline constexpr std::size_t kMaxPropertyValueLength = 16 * 1024;  ///< custom and system values
/// The percent-encoded bag, so that even the longest telemetry topic prefix
/// (`devices/{128}/modules/{128}/messages/events/`) leaves the topic within 65 535 bytes.
inline constexpr std::size_t kMaxPropertyBagBytes =
    65535 - (std::string_view("devices/").size() + kMaxIdentityIdLength +
             std::string_view("/modules/").size() + kMaxIdentityIdLength +
             std::string_view("/messages/events/").size());

/// Everything a device-to-cloud message must satisfy before it is accepted, in one place
/// (checkOutgoingMessage() runs it where a message enters: the D-Bus methods that take messages,
/// and the session's own sendTelemetry). Checks, cheapest first so that the count bounds the work
/// of the rest:
/// - at most kMaxMessageProperties custom properties;
/// - validateCustomProperties (Errc::InvalidArgument);
/// - names at most kMaxPropertyNameLength, values at most kMaxPropertyValueLength bytes;
/// - hubMessageSize at most kMaxTelemetryBytes;
/// - the percent-encoded property bag at most kMaxPropertyBagBytes.
/// Errors: Errc::InvalidArgument as validateCustomProperties; Errc::MessageTooLarge naming the
/// limit ("message has 300 custom properties; the limit is 256", "custom property
/// name 'x...' is longer than 256 bytes", "property 'x' has a value longer than 16384 bytes",
/// "message is N bytes as IoT Hub counts it; the limit is 262144", "the properties take N bytes
/// in the MQTT topic (percent-encoded); the limit is 65245"). Names in messages are cut to 32
/// bytes.
[[nodiscard]] core::Result<void> validateOutgoingMessage(const OutgoingMessage& message);

/// A device-to-cloud message that passed every check, with its property bag percent-encoded:
/// what travels from where a message enters (the D-Bus layer) through the telemetry pipeline and
/// the outbox to the session, so that nothing on the way checks or encodes it again (issue 13).
/// Only checkOutgoingMessage() and restoreCheckedMessage() make one. Moved, not copied, on the
/// hot path.
class CheckedMessage {
 public:
  [[nodiscard]] const std::string& body() const noexcept { return body_; }
  /// `$.mid`; always set and non-empty.
  [[nodiscard]] const std::string& messageId() const noexcept { return *system_.messageId; }
  [[nodiscard]] const SystemProperties& system() const noexcept { return system_; }
  /// The whole property bag as it follows the topic prefix (telemetryTopic's order): system
  /// properties, the creation time, then the custom properties.
  [[nodiscard]] const std::string& propertyBag() const noexcept { return bag_; }
  /// The custom properties' part of propertyBag(), `enc(k)=enc(v)&...` in key order (what the
  /// outbox stores beside the system properties' own columns).
  [[nodiscard]] std::string_view customPropertyBag() const noexcept {
    return std::string_view(bag_).substr(customOffset_);
  }
  /// hubMessageSize() of the message.
  [[nodiscard]] std::size_t hubBytes() const noexcept { return hubBytes_; }
  /// `expiry-time-utc` as Unix seconds (parseUtcTime), if the message has one.
  [[nodiscard]] std::optional<std::uint64_t> expiresAt() const noexcept { return expiresAt_; }
  /// telemetryTopicPrefix() + propertyBag(): the topic to publish on.
  [[nodiscard]] std::string topic(std::string_view prefix) const;

 private:
  friend core::Result<CheckedMessage> checkOutgoingMessage(OutgoingMessage message);
  friend core::Result<CheckedMessage> restoreCheckedMessage(std::string body,
                                                            SystemProperties system,
                                                            std::string_view customPropertyBag,
                                                            std::size_t hubBytes);
  CheckedMessage() = default;

  std::string body_;
  SystemProperties system_;
  std::string bag_;
  std::size_t customOffset_ = 0;
  std::size_t hubBytes_ = 0;
  std::optional<std::uint64_t> expiresAt_;
};

/// validateOutgoingMessage(), plus: the message id must be set (the D-Bus layer gives one to a
/// message without), and `expiry-time-utc`, if set, must parse (parseUtcTime). Encodes the
/// property bag once. Errors: as validateOutgoingMessage; Errc::InvalidArgument for a missing id
/// or an unreadable expiry time.
[[nodiscard]] core::Result<CheckedMessage> checkOutgoingMessage(OutgoingMessage message);

/// A message checked before and kept since (the outbox's row): the system properties as they
/// were, the custom properties' bag as customPropertyBag() returned it, the size as hubBytes()
/// returned it. Only the encoding of the system properties is redone. Errors (Errc::Protocol, the
/// row cannot be sent as it is): no message id, a bag that is not what appendBagEntry writes
/// (isEncodedPropertyBag), a property bag over kMaxPropertyBagBytes, an unreadable expiry time.
[[nodiscard]] core::Result<CheckedMessage> restoreCheckedMessage(std::string body,
                                                                 SystemProperties system,
                                                                 std::string_view customPropertyBag,
                                                                 std::size_t hubBytes);

}  // namespace iothubd::proto
