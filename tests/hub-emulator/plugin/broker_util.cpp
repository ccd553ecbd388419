// SPDX-License-Identifier: MIT
#include "broker_util.hpp"

#include <mosquitto.h>
#include <mosquitto_plugin.h>
#include <openssl/x509.h>

#include "sas.hpp"

namespace iothubd::hubemu {

std::optional<std::string> certificateCommonName(mosquitto* client) {
  // mosquitto_broker.h declares it void* unless WITH_TLS is defined; it is an X509*.
  auto* cert = static_cast<X509*>(mosquitto_client_certificate(client));
  if (cert == nullptr)
    return std::nullopt;
  std::string cn;
  X509_NAME* subject = X509_get_subject_name(cert);
  const int index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (index >= 0) {
    ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index));
    cn.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)),
              static_cast<size_t>(ASN1_STRING_length(data)));
  }
  X509_free(cert);
  return cn;
}

std::vector<std::pair<std::string, std::string>> parseQuery(std::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (pair.empty())
      continue;
    const size_t eq = pair.find('=');
    const std::string_view rawKey = pair.substr(0, eq);
    const std::string_view rawValue =
        eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);
    out.emplace_back(percentDecode(rawKey).value_or(std::string(rawKey)),
                     percentDecode(rawValue).value_or(std::string(rawValue)));
  }
  return out;
}

std::string queryValue(std::string_view topic, std::string_view key) {
  const size_t q = topic.find('?');
  if (q == std::string_view::npos)
    return {};
  for (auto& [k, v] : parseQuery(topic.substr(q + 1))) {
    if (k == key)
      return v;
  }
  return {};
}

void publishToClient(const std::string& clientId, const std::string& topic,
                     const std::string& payload, int qos) {
  const int rc = mosquitto_broker_publish_copy(clientId.c_str(), topic.c_str(),
                                               static_cast<int>(payload.size()), payload.data(),
                                               qos, false, nullptr);
  if (rc != MOSQ_ERR_SUCCESS) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "hub-emulator: publish to '%s' on '%s' failed: %s",
                         clientId.c_str(), topic.c_str(), mosquitto_strerror(rc));
  }
}

void emitControlEvent(std::string_view type, const std::string& json) {
  const std::string topic = std::string(kEventPrefix) + std::string(type);
  const int rc = mosquitto_broker_publish_copy(
      nullptr, topic.c_str(), static_cast<int>(json.size()), json.data(), 1, false, nullptr);
  if (rc != MOSQ_ERR_SUCCESS) {
    mosquitto_log_printf(MOSQ_LOG_ERR, "hub-emulator: event '%s' failed: %s", topic.c_str(),
                         mosquitto_strerror(rc));
  }
}

void serveControlRequest(std::string_view topic, std::string_view payload,
                         const std::string& requester,
                         const std::function<void(const ControlRequest&, JsonOut&)>& handle) {
  ControlRequest req;
  const std::string_view rest = topic.substr(kRequestPrefix.size());
  const size_t slash = rest.find('/');
  req.command = std::string(rest.substr(0, slash));
  req.rid = slash == std::string_view::npos ? "" : std::string(rest.substr(slash + 1));
  req.requester = requester;

  JsonOut out;
  int status = 200;
  std::string error;
  try {
    auto args = parseObject(payload.empty() ? std::string_view("{}") : payload);
    if (!args)
      throw CommandError(400, "payload must be a JSON object");
    req.args = std::move(*args);
    handle(req, out);
  } catch (const CommandError& e) {
    status = e.status;
    error = e.what();
  }
  if (status != 200) {
    out.str("error", error);
    mosquitto_log_printf(MOSQ_LOG_WARNING, "hub-emulator: control '%s' failed: %d %s",
                         req.command.c_str(), status, error.c_str());
  }
  out.num("status", status);
  publishToClient(req.requester, std::string(kResponsePrefix) + req.command + "/" + req.rid,
                  out.finish(), 1);
}

}  // namespace iothubd::hubemu
