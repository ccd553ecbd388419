// SPDX-License-Identifier: MIT
#include "iothubd/config/settings.hpp"

#include <gtest/gtest.h>

namespace iothubd::config {
namespace {

core::Result<Settings> parse(const std::string& text) {
  return parseSettings({ConfigSource{"/etc/iothubd/iothubd.conf", text}});
}

std::string errorOf(const std::string& text) {
  auto r = parse(text);
  EXPECT_FALSE(r.has_value()) << "expected an error for:\n" << text;
  return r ? std::string() : r.error().message;
}

TEST(Settings, DefaultsAreTheSeedDefaults) {
  auto s = parse("[hub]\nauthentication = connection-string\n");
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->keepAlive, 60);
  EXPECT_EQ(s->sastokenTtl, 3600);
  EXPECT_TRUE(s->autoConnect);
  EXPECT_TRUE(s->connectionRetry);
  EXPECT_EQ(s->connectionRetryInitialDelayMs, 1000);
  EXPECT_EQ(s->connectionRetryMaxDelayMs, 0);  // not set: 60 s unless connection_retry_interval is
  EXPECT_EQ(s->connectionRetryInterval, 0);
  EXPECT_TRUE(s->ensureDesiredProperties);
  EXPECT_FALSE(s->websockets);
  EXPECT_EQ(s->port, 8883);
  EXPECT_EQ(s->methodResponseTimeout, 30);  // the hub's default responseTimeoutInSeconds
  EXPECT_TRUE(s->keepConnected);
  EXPECT_TRUE(s->uploadFromPathDirectories.empty()) << "UploadFileFromPath is off by default";
}

TEST(Settings, UploadDirectoriesAreAnAbsoluteListThatALaterLineReplaces) {
  auto s = parse(
      "[file_upload]\nupload_from_path_directories = /srv/a  /var/lib/app/out/\n"
      "[connection]\nkeep_connected = false\n");
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->uploadFromPathDirectories, (std::vector<std::string>{"/srv/a", "/var/lib/app/out"}));
  EXPECT_FALSE(s->keepConnected);
  auto cleared = parse(
      "[file_upload]\nupload_from_path_directories = /srv/a\n"
      "[file_upload]\nupload_from_path_directories =\n");
  ASSERT_TRUE(cleared);
  EXPECT_TRUE(cleared->uploadFromPathDirectories.empty());
  EXPECT_NE(errorOf("[file_upload]\nupload_from_path_directories = srv/a\n").find("absolute"),
            std::string::npos);
}

TEST(Settings, ReadsEveryKindOfValue) {
  auto s = parse(
      "# comment\n"
      "[hub]\n"
      "authentication = symmetric-key\n"
      "hostname = contoso.azure-devices.net\n"
      "device_id = dev1\n"
      "module_id = mod1\n"
      "gateway_hostname = edge.local\n"
      "port = 18883\n"
      "[credentials]\n"
      "shared_access_key_file = /etc/iothubd/key\n"
      "[connection]\n"
      "server_verification_cert = /etc/iothubd/edge-ca.pem\n"
      "cipher = ECDHE-RSA-AES128-GCM-SHA256\n"
      "product_info = my-gateway/2.0\n"
      "keep_alive = 120\n"
      "sastoken_ttl = 600\n"
      "auto_connect = false\n"
      "connection_retry = no\n"
      "connection_retry_interval = 3\n"
      "ensure_desired_properties = off\n"
      "operation_timeout = 30\n"
      "[methods]\n"
      "method_response_timeout = 15\n"
      "[daemon]\n"
      "log_level = debug\n");
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->authentication, AuthKind::SymmetricKey);
  EXPECT_EQ(s->hostname, "contoso.azure-devices.net");
  EXPECT_EQ(s->moduleId, "mod1");
  EXPECT_EQ(s->gatewayHostname, "edge.local");
  EXPECT_EQ(s->port, 18883);
  EXPECT_EQ(s->sharedAccessKeyFile, "/etc/iothubd/key");
  EXPECT_EQ(s->cipher, "ECDHE-RSA-AES128-GCM-SHA256");
  EXPECT_EQ(s->productInfo, "my-gateway/2.0");
  EXPECT_EQ(s->keepAlive, 120);
  EXPECT_EQ(s->sastokenTtl, 600);
  EXPECT_FALSE(s->autoConnect);
  EXPECT_FALSE(s->connectionRetry);
  EXPECT_EQ(s->connectionRetryInterval, 3);
  EXPECT_FALSE(s->ensureDesiredProperties);
  EXPECT_EQ(s->operationTimeout, 30);
  EXPECT_EQ(s->methodResponseTimeout, 15);
  EXPECT_EQ(s->logLevel, "debug");
}

TEST(Settings, LimitsHaveDefaultsAndRanges) {
  auto defaults = parse("");
  ASSERT_TRUE(defaults) << defaults.error().message;
  EXPECT_EQ(defaults->maxPendingCallsPerApp, 256u);
  EXPECT_EQ(defaults->maxMethodClaimsPerApp, 64u);
  EXPECT_EQ(defaults->maxPendingMethodRequests, 256u);
  EXPECT_EQ(defaults->maxQueuedMessages, 10000u);
  EXPECT_EQ(defaults->maxQueuedBytes, 16u * 1024 * 1024);

  auto s = parse(
      "[limits]\nmax_pending_calls_per_app = 8\nmax_method_claims_per_app = 2\n"
      "max_pending_method_requests = 3\nmax_queued_messages = 5\nmax_queued_bytes = 2097152\n");
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->maxPendingCallsPerApp, 8u);
  EXPECT_EQ(s->maxMethodClaimsPerApp, 2u);
  EXPECT_EQ(s->maxPendingMethodRequests, 3u);
  EXPECT_EQ(s->maxQueuedMessages, 5u);
  EXPECT_EQ(s->maxQueuedBytes, 2097152u);

  EXPECT_EQ(errorOf("[limits]\nmax_pending_calls_per_app = 0\n"),
            "/etc/iothubd/iothubd.conf:2: [limits] max_pending_calls_per_app: must be between 1 "
            "and 1000000, got 0");
  EXPECT_EQ(errorOf("[limits]\nmax_queued_bytes = 65536\n"),
            "/etc/iothubd/iothubd.conf:2: [limits] max_queued_bytes: must be between 1048576 and "
            "1099511627776, got 65536");
}

TEST(Settings, DropInsOverrideTheMainFileInOrder) {
  auto s =
      parseSettings({{"/etc/iothubd/iothubd.conf", "[connection]\nkeep_alive = 30\n"},
                     {"/etc/iothubd/iothubd.conf.d/10-a.conf", "[connection]\nkeep_alive = 40\n"},
                     {"/etc/iothubd/iothubd.conf.d/20-b.conf", "[daemon]\nlog_level = notice\n"}});
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->keepAlive, 40);
  EXPECT_EQ(s->logLevel, "notice");
}

TEST(Settings, ErrorsNameFileLineSectionAndKey) {
  EXPECT_EQ(
      errorOf("[connection]\n\nkeep_alive = often\n"),
      "/etc/iothubd/iothubd.conf:3: [connection] keep_alive: expected an integer, got \"often\"");
  EXPECT_EQ(errorOf("[connection]\nkeepalive = 5\n"),
            "/etc/iothubd/iothubd.conf:2: [connection] keepalive: unknown key");
  EXPECT_EQ(errorOf("[conection]\nkeep_alive = 5\n"),
            "/etc/iothubd/iothubd.conf:2: [conection]: unknown section");
  EXPECT_EQ(errorOf("keep_alive = 5\n"),
            "/etc/iothubd/iothubd.conf:1: keep_alive: key outside any section");
  EXPECT_EQ(
      errorOf("[connection]\nauto_connect = maybe\n"),
      "/etc/iothubd/iothubd.conf:2: [connection] auto_connect: expected true or false, got maybe");
  EXPECT_EQ(errorOf("[hub]\nauthentication = password\n"),
            "/etc/iothubd/iothubd.conf:2: [hub] authentication: expected connection-string, "
            "symmetric-key, sas-token, x509 or dps, got \"password\"");
  EXPECT_EQ(errorOf("[hub]\nport = 70000\n"),
            "/etc/iothubd/iothubd.conf:2: [hub] port: must be between 1 and 65535, got 70000");
  EXPECT_EQ(
      errorOf("[connection]\nkeep_alive = 1800\n"),
      "/etc/iothubd/iothubd.conf:2: [connection] keep_alive: must be between 5 and 1177, got 1800");
  EXPECT_EQ(errorOf("[methods]\nmethod_response_timeout = 301\n"),
            "/etc/iothubd/iothubd.conf:2: [methods] method_response_timeout: must be between 1 "
            "and 300, got 301");
  EXPECT_EQ(
      errorOf("[daemon]\nlog_level = chatty\n"),
      "/etc/iothubd/iothubd.conf:2: [daemon] log_level: expected error, warning, notice, info "
      "or debug, got \"chatty\"");
  EXPECT_EQ(errorOf("[hub\n"),
            "/etc/iothubd/iothubd.conf:1: syntax error (expected [section] or key = value)");
}

TEST(Settings, AnErrorInADropInNamesTheDropIn) {
  auto s = parseSettings({{"/etc/iothubd/iothubd.conf", "[connection]\nkeep_alive = 30\n"},
                          {"/etc/iothubd/iothubd.conf.d/50-x.conf", "[connection]\nbogus = 1\n"}});
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().message,
            "/etc/iothubd/iothubd.conf.d/50-x.conf:2: [connection] bogus: unknown key");
}

TEST(Settings, ConnectionStringAuthRefusesIdentityKeysThatComeFromTheString) {
  EXPECT_EQ(errorOf("[hub]\nauthentication = connection-string\nhostname = h\n"),
            "[hub] hostname: comes from the connection string; remove it here");
  EXPECT_EQ(errorOf("[hub]\ndevice_id = d\n"),
            "[hub] device_id: comes from the connection string; remove it here");
}

TEST(Settings, SymmetricKeyAuthNeedsHostAndDevice) {
  EXPECT_EQ(errorOf("[hub]\nauthentication = symmetric-key\ndevice_id = d\n"),
            "[hub] hostname: required with authentication = symmetric-key");
  EXPECT_EQ(errorOf("[hub]\nauthentication = symmetric-key\nhostname = h\n"),
            "[hub] device_id: required with authentication = symmetric-key");
}

TEST(Settings, WebSocketsDefaultTo443UnlessAPortIsGiven) {
  auto ws = parse("[connection]\nwebsockets = true\n");
  ASSERT_TRUE(ws) << ws.error().message;
  EXPECT_TRUE(ws->websockets);
  EXPECT_EQ(ws->port, 443);
  // The port line may come before or after websockets, or in a drop-in.
  auto both = parseSettings(
      {{"a.conf", "[hub]\nport = 18443\n"}, {"b.conf", "[connection]\nwebsockets = yes\n"}});
  ASSERT_TRUE(both) << both.error().message;
  EXPECT_EQ(both->port, 18443);
  EXPECT_EQ(parse("[connection]\nwebsockets = false\n")->port, 8883);
}

TEST(Settings, ProxyMustBeCompleteOrAbsent) {
  auto ok = parse(
      "[proxy]\nproxy_type = SOCKS5\nproxy_address = 10.0.0.1\nproxy_port = 1080\n"
      "proxy_username = u\nproxy_password_file = /etc/p\n");
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(ok->proxy.type, "SOCKS5");
  EXPECT_EQ(ok->proxy.address, "10.0.0.1");
  EXPECT_EQ(ok->proxy.port, 1080);
  EXPECT_EQ(ok->proxy.username, "u");
  EXPECT_EQ(ok->proxy.passwordFile, "/etc/p");
  EXPECT_EQ(errorOf("[proxy]\nproxy_type = HTTP\nproxy_port = 3128\n"),
            "[proxy] proxy_address: required with proxy_type = HTTP");
  EXPECT_EQ(errorOf("[proxy]\nproxy_type = HTTP\nproxy_address = p\n"),
            "[proxy] proxy_port: required with proxy_type = HTTP");
  EXPECT_EQ(errorOf("[proxy]\nproxy_address = p\nproxy_port = 3128\n"),
            "[proxy] proxy_type: required when any other proxy_ key is set");
  EXPECT_EQ(errorOf("[proxy]\nproxy_type = SOCKS4\nproxy_address = p\nproxy_port = 1\n"
                    "proxy_password_file = /etc/p\n"),
            "[proxy] proxy_password_file: SOCKS4 has no passwords");
  EXPECT_EQ(errorOf("[proxy]\nproxy_type = http\n"),
            "/etc/iothubd/iothubd.conf:2: [proxy] proxy_type: expected HTTP, SOCKS4 or SOCKS5, got "
            "\"http\"");
}

TEST(Settings, RetryDelaysTakeSecondsWithUpToThreeDecimals) {
  auto s = parse(
      "[connection]\nconnection_retry_initial_delay = 0.25\nconnection_retry_max_delay = 4\n");
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->connectionRetryInitialDelayMs, 250);
  EXPECT_EQ(s->connectionRetryMaxDelayMs, 4000);
  EXPECT_EQ(parse("[connection]\nconnection_retry_max_delay = 1.5\n")->connectionRetryMaxDelayMs,
            1500);
  for (const char* bad : {"0.0001", "1.", ".5", "-1", "1,5", "0", "5s", "90000"}) {
    EXPECT_FALSE(parse(std::string("[connection]\nconnection_retry_initial_delay = ") + bad + "\n"))
        << bad;
  }
}

TEST(Settings, X509NeedsHostAndDevice) {
  EXPECT_TRUE(parse("[hub]\nauthentication = x509\nhostname = h\ndevice_id = d\n"));
  EXPECT_EQ(errorOf("[hub]\nauthentication = x509\nhostname = h\n"),
            "[hub] device_id: required with authentication = x509");
}

}  // namespace
}  // namespace iothubd::config
