// SPDX-License-Identifier: MIT
// What both plugin modes (the hub, emulator.hpp, and DPS, dps_service.hpp) do with the broker:
// read a client's certificate, split topic queries, publish to one client or as an event, and
// serve the control-topic protocol (../README.md, "Control-topic protocol").
#pragma once

#include <mosquitto_broker.h>

#include <rapidjson/document.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "json_util.hpp"

namespace iothubd::hubemu {

// Control-topic namespace.
inline constexpr std::string_view kRequestPrefix = "$hubemu/req/";
inline constexpr std::string_view kResponsePrefix = "$hubemu/res/";
inline constexpr std::string_view kEventPrefix = "$hubemu/evt/";
inline constexpr std::string_view kServiceUser = "service";

// The subject CN of the client's TLS certificate, or nullopt without one. The broker already
// verified the chain against the listener's cafile (require_certificate true).
std::optional<std::string> certificateCommonName(mosquitto* client);

// Splits "a=b&c=d" into decoded pairs in order; a key without '=' gets an empty value.
std::vector<std::pair<std::string, std::string>> parseQuery(std::string_view query);

// The decoded value of `key` in the query after the topic's '?', or "".
std::string queryValue(std::string_view topic, std::string_view key);

// mosquitto_broker_publish_copy to one client (no subscription needed); failures are logged.
void publishToClient(const std::string& clientId, const std::string& topic,
                     const std::string& payload, int qos);

// Publishes $hubemu/evt/{type}, routed normally so that every subscribed service client sees it;
// QoS 1 so a busy test client does not lose events.
void emitControlEvent(std::string_view type, const std::string& json);

// One control request: $hubemu/req/{command}/{rid} with a JSON object payload.
struct ControlRequest {
  std::string command;
  std::string rid;
  std::string requester;
  rapidjson::Document args;
};

// Parses the request, calls `handle` (which throws CommandError to fail it, 404 for an unknown
// command) and answers on $hubemu/res/{command}/{rid} to the requester, QoS 1, with "status" and,
// on failure, "error".
void serveControlRequest(std::string_view topic, std::string_view payload,
                         const std::string& requester,
                         const std::function<void(const ControlRequest&, JsonOut&)>& handle);

}  // namespace iothubd::hubemu
