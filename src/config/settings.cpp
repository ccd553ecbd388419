// SPDX-License-Identifier: MIT
#include "iothubd/config/settings.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include <ini.h>

#include "iothubd/proto/mqtt_identity.hpp"
#include "iothubd/proto/provisioning.hpp"

namespace iothubd::config {
namespace {

using core::Errc;
using core::fail;

struct ParseState {
  Settings settings;
  std::string error;                 // set by a key handler; inih then reports the line
  bool portSet = false;              // [hub] port given: websockets then keeps it instead of 443
  bool provisioningPortSet = false;  // the same for [provisioning] port
  std::string firstProvisioningKey;  // a [provisioning] key that was set, for messages
};

bool parseBool(std::string_view v, bool& out) {
  if (v == "true" || v == "yes" || v == "1" || v == "on") {
    out = true;
    return true;
  }
  if (v == "false" || v == "no" || v == "0" || v == "off") {
    out = false;
    return true;
  }
  return false;
}

bool parseInt(std::string_view v, int& out) {
  const char* end = v.data() + v.size();
  auto [ptr, ec] = std::from_chars(v.data(), end, out);
  return ec == std::errc() && ptr == end && !v.empty();
}

using Handler = std::function<std::string(Settings&, std::string_view)>;

Handler text(std::string Settings::*field) {
  return [field](Settings& s, std::string_view v) {
    s.*field = std::string(v);
    return std::string();
  };
}

Handler flag(bool Settings::*field) {
  return [field](Settings& s, std::string_view v) -> std::string {
    if (!parseBool(v, s.*field)) {
      return "expected true or false, got " + std::string(v);
    }
    return {};
  };
}

Handler number(int Settings::*field, int min, int max) {
  return [field, min, max](Settings& s, std::string_view v) -> std::string {
    int n = 0;
    if (!parseInt(v, n)) {
      return "expected an integer, got \"" + std::string(v) + "\"";
    }
    if (n < min || n > max) {
      return "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " +
             std::to_string(n);
    }
    s.*field = n;
    return {};
  };
}

/// Seconds with up to three decimals ("1", "0.25"), stored in milliseconds.
Handler milliseconds(int Settings::*field, int minMs, int maxMs) {
  return [field, minMs, maxMs](Settings& s, std::string_view v) -> std::string {
    const auto dot = v.find('.');
    int whole = 0;
    int fraction = 0;
    const std::string_view wholeText = v.substr(0, dot);
    std::string_view fractionText =
        dot == std::string_view::npos ? std::string_view() : v.substr(dot + 1);
    bool ok = parseInt(wholeText, whole) && whole >= 0 && whole <= 86400 &&
              (dot == std::string_view::npos ||
               (!fractionText.empty() && fractionText.size() <= 3 &&
                fractionText.find_first_not_of("0123456789") == std::string_view::npos));
    if (ok && !fractionText.empty()) {
      ok = parseInt(fractionText, fraction);
      for (std::size_t i = fractionText.size(); i < 3; ++i) {
        fraction *= 10;
      }
    }
    if (!ok) {
      return "expected seconds with at most three decimals, got \"" + std::string(v) + "\"";
    }
    const int ms = whole * 1000 + fraction;
    if (ms < minMs || ms > maxMs) {
      return "must be between " + std::to_string(minMs) + " ms and " +
             std::to_string(maxMs / 1000) + " s, got " + std::string(v);
    }
    s.*field = ms;
    return {};
  };
}

Handler count(std::uint64_t Settings::*field, std::uint64_t min, std::uint64_t max) {
  return [field, min, max](Settings& s, std::string_view v) -> std::string {
    std::uint64_t n = 0;
    const char* end = v.data() + v.size();
    auto [ptr, ec] = std::from_chars(v.data(), end, n);
    if (ec != std::errc() || ptr != end || v.empty()) {
      return "expected a non-negative integer, got \"" + std::string(v) + "\"";
    }
    if (n < min || n > max) {
      return "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " +
             std::to_string(n);
    }
    s.*field = n;
    return {};
  };
}

/// The key table: "section.key" → handler. The one place that says which keys exist.
const std::map<std::string, Handler, std::less<>>& keyTable() {
  static const std::map<std::string, Handler, std::less<>> table = {
      {"hub.authentication",
       [](Settings& s, std::string_view v) -> std::string {
         if (v == "connection-string") {
           s.authentication = AuthKind::ConnectionString;
         } else if (v == "symmetric-key") {
           s.authentication = AuthKind::SymmetricKey;
         } else if (v == "sas-token") {
           s.authentication = AuthKind::SasToken;
         } else if (v == "x509") {
           s.authentication = AuthKind::X509;
         } else if (v == "dps") {
           s.authentication = AuthKind::Dps;
         } else {
           return "expected connection-string, symmetric-key, sas-token, x509 or dps, got \"" +
                  std::string(v) + "\"";
         }
         return {};
       }},
      {"hub.hostname", text(&Settings::hostname)},
      {"hub.device_id", text(&Settings::deviceId)},
      {"hub.module_id", text(&Settings::moduleId)},
      {"hub.gateway_hostname", text(&Settings::gatewayHostname)},
      {"hub.port", number(&Settings::port, 1, 65535)},
      {"credentials.connection_string_file", text(&Settings::connectionStringFile)},
      {"credentials.shared_access_key_file", text(&Settings::sharedAccessKeyFile)},
      {"credentials.sas_token_file", text(&Settings::sasTokenFile)},
      {"credentials.x509_cert_file", text(&Settings::x509CertFile)},
      {"credentials.x509_key_file", text(&Settings::x509KeyFile)},
      {"credentials.x509_pass_phrase_file", text(&Settings::x509PassPhraseFile)},
      {"credentials.dps_key_file", text(&Settings::dpsKeyFile)},
      {"credentials.dps_group_key_file", text(&Settings::dpsGroupKeyFile)},
      {"connection.server_verification_cert", text(&Settings::serverVerificationCert)},
      {"connection.websockets", flag(&Settings::websockets)},
      {"connection.cipher", text(&Settings::cipher)},
      {"connection.product_info", text(&Settings::productInfo)},
      // Protocol doc 1.3: the hub waits 1.5 x keep-alive capped at 1767 s, so more than 1177 s
      // would let the load balancer drop an idle but healthy connection.
      {"connection.keep_alive", number(&Settings::keepAlive, 5, 1177)},
      {"connection.sastoken_ttl", number(&Settings::sastokenTtl, 5, 365 * 24 * 3600)},
      {"connection.auto_connect", flag(&Settings::autoConnect)},
      {"connection.connection_retry", flag(&Settings::connectionRetry)},
      {"connection.connection_retry_initial_delay",
       milliseconds(&Settings::connectionRetryInitialDelayMs, 10, 3600 * 1000)},
      {"connection.connection_retry_max_delay",
       milliseconds(&Settings::connectionRetryMaxDelayMs, 10, 86400 * 1000)},
      {"connection.connection_retry_interval",
       number(&Settings::connectionRetryInterval, 1, 86400)},
      {"connection.ensure_desired_properties", flag(&Settings::ensureDesiredProperties)},
      {"connection.operation_timeout", number(&Settings::operationTimeout, 1, 3600)},
      {"connection.clock_sync_timeout", number(&Settings::clockSyncTimeout, 0, 3600)},
      {"connection.keep_connected", flag(&Settings::keepConnected)},
      {"proxy.proxy_type",
       [](Settings& s, std::string_view v) -> std::string {
         if (v != "HTTP" && v != "SOCKS4" && v != "SOCKS5" && !v.empty()) {
           return "expected HTTP, SOCKS4 or SOCKS5, got \"" + std::string(v) + "\"";
         }
         s.proxy.type = std::string(v);
         return {};
       }},
      {"proxy.proxy_address",
       [](Settings& s, std::string_view v) {
         s.proxy.address = std::string(v);
         return std::string();
       }},
      {"proxy.proxy_port",
       [](Settings& s, std::string_view v) -> std::string {
         int n = 0;
         if (!parseInt(v, n) || n < 1 || n > 65535) {
           return "expected a port between 1 and 65535, got \"" + std::string(v) + "\"";
         }
         s.proxy.port = n;
         return {};
       }},
      {"proxy.proxy_username",
       [](Settings& s, std::string_view v) {
         s.proxy.username = std::string(v);
         return std::string();
       }},
      {"proxy.proxy_password_file",
       [](Settings& s, std::string_view v) {
         s.proxy.passwordFile = std::string(v);
         return std::string();
       }},
      {"provisioning.global_endpoint",
       [](Settings& s, std::string_view v) -> std::string {
         if (auto ok = proto::validateHostName(v, "global_endpoint"); !ok) {
           return ok.error().message;
         }
         s.provisioning.globalEndpoint = std::string(v);
         return {};
       }},
      {"provisioning.port",
       [](Settings& s, std::string_view v) -> std::string {
         int n = 0;
         if (!parseInt(v, n) || n < 1 || n > 65535) {
           return "expected a port between 1 and 65535, got \"" + std::string(v) + "\"";
         }
         s.provisioning.port = n;
         return {};
       }},
      {"provisioning.id_scope",
       [](Settings& s, std::string_view v) -> std::string {
         if (auto ok = proto::validateIdScope(v); !ok) {
           return ok.error().message;
         }
         s.provisioning.idScope = std::string(v);
         return {};
       }},
      {"provisioning.registration_id",
       [](Settings& s, std::string_view v) -> std::string {
         if (auto ok = proto::validateRegistrationId(v); !ok) {
           return ok.error().message;
         }
         s.provisioning.registrationId = std::string(v);
         return {};
       }},
      {"provisioning.attestation",
       [](Settings& s, std::string_view v) -> std::string {
         if (v == "symmetric-key") {
           s.provisioning.attestation = DpsAttestation::SymmetricKey;
         } else if (v == "x509") {
           s.provisioning.attestation = DpsAttestation::X509;
         } else {
           return "expected symmetric-key or x509, got \"" + std::string(v) + "\"";
         }
         return {};
       }},
      {"provisioning.payload_file",
       [](Settings& s, std::string_view v) {
         s.provisioning.payloadFile = std::string(v);
         return std::string();
       }},
      // A registration that waits on a throttling DPS (429, retry-after up to 300 s) needs time.
      {"provisioning.registration_timeout",
       [](Settings& s, std::string_view v) -> std::string {
         int n = 0;
         if (!parseInt(v, n) || n < 5 || n > 86400) {
           return "must be between 5 and 86400, got \"" + std::string(v) + "\"";
         }
         s.provisioning.registrationTimeout = n;
         return {};
       }},
      // The hub waits at most 300 s for a device (responseTimeoutInSeconds's maximum).
      {"methods.method_response_timeout", number(&Settings::methodResponseTimeout, 1, 300)},
      {"outbox.outbox_path", text(&Settings::outboxPath)},
      {"outbox.outbox_max_messages", count(&Settings::outboxMaxMessages, 1, 100000000)},
      {"outbox.outbox_max_bytes", count(&Settings::outboxMaxBytes, 4096, 1ull << 40)},
      {"outbox.outbox_full_policy",
       [](Settings& s, std::string_view v) -> std::string {
         if (v != "reject" && v != "drop-oldest") {
           return "expected reject or drop-oldest, got \"" + std::string(v) + "\"";
         }
         s.outboxFullPolicy = std::string(v);
         return {};
       }},
      {"outbox.outbox_default_ttl", number(&Settings::outboxDefaultTtl, 0, 365 * 24 * 3600)},
      {"outbox.max_inflight", number(&Settings::maxInflight, 1, 65535)},
      {"file_upload.https_port", number(&Settings::fileUploadPort, 1, 65535)},
      // Azure Storage takes blocks of up to 4000 MiB (x-ms-version 2019-12-12); keep them between
      // 64 KiB and 100 MiB so that memory stays bounded (one block is buffered).
      {"file_upload.block_size", count(&Settings::blockSize, 64 * 1024, 100 * 1024 * 1024)},
      {"file_upload.max_concurrent_uploads", number(&Settings::maxConcurrentUploads, 1, 10)},
      {"file_upload.upload_timeout", number(&Settings::uploadTimeout, 10, 7 * 24 * 3600)},
      {"file_upload.upload_from_path_directories",
       [](Settings& s, std::string_view v) -> std::string {
         // A space-separated list; each later line replaces the whole list (drop-ins).
         std::vector<std::string> dirs;
         std::istringstream words{std::string(v)};
         for (std::string dir; words >> dir;) {
           if (dir.front() != '/') {
             return "expected absolute directory paths, got \"" + dir + "\"";
           }
           while (dir.size() > 1 && dir.back() == '/') {
             dir.pop_back();
           }
           dirs.push_back(std::move(dir));
         }
         s.uploadFromPathDirectories = std::move(dirs);
         return {};
       }},
      {"limits.max_pending_calls_per_app", count(&Settings::maxPendingCallsPerApp, 1, 1000000)},
      {"limits.max_method_claims_per_app", count(&Settings::maxMethodClaimsPerApp, 1, 1000000)},
      {"limits.max_pending_method_requests",
       count(&Settings::maxPendingMethodRequests, 1, 1000000)},
      {"limits.max_queued_messages", count(&Settings::maxQueuedMessages, 1, 100000000)},
      // At least one largest message (256 KiB body and a 64 KiB topic) must fit.
      {"limits.max_queued_bytes", count(&Settings::maxQueuedBytes, 1024 * 1024, 1ull << 40)},
      {"daemon.log_level",
       [](Settings& s, std::string_view v)
           -> std::
               string {
                 static constexpr std::string_view kLevels[] = {"error", "warning", "notice",
                                                                "info", "debug"};
                 if (std::find(std::begin(kLevels), std::end(kLevels), v) == std::end(kLevels)) {
                   return "expected error, warning, notice, info or debug, got \"" +
                          std::string(v) + "\"";
                 }
                 s.logLevel = std::string(v);
                 return {};
               }},
  };
  return table;
}

int onKey(void* user, const char* section, const char* name, const char* value) {
  auto* state = static_cast<ParseState*>(user);
  std::string key = std::string(section) + "." + name;
  if (name[0] == '\0') {
    state->error = "[" + std::string(section) + "]: empty key";
    return 0;
  }
  const auto& table = keyTable();
  auto it = table.find(key);
  if (it == table.end()) {
    bool sectionKnown = std::any_of(table.begin(), table.end(), [&](const auto& entry) {
      return entry.first.rfind(std::string(section) + ".", 0) == 0;
    });
    state->error = sectionKnown ? "[" + std::string(section) + "] " + name + ": unknown key"
                                : "[" + std::string(section) + "]: unknown section";
    if (std::string_view(section).empty()) {
      state->error = std::string(name) + ": key outside any section";
    }
    return 0;
  }
  if (key == "hub.port") {
    state->portSet = true;
  }
  if (key == "provisioning.port") {
    state->provisioningPortSet = true;
  }
  if (std::string_view(section) == "provisioning" && state->firstProvisioningKey.empty()) {
    state->firstProvisioningKey = name;
  }
  std::string problem = it->second(state->settings, value);
  if (!problem.empty()) {
    state->error = "[" + std::string(section) + "] " + name + ": " + problem;
    return 0;
  }
  return 1;
}

/// [proxy] must be complete or absent: a half-configured proxy would otherwise be bypassed
/// silently (protocol doc 1.6).
core::Result<void> checkProxy(const Settings& s) {
  const ProxySettings& p = s.proxy;
  if (p.type.empty()) {
    if (!p.address.empty() || p.port != 0 || !p.username.empty() || !p.passwordFile.empty()) {
      return fail(Errc::Config, "[proxy] proxy_type: required when any other proxy_ key is set");
    }
    return {};
  }
  if (p.address.empty()) {
    return fail(Errc::Config, "[proxy] proxy_address: required with proxy_type = " + p.type);
  }
  if (p.port == 0) {
    return fail(Errc::Config, "[proxy] proxy_port: required with proxy_type = " + p.type);
  }
  if (p.type == "SOCKS4" && !p.passwordFile.empty()) {
    return fail(Errc::Config, "[proxy] proxy_password_file: SOCKS4 has no passwords");
  }
  return {};
}

core::Result<void> checkConsistency(const Settings& s) {
  bool fromConnectionString = s.authentication == AuthKind::ConnectionString;
  auto needs = [&](const std::string& value, const char* key) -> core::Result<void> {
    if (value.empty()) {
      return fail(Errc::Config, std::string("[hub] ") + key + ": required with authentication = " +
                                    authKindName(s.authentication));
    }
    return {};
  };
  auto forbids = [&](const std::string& value, const char* key) -> core::Result<void> {
    if (!value.empty()) {
      return fail(Errc::Config, std::string("[hub] ") + key +
                                    ": comes from the connection string; remove it here");
    }
    return {};
  };
  if (fromConnectionString) {
    for (auto [value, key] : {std::pair{&s.hostname, "hostname"},
                              {&s.deviceId, "device_id"},
                              {&s.moduleId, "module_id"},
                              {&s.gatewayHostname, "gateway_hostname"}}) {
      if (auto r = forbids(*value, key); !r) {
        return r;
      }
    }
  } else if (s.authentication == AuthKind::SymmetricKey || s.authentication == AuthKind::X509) {
    if (auto r = needs(s.hostname, "hostname"); !r) {
      return r;
    }
    if (auto r = needs(s.deviceId, "device_id"); !r) {
      return r;
    }
  }
  return {};
}

/// authentication = dps: DPS names hub and device, [provisioning] says how to ask it. The other
/// way round, [provisioning] without dps is a forgotten authentication line, not something to
/// ignore silently.
core::Result<void> checkProvisioning(const Settings& s, const std::string& firstProvisioningKey) {
  if (s.authentication != AuthKind::Dps) {
    if (!firstProvisioningKey.empty()) {
      return fail(Errc::Config, "[provisioning] " + firstProvisioningKey +
                                    ": only used with [hub] authentication = dps");
    }
    if (!s.dpsKeyFile.empty() || !s.dpsGroupKeyFile.empty()) {
      return fail(Errc::Config, std::string("[credentials] ") +
                                    (s.dpsKeyFile.empty() ? "dps_group_key_file" : "dps_key_file") +
                                    ": only used with [hub] authentication = dps");
    }
    return {};
  }
  for (auto [value, key] : {std::pair{&s.hostname, "hostname"},
                            {&s.deviceId, "device_id"},
                            {&s.moduleId, "module_id"}}) {
    if (!value->empty()) {
      return fail(Errc::Config, std::string("[hub] ") + key +
                                    ": assigned by DPS with authentication = dps; remove it here");
    }
  }
  if (s.provisioning.idScope.empty()) {
    return fail(Errc::Config,
                "[provisioning] id_scope: required with authentication = dps (the DPS instance's "
                "ID scope, like 0ne00012345)");
  }
  if (s.provisioning.registrationId.empty()) {
    return fail(Errc::Config, "[provisioning] registration_id: required with authentication = dps");
  }
  if (s.provisioning.attestation == DpsAttestation::X509 &&
      (!s.dpsKeyFile.empty() || !s.dpsGroupKeyFile.empty())) {
    return fail(Errc::Config, std::string("[credentials] ") +
                                  (s.dpsKeyFile.empty() ? "dps_group_key_file" : "dps_key_file") +
                                  ": a symmetric key, but [provisioning] attestation = x509");
  }
  if (!s.dpsKeyFile.empty() && !s.dpsGroupKeyFile.empty()) {
    return fail(Errc::Config,
                "[credentials] dps_group_key_file: a device has one enrollment; set dps_key_file "
                "(individual) or dps_group_key_file (group), not both");
  }
  return {};
}

}  // namespace

const char* authKindName(AuthKind kind) noexcept {
  switch (kind) {
    case AuthKind::ConnectionString:
      return "connection-string";
    case AuthKind::SymmetricKey:
      return "symmetric-key";
    case AuthKind::SasToken:
      return "sas-token";
    case AuthKind::X509:
      return "x509";
    case AuthKind::Dps:
      return "dps";
  }
  return "unknown";
}

const char* dpsAttestationName(DpsAttestation attestation) noexcept {
  return attestation == DpsAttestation::X509 ? "x509" : "symmetric-key";
}

core::Result<Settings> parseSettings(const std::vector<ConfigSource>& sources) {
  ParseState state;
  for (const auto& source : sources) {
    state.error.clear();
    int line = ini_parse_string(source.text.c_str(), &onKey, &state);
    if (line != 0) {
      std::string why =
          state.error.empty() ? "syntax error (expected [section] or key = value)" : state.error;
      return fail(Errc::Config, source.path + ":" + std::to_string(line) + ": " + why);
    }
  }
  if (auto r = checkConsistency(state.settings); !r) {
    return fail(r.error());
  }
  if (auto r = checkProxy(state.settings); !r) {
    return fail(r.error());
  }
  if (auto r = checkProvisioning(state.settings, state.firstProvisioningKey); !r) {
    return fail(r.error());
  }
  // Protocol doc 1.1: MQTT over WebSockets goes to 443 unless a port is configured; DPS too.
  if (state.settings.websockets && !state.portSet) {
    state.settings.port = 443;
  }
  if (state.settings.websockets && !state.provisioningPortSet) {
    state.settings.provisioning.port = 443;
  }
  return state.settings;
}

core::Result<std::vector<ConfigSource>> readConfigFiles(const std::string& path) {
  namespace fs = std::filesystem;
  auto readOne = [](const std::string& p) -> core::Result<ConfigSource> {
    std::ifstream in(p, std::ios::binary);
    if (!in) {
      return fail(Errc::Config, p + ": cannot read: " + std::strerror(errno), errno);
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    return ConfigSource{p, ss.str()};
  };
  std::vector<ConfigSource> out;
  auto main = readOne(path);
  if (!main) {
    return fail(main.error());
  }
  out.push_back(std::move(*main));
  std::error_code ec;
  fs::path dropIns(path + ".d");
  if (fs::is_directory(dropIns, ec)) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dropIns, ec)) {
      if (entry.path().extension() == ".conf") {
        names.push_back(entry.path().string());
      }
    }
    std::sort(names.begin(), names.end());
    for (const auto& n : names) {
      auto one = readOne(n);
      if (!one) {
        return fail(one.error());
      }
      out.push_back(std::move(*one));
    }
  }
  return out;
}

}  // namespace iothubd::config
