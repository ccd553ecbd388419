// SPDX-License-Identifier: MIT
// The Device Provisioning Service (DPS) device protocol over MQTT, as the official SDKs speak it
// ([py] azure/iot/device/provisioning, [c] provisioning_client/src/prov_transport_mqtt_common.c
// and prov_device_ll_client.c, [embedded-c] az_iot_provisioning_client.c, [node]
// provisioning/transport/mqtt; Microsoft Learn "Communicate with DPS using the MQTT protocol").
// Pure builders and parsers: the connection, the timers and the polling live in src/provisioning.
//
// One registration, on one MQTT connection to the global endpoint (port 8883, or 443 over
// WebSockets with path /$iothub/websocket):
//   CONNECT    ClientId {registrationId}
//              Username {idScope}/registrations/{registrationId}/api-version=…&ClientVersion=…
//              Password SharedAccessSignature sr=enc({idScope}/registrations/{registrationId})
//                       &sig=…&se=…&skn=registration   (none for X.509: the TLS client cert)
//   SUBSCRIBE  $dps/registrations/res/#
//   PUBLISH    $dps/registrations/PUT/iotdps-register/?$rid={rid}
//              {"registrationId":"…","payload":{…}}
//   ← $dps/registrations/res/202/?$rid={rid}&retry-after=3
//              {"operationId":"4.…","status":"assigning"}
//   PUBLISH    $dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}
//   ← $dps/registrations/res/200/?$rid={rid}
//              {"operationId":"…","status":"assigned","registrationState":{"assignedHub":"…",
//               "deviceId":"…","status":"assigned","substatus":"initialAssignment",…}}
// Errors come on the same topic with their status: {"errorCode":401002,"trackingId":"…",
// "message":"…","timestampUtc":"…"}.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "iothubd/core/result.hpp"
#include "iothubd/core/secret.hpp"

namespace iothubd::proto {

/// api-version in the DPS user name. [c] sends 2021-06-01 (prov_client_const.h), [py] and the
/// MQTT article 2019-03-31, [embedded-c] 2021-11-01-preview; 2021-06-01 is the newest GA version
/// and accepts everything we send (custom payload, model id in it).
inline constexpr std::string_view kDpsApiVersion = "2021-06-01";
/// The public global device endpoint (Azure portal: "Global device endpoint").
inline constexpr std::string_view kDpsGlobalEndpoint = "global.azure-devices-provisioning.net";
/// The SAS policy name DPS requires (`skn`), [c] KEY_NAME_VALUE and the MQTT article.
inline constexpr std::string_view kDpsSasKeyName = "registration";
/// The only topic filter DPS serves; the SDKs subscribe with QoS 1.
inline constexpr std::string_view kDpsResponseSubscribeTopic = "$dps/registrations/res/#";
/// Wait before polling when DPS sent no retry-after: [py] DEFAULT_POLLING_INTERVAL and [node]
/// defaultPollingInterval (2 s).
inline constexpr std::chrono::seconds kDpsDefaultPollingInterval{2};
/// Bounds on a retry-after DPS sends: [c] PROV_GET_THROTTLE_TIME (1 s) and
/// MAX_PROV_GET_THROTTLE_TIME (300 s). [c] falls back to 1 s outside them; we clamp instead, so
/// that a throttling service asking for ten minutes gets the longest wait, not the shortest.
inline constexpr std::chrono::seconds kDpsMinRetryAfter{1};
inline constexpr std::chrono::seconds kDpsMaxRetryAfter{300};
/// Longest registration id DPS accepts.
inline constexpr std::size_t kMaxRegistrationIdLength = 128;
/// Largest custom payload we send with a registration (it rides in one MQTT publish; DPS hands it
/// to a custom allocation function, and nothing that size is a sensible allocation hint).
inline constexpr std::size_t kMaxDpsPayloadBytes = 64 * 1024;

/// Checks a registration id against DPS's rules: 1..128 characters from `a-z A-Z 0-9 - . _ :`,
/// the last one alphanumeric or `-` (Microsoft Learn, DPS concepts, "Registration ID"). It goes
/// unencoded into the MQTT client id and user name and, for group enrollments, into the key
/// derivation. Errors: Errc::InvalidArgument naming the character and its offset.
[[nodiscard]] core::Result<void> validateRegistrationId(std::string_view registrationId);

/// Checks an ID scope: 1..64 ASCII letters and digits (the service issues `0ne` + 8 hex digits,
/// e.g. 0ne00012345). Errors: Errc::InvalidArgument naming the character and its offset.
[[nodiscard]] core::Result<void> validateIdScope(std::string_view idScope);

/// `{idScope}/registrations/{registrationId}/api-version=2021-06-01&ClientVersion={enc(ua)}`:
/// no `?` (unlike the hub's user name), the user agent encoded as [py] urlencode(quote) does.
[[nodiscard]] std::string dpsUsername(std::string_view idScope, std::string_view registrationId,
                                      std::string_view userAgent);

/// `{idScope}/registrations/{registrationId}`: the resource a DPS SAS token is scoped to.
[[nodiscard]] std::string dpsSasResourceUri(std::string_view idScope,
                                            std::string_view registrationId);

/// `SharedAccessSignature sr=enc({idScope}/registrations/{registrationId})&sig=…&se={expiry}
/// &skn=registration`, signed with the device key (individual enrollment, or the key derived from
/// a group key). Errors: as makeSasToken.
[[nodiscard]] core::Result<core::Secret<>> makeDpsSasToken(std::string_view idScope,
                                                           std::string_view registrationId,
                                                           const core::Secret<>& deviceKeyBase64,
                                                           std::uint64_t expiryUnix);

/// The device key of `registrationId` in a symmetric-key group enrollment (Microsoft Learn,
/// "How to provision devices using symmetric key enrollment groups", "Derive a device key"):
/// Base64(HMAC-SHA256(Base64-decode(groupKey), registrationId)). The same key authenticates the
/// device at the hub it is assigned to. Errors: Errc::InvalidArgument "Invalid Symmetric Key" for
/// an empty or non-Base64 group key; Errc::Internal if OpenSSL fails.
[[nodiscard]] core::Result<core::Secret<>> deriveGroupDeviceKey(
    const core::Secret<>& groupKeyBase64, std::string_view registrationId);

/// `$dps/registrations/PUT/iotdps-register/?$rid={enc(requestId)}`.
[[nodiscard]] std::string dpsRegisterTopic(std::string_view requestId);
/// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={enc(requestId)}&operationId=
/// {enc(operationId)}`; the publish has an empty payload.
[[nodiscard]] std::string dpsOperationStatusTopic(std::string_view requestId,
                                                  std::string_view operationId);

/// The register request body (DPS REST "DeviceRegistration"): `{"registrationId":"…"}`, plus
/// `"payload":{…}` when there is a custom payload or a model id. `customPayloadJson` (empty = none)
/// is an operator's file: it must be a JSON object of at most kMaxDpsPayloadBytes. `modelId`
/// (empty = none) is an IoT Plug and Play model id; it goes into the payload as `"modelId"` as the
/// SDK samples send it ([py] samples/pnp, [c] pnp_dps_ll.c), unless the payload names the same
/// model already. Errors: Errc::InvalidArgument "payload is not valid JSON…", "payload must be a
/// JSON object, got array", "payload is N bytes; the limit is 65536", "payload names modelId
/// 'X', but product_info names 'Y'" (a "modelId" that is not a string counts as a different one).
[[nodiscard]] core::Result<std::string> dpsRegisterPayload(std::string_view registrationId,
                                                           std::string_view customPayloadJson,
                                                           std::string_view modelId);

/// A response topic `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}][&…]`.
struct DpsResponseTopic {
  int status = 0;         ///< 100..999
  std::string requestId;  ///< percent-decoded `$rid`
  /// `retry-after` in seconds when present (decimal digits; a larger number saturates).
  std::optional<std::uint64_t> retryAfterSeconds;
};

/// Whether `topic` is a DPS response topic at all (prefix `$dps/registrations/res/`).
[[nodiscard]] bool isDpsResponseTopic(std::string_view topic);

/// Parses a response topic. The status must be 3 decimal digits (100..999); the query must hold a
/// non-empty `$rid`; keys are percent-decoded and unknown keys ignored; a repeated key is an error
/// ([py] "Duplicate keys in DPS response topic"). Errors: Errc::Protocol, one message per problem.
[[nodiscard]] core::Result<DpsResponseTopic> parseDpsResponseTopic(std::string_view topic);

/// `status` of a registration operation (DPS REST "RegistrationOperationStatus").
enum class DpsOperationStatus { Unassigned, Assigning, Assigned, Failed, Disabled };
[[nodiscard]] const char* dpsOperationStatusName(DpsOperationStatus status) noexcept;

/// `registrationState` (DPS REST "DeviceRegistrationResult"). Strings empty when absent.
struct DpsRegistrationState {
  std::string registrationId;
  std::string assignedHub;  ///< checked with validateHostName when the operation is assigned
  std::string deviceId;     ///< checked with validateDeviceId when the operation is assigned
  std::string status;       ///< "assigned", "failed", ... as sent
  std::string substatus;    ///< initialAssignment, deviceDataMigrated, deviceDataReset, ...
  std::string createdDateTimeUtc;
  std::string lastUpdatedDateTimeUtc;
  std::uint32_t errorCode = 0;  ///< six digits, e.g. 400207; 0 when absent
  std::string errorMessage;
  std::string payload;  ///< the allocation's returned payload as compact JSON; empty when absent
};

/// A 200 or 202 answer of a register or operation-status request.
struct DpsOperation {
  std::string operationId;
  DpsOperationStatus status = DpsOperationStatus::Unassigned;
  std::optional<DpsRegistrationState> registrationState;
};

/// Parses a 200/202 body. `operationId` and `status` are required strings, `status` one of
/// unassigned, assigning, assigned, failed, disabled (case-insensitive, as [node] compares);
/// `registrationState` an object when present. An assigned operation must name its hub and device
/// in a registrationState, and both must be valid names (they become the host we connect to and
/// our MQTT client id). Unknown members are ignored. Errors: Errc::Protocol (the text comes from
/// the service), e.g. "DPS response lacks 'operationId'", "DPS response 'status' is 'weird'",
/// "DPS assignment 'assignedHub': HostName contains ' ' at offset 3, …".
[[nodiscard]] core::Result<DpsOperation> parseDpsOperation(std::string_view json);

/// The body DPS sends with an error status. Fields empty (errorCode 0) when absent or when the
/// body is not the expected JSON object: it is only ever used to explain the status.
struct DpsServiceError {
  std::uint32_t errorCode = 0;  ///< six digits whose first three are the status, e.g. 401002
  std::string trackingId;       ///< what Azure support asks for
  std::string message;
  std::string timestampUtc;
};
[[nodiscard]] DpsServiceError parseDpsServiceError(std::string_view json);

/// One line explaining an error answer, for logs and LastError: "401 Unauthorized (errorCode
/// 401002: Unauthorized, trackingId 2cb8…)". Service-provided text is cut to 200 bytes of valid
/// UTF-8.
[[nodiscard]] std::string describeDpsError(int status, const DpsServiceError& error);

/// How long to wait before the next request: retry-after clamped to [kDpsMinRetryAfter,
/// kDpsMaxRetryAfter], or kDpsDefaultPollingInterval without one.
[[nodiscard]] std::chrono::seconds dpsRetryDelay(std::optional<std::uint64_t> retryAfterSeconds);

/// What a response status means for the client ([py] pipeline_stages_provisioning: 300..428 is a
/// service error that ends the registration, 429 and above are retried).
enum class DpsStatusClass {
  Ok,                ///< 200: a final or interim operation status in the body
  Accepted,          ///< 202: operation in progress, poll after retry-after
  BadRequest,        ///< 400: our request is wrong; retrying cannot help
  Unauthorized,      ///< 401: the attestation was refused (wrong key, certificate, scope)
  NotFound,          ///< 404: no enrollment for this registration id (or operation)
  Throttled,         ///< 429: retry after retry-after
  ServerError,       ///< >= 500 (and 430..499): transient, retry with backoff
  OtherClientError,  ///< any other 3xx/4xx: ends the registration
};
[[nodiscard]] DpsStatusClass classifyDpsStatus(int status) noexcept;

}  // namespace iothubd::proto
