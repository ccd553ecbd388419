// SPDX-License-Identifier: MIT
// The whole device client over D-Bus (issue 3): contract, C2D, direct methods, twin, reconnects,
// SAS renewal and bad input, each against the real daemon, bus and hub emulator.
#include <fstream>
#include <future>
#include <regex>
#include <set>
#include <sstream>

#include "daemon_fixture.hpp"

namespace iothubd::testing {
namespace {

using Steady = std::chrono::steady_clock;

class DeviceApiTest : public DaemonTest {};

/// The members of interface org.iothubd.Device1 in an introspection document, one normalised
/// line each ("method Name(in:s,in:a{ss},out:s)", "signal Name(b)", "property Name b read"), so
/// that the running daemon can be compared with the contract file.
std::set<std::string> contractOf(const std::string& xml) {
  std::set<std::string> out;
  auto ifaceStart = xml.find("<interface name=\"org.iothubd.Device1\">");
  if (ifaceStart == std::string::npos) {
    return out;
  }
  auto ifaceEnd = xml.find("</interface>", ifaceStart);
  std::string iface = xml.substr(ifaceStart, ifaceEnd - ifaceStart);
  // Drop comments: they may contain angle brackets.
  iface = std::regex_replace(iface, std::regex("<!--[\\s\\S]*?-->"), "");
  std::regex member(R"re(<(method|signal)\s+name="([^"]+)"\s*(/>|>([\s\S]*?)</\1>))re");
  std::regex arg(R"re(<arg\s+([^>]*?)/?>)re");
  std::regex attr(R"re((\w+)="([^"]*)")re");
  for (auto it = std::sregex_iterator(iface.begin(), iface.end(), member);
       it != std::sregex_iterator(); ++it) {
    std::string kind = (*it)[1], name = (*it)[2], body = (*it)[4];
    std::string line = kind + " " + name + "(";
    bool first = true;
    for (auto a = std::sregex_iterator(body.begin(), body.end(), arg); a != std::sregex_iterator();
         ++a) {
      std::string attrs = (*a)[1];
      std::map<std::string, std::string> m;
      for (auto t = std::sregex_iterator(attrs.begin(), attrs.end(), attr);
           t != std::sregex_iterator(); ++t) {
        m[(*t)[1]] = (*t)[2];
      }
      std::string dir =
          kind == "method" ? (m.count("direction") ? m["direction"] : "in") + ":" : "";
      line += (first ? "" : ",") + dir + m["name"] + ":" + m["type"];
      first = false;
    }
    out.insert(line + ")");
  }
  std::regex property(R"re(<property\s+name="([^"]+)"\s+type="([^"]+)"\s+access="([^"]+)")re");
  for (auto it = std::sregex_iterator(iface.begin(), iface.end(), property);
       it != std::sregex_iterator(); ++it) {
    out.insert("property " + std::string((*it)[1]) + " " + std::string((*it)[2]) + " " +
               std::string((*it)[3]));
  }
  return out;
}

TEST_F(DeviceApiTest, IntrospectionShowsExactlyTheContract) {
  startDaemon();
  std::string introspected;
  auto proxy = sdbus::createProxy(sdbus::createSessionBusConnectionWithAddress(bus_->address()),
                                  "org.iothubd", "/org/iothubd/Device");
  proxy->callMethod("Introspect")
      .onInterface("org.freedesktop.DBus.Introspectable")
      .storeResultsTo(introspected);
  std::ifstream in(std::string(IOTHUBD_SOURCE_DIR) + "/dbus/org.iothubd.Device1.xml");
  std::stringstream contract;
  contract << in.rdbuf();
  auto expected = contractOf(contract.str());
  ASSERT_GE(expected.size(), 25u) << "the contract parser found too little";
  EXPECT_EQ(contractOf(introspected), expected);
}

TEST_F(DeviceApiTest, PropertiesDescribeTheDeviceAndAreReadOnly) {
  startDaemon();
  auto& c = client();
  if (!c.Connected()) {
    ASSERT_TRUE(c.waitForConnectedProperty(true));
  }
  EXPECT_EQ(c.ConnectionState(), "connected");
  EXPECT_EQ(c.LastError(), "");
  EXPECT_EQ(c.DeviceId(), "dev1");
  EXPECT_EQ(c.ModuleId(), "");
  EXPECT_EQ(c.HostName(), "localhost");
  EXPECT_EQ(c.GatewayHostName(), "");
  EXPECT_EQ(c.AuthenticationType(), "sas");
  EXPECT_EQ(c.ProvisioningState(), "not-configured");
  auto now = static_cast<uint64_t>(std::time(nullptr));
  EXPECT_GE(c.SasTokenExpiry(), now + 3500);
  EXPECT_LE(c.SasTokenExpiry(), now + 3601);
  EXPECT_EQ(errorNameOf([&] { c.Set("org.iothubd.Device1", "Connected", sdbus::Variant(false)); }),
            "org.freedesktop.DBus.Error.PropertyReadOnly");
}

TEST_F(DeviceApiTest, BinaryMessagesKeepEveryByte) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  std::vector<uint8_t> body = {0x00, 0xff, 0x10, '\n', 0x80, 0x00};
  std::string id =
      client().SendBinaryMessage(body, {}, {{"content-type", "application/octet-stream"}});
  auto received = service.waitForTelemetry();
  ASSERT_TRUE(received.has_value());
  EXPECT_EQ(received->payload, std::string(body.begin(), body.end()));
  EXPECT_EQ(received->property("$.mid"), id);
}

TEST_F(DeviceApiTest, CloudToDeviceMessagesArriveWithSystemAndCustomProperties) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  service.sendC2d(kDevice, "hello device",
                  {{"$.mid", "c2d-1"},
                   {"$.cid", "corr-9"},
                   {"$.ct", "text/plain"},
                   {"$.ce", "utf-8"},
                   {"$.uid", "ops"},
                   {"$.exp", "2030-01-01T00:00:00Z"},
                   {"$.to", "/devices/dev1/messages/devicebound"},
                   {"iothub-ack", "full"}},
                  {{"colour", "dark blue"}, {"path", "a/b&c"}});
  auto m = c.waitForSignal("MessageReceived");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(std::string(m->body.begin(), m->body.end()), "hello device");
  EXPECT_EQ(m->systemProperties, (StringMap{{"message-id", "c2d-1"},
                                            {"correlation-id", "corr-9"},
                                            {"content-type", "text/plain"},
                                            {"content-encoding", "utf-8"},
                                            {"user-id", "ops"},
                                            {"expiry-time-utc", "2030-01-01T00:00:00Z"},
                                            {"to", "/devices/dev1/messages/devicebound"},
                                            {"ack", "full"}}));
  EXPECT_EQ(m->properties, (StringMap{{"colour", "dark blue"}, {"path", "a/b&c"}}));
}

TEST_F(DeviceApiTest, DirectMethodRoundTrip) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  c.RegisterMethodHandler("reboot");
  auto invoked = std::async(std::launch::async, [&] {
    return service.invokeMethod(kDevice, "reboot", R"({"delay":5})", 10s);
  });
  auto request = c.waitForSignal("MethodRequestReceived");
  ASSERT_TRUE(request.has_value());
  EXPECT_EQ(request->args[1], "reboot");
  EXPECT_EQ(request->args[2], R"({"delay":5})");
  c.SendMethodResponse(request->args[0], 200, R"({"rebooting":true})");
  auto result = invoked.get();
  EXPECT_EQ(result.status, 200);
  EXPECT_EQ(result.payload, R"({"rebooting":true})");
}

TEST_F(DeviceApiTest, TheWildcardTakesNamesNobodyClaimedAndOnlyTheClaimerSeesRequests) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& catchAll = client();
  auto specific = newClient();
  specific->RegisterMethodHandler("ping");
  catchAll.RegisterMethodHandler("*");
  auto invoked = std::async(std::launch::async,
                            [&] { return service.invokeMethod(kDevice, "other", "{}", 10s); });
  auto request = catchAll.waitForSignal("MethodRequestReceived");
  ASSERT_TRUE(request.has_value());
  EXPECT_EQ(request->args[1], "other");
  // Another peer may not answer it.
  EXPECT_EQ(errorNameOf([&] { specific->SendMethodResponse(request->args[0], 200, "{}"); }),
            "org.freedesktop.DBus.Error.AccessDenied");
  catchAll.SendMethodResponse(request->args[0], 201, "");
  EXPECT_EQ(invoked.get().status, 201);
  EXPECT_TRUE(specific->signals("MethodRequestReceived").empty()) << "a unicast request leaked";
  // A name held by one peer cannot be claimed by another; released names can.
  EXPECT_EQ(errorNameOf([&] { catchAll.RegisterMethodHandler("ping"); }),
            "org.iothubd.Error.AlreadyClaimed");
  specific->UnregisterMethodHandler("ping");
  catchAll.RegisterMethodHandler("ping");
}

TEST_F(DeviceApiTest, UnclaimedMethodIsAnswered501InUnderASecond) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto started = Steady::now();
  auto result = service.invokeMethod(kDevice, "selfDestruct", "{}", 10s);
  auto took = Steady::now() - started;
  EXPECT_EQ(result.status, 501);
  EXPECT_NE(result.payload.find("no handler claimed method 'selfDestruct'"), std::string::npos)
      << result.payload;
  EXPECT_LT(took, 1s);
}

TEST_F(DeviceApiTest, ClaimerLeavingMidRequestGets503AtOnce) {
  writeConfig("[methods]\nmethod_response_timeout = 60\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto handler = newClient();
  handler->RegisterMethodHandler("slow");
  auto invoked = std::async(std::launch::async,
                            [&] { return service.invokeMethod(kDevice, "slow", "{}", 20s); });
  ASSERT_TRUE(handler->waitForSignal("MethodRequestReceived").has_value());
  auto left = Steady::now();
  handler.reset();  // the app leaves the bus
  auto result = invoked.get();
  EXPECT_EQ(result.status, 503);
  EXPECT_LT(Steady::now() - left, 10s) << "answered by the timeout, not by the departure";
  // Its claim went with it: the next request for the name is unclaimed.
  EXPECT_EQ(service.invokeMethod(kDevice, "slow", "{}", 10s).status, 501);
}

TEST_F(DeviceApiTest, UnansweredMethodGets504AfterTheConfiguredTimeoutAndALateAnswerIsRefused) {
  writeConfig("[methods]\nmethod_response_timeout = 2\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  c.RegisterMethodHandler("sleepy");
  auto started = Steady::now();
  auto invoked = std::async(std::launch::async,
                            [&] { return service.invokeMethod(kDevice, "sleepy", "{}", 20s); });
  auto request = c.waitForSignal("MethodRequestReceived");
  ASSERT_TRUE(request.has_value());
  auto result = invoked.get();
  EXPECT_EQ(result.status, 504);
  EXPECT_GE(Steady::now() - started, 2s);
  EXPECT_EQ(errorNameOf([&] { c.SendMethodResponse(request->args[0], 200, "{}"); }),
            "org.iothubd.Error.OperationTimeout");
}

TEST_F(DeviceApiTest, TwinGetAndReportedPatchesWithGrowingVersions) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  auto& c = client();
  std::string twin = c.GetTwin();
  EXPECT_NE(twin.find("\"desired\""), std::string::npos) << twin;
  EXPECT_NE(twin.find("\"reported\""), std::string::npos) << twin;
  uint64_t v1 = c.PatchTwinReportedProperties(R"({"firmware":"1.0.0"})");
  uint64_t v2 = c.PatchTwinReportedProperties(R"({"firmware":"1.0.1","uptime":5})");
  EXPECT_GT(v2, v1);
  std::string seen = service.getTwin(kDevice);
  EXPECT_NE(seen.find(R"("firmware":"1.0.1")"), std::string::npos) << seen;
  EXPECT_NE(seen.find("\"$version\":" + std::to_string(v2)), std::string::npos) << seen;
  EXPECT_NE(c.GetTwin().find(R"("uptime":5)"), std::string::npos);
}

TEST_F(DeviceApiTest, LiveDesiredPatchesArriveAsSignals) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  service.patchDesired(kDevice, R"({"interval":30})");
  auto patch = c.waitForSignal("TwinDesiredPropertiesPatchReceived", [](const SignalRecord& r) {
    return r.args[0].find("interval") != std::string::npos;
  });
  ASSERT_TRUE(patch.has_value());
  EXPECT_NE(patch->args[0].find(R"("interval":30)"), std::string::npos) << patch->args[0];
}

TEST_F(DeviceApiTest, DesiredChangeMadeWhileDisconnectedReachesAppsAfterReconnect) {
  writeConfig("[connection]\nkeep_connected = false\n");  // so that Disconnect closes the link
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  c.Disconnect();
  service.patchDesired(kDevice, R"({"mode":"eco"})");  // the hub does not queue it for us
  c.Connect();
  auto full = c.waitForSignal("TwinDesiredPropertiesPatchReceived", [](const SignalRecord& r) {
    return r.args[0].find("eco") != std::string::npos;
  });
  ASSERT_TRUE(full.has_value());
  EXPECT_NE(full->args[0].find(R"("mode":"eco")"), std::string::npos) << full->args[0];
}

TEST_F(DeviceApiTest, DroppedConnectionReconnectsResubscribesAndKeepsDelivering) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  service.dropConnection(kDevice);
  EXPECT_TRUE(c.waitForConnectionStateChanged(false));
  auto exception = c.waitForSignal("BackgroundException");
  ASSERT_TRUE(exception.has_value());
  EXPECT_EQ(exception->args[0], "org.iothubd.Error.ConnectionDropped");
  EXPECT_TRUE(c.waitForConnectionStateChanged(true));
  EXPECT_EQ(c.ConnectionState(), "connected");
  bool sawReconnecting = false;
  for (const auto& r : c.signals("PropertiesChanged")) {
    auto it = r.changed.find("ConnectionState");
    sawReconnecting |= it != r.changed.end() && it->second.get<std::string>() == "reconnecting";
  }
  EXPECT_TRUE(sawReconnecting);
  service.sendC2d(kDevice, "after the reconnect");
  auto m = c.waitForSignal("MessageReceived");
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(std::string(m->body.begin(), m->body.end()), "after the reconnect");
}

TEST_F(DeviceApiTest, TwinErrorsFromTheHubCarryTheirStatus) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  service.twinFault(kDevice, hubemu::TwinFault{0ms, 500, 1});
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().GetTwin(); }, &message), "org.iothubd.Error.Service");
  EXPECT_NE(message.find("500"), std::string::npos) << message;
  service.twinFault(kDevice, hubemu::TwinFault{0ms, 429, 1});
  EXPECT_EQ(errorNameOf([&] { client().PatchTwinReportedProperties(R"({"a":1})"); }, &message),
            "org.iothubd.Error.Service");
  EXPECT_NE(message.find("429"), std::string::npos) << message;
  EXPECT_GT(client().PatchTwinReportedProperties(R"({"a":2})"), 0u);
}

TEST_F(DeviceApiTest, RefusedReconnectsAreRetriedUntilTheHubTakesUsBack) {
  writeConfig("[connection]\nconnection_retry_interval = 1\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  service.refuseConnects(kDevice, 2, true);  // unavailable twice, then accepted again
  service.dropConnection(kDevice);
  ASSERT_TRUE(c.waitForConnectionStateChanged(false));
  ASSERT_TRUE(c.waitForConnectionStateChanged(true, 20s));
  EXPECT_GE(service.events("auth-refused", kDevice).size(), 1u);
  EXPECT_FALSE(c.SendMessage("back", {}, {}).empty());
}

TEST_F(DeviceApiTest, AHubThatEndsTheTokenEarlyIsReconnectedWithAFreshOne) {
  // Links that end 2 s after their CONNACK back off with a floor (README "How iothubd retries"):
  // a short schedule keeps the test short.
  writeConfig(
      "[connection]\nconnection_retry_initial_delay = 0.2\nconnection_retry_max_delay = 2\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  size_t auths = service.authCount(kDevice);
  service.capTokenLifetime(kDevice, 2s);  // the hub now considers tokens expired after 2 s
  service.dropConnection(kDevice);
  ASSERT_TRUE(service.waitForAuthCount(kDevice, auths + 1, 10s));
  // The capped connection is kicked when its token "expires"; the daemon comes back each time.
  ASSERT_TRUE(service.waitForEvent("kick", kDevice, 10s).has_value());
  ASSERT_TRUE(service.waitForAuthCount(kDevice, auths + 2, 15s));
  service.capTokenLifetime(kDevice, 0s);
  EXPECT_FALSE(c.SendMessage("still here", {}, {}).empty());
}

TEST_F(DeviceApiTest, ShortLivedTokensAreRenewedWithoutAnOutageOverAMinuteOfTraffic) {
  writeConfig("[connection]\nsastoken_ttl = 10\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  service.clearLedger(kDevice);
  size_t authsBefore = service.authCount(kDevice);
  auto end = Steady::now() + 62s;
  size_t sent = 0;
  while (Steady::now() < end) {
    ASSERT_FALSE(c.SendMessage("tick " + std::to_string(sent), {}, {}).empty()) << "call " << sent;
    ++sent;
  }
  size_t renewals = service.authCount(kDevice) - authsBefore;
  std::cout << "sent " << sent << " messages, " << renewals << " token renewals\n";
  EXPECT_GE(renewals, 5u);
  EXPECT_TRUE(c.Connected());
  for (const auto& r : c.signals("ConnectionStateChanged")) {
    EXPECT_NE(r.args[0], "false") << "a planned renewal looked like an outage";
  }
  for (const auto& r : c.signals("PropertiesChanged")) {
    auto it = r.changed.find("Connected");
    EXPECT_FALSE(it != r.changed.end() && !it->second.get<bool>()) << "Connected went false";
  }
  // Every message reached the hub exactly once (the ledger counts what the broker accepted).
  auto ledger = service.ledger(kDevice);
  EXPECT_EQ(ledger.total, static_cast<int64_t>(sent));
  EXPECT_EQ(ledger.duplicates, 0);
}

TEST_F(DeviceApiTest, BadInputGetsItsNamedErrorAndTheNextCallSucceeds) {
  startDaemon();
  auto& c = client();
  struct Case {
    const char* what;
    std::function<void()> call;
    const char* error;
  };
  std::vector<Case> cases = {
      {"invalid JSON patch", [&] { c.PatchTwinReportedProperties(R"({"a":)"); },
       "org.freedesktop.DBus.Error.InvalidArgs"},
      {"non-object patch", [&] { c.PatchTwinReportedProperties("[1,2]"); },
       "org.freedesktop.DBus.Error.InvalidArgs"},
      {"unknown system property",
       [&] {
         c.SendMessage("x", {}, {{"priority", "high"}});
       },
       "org.freedesktop.DBus.Error.InvalidArgs"},
      {"reserved custom property",
       [&] {
         c.SendMessage("x", {{"iothub-x", "1"}}, {});
       },
       "org.freedesktop.DBus.Error.InvalidArgs"},
      {"oversize body", [&] { c.SendMessage(std::string(300000, 'x'), {}, {}); },
       "org.iothubd.Error.MessageTooLarge"},
      {"response for an unknown id", [&] { c.SendMethodResponse("no-such-request", 200, "{}"); },
       "org.freedesktop.DBus.Error.InvalidArgs"},
      {"status below 100", [&] { c.SendMethodResponse("r", 99, "{}"); },
       "org.freedesktop.DBus.Error.InvalidArgs"},
      {"status above 599", [&] { c.SendMethodResponse("r", 600, "{}"); },
       "org.freedesktop.DBus.Error.InvalidArgs"},
      {"response payload not JSON", [&] { c.SendMethodResponse("r", 200, "{oops"); },
       "org.freedesktop.DBus.Error.InvalidArgs"},
      {"empty method name", [&] { c.RegisterMethodHandler(""); },
       "org.freedesktop.DBus.Error.InvalidArgs"},
      {"method name with slash", [&] { c.RegisterMethodHandler("a/b"); },
       "org.freedesktop.DBus.Error.InvalidArgs"},
      {"unregister a name not held", [&] { c.UnregisterMethodHandler("never"); },
       "org.freedesktop.DBus.Error.InvalidArgs"},
      {"UpdateSasToken without sas-token auth",
       [&] { c.UpdateSasToken("SharedAccessSignature sr=a&sig=b&se=1"); },
       "org.iothubd.Error.NotSupported"},
  };
  for (const auto& tc : cases) {
    std::string message;
    EXPECT_EQ(errorNameOf(tc.call, &message), tc.error) << tc.what;
    EXPECT_FALSE(message.empty()) << tc.what;
    EXPECT_FALSE(c.SendMessage(std::string("after ") + tc.what, {}, {}).empty()) << tc.what;
  }
  EXPECT_TRUE(daemon_->running());
}

class SasTokenAuthTest : public DaemonTest {
 protected:
  std::string token(const std::string& device, std::chrono::seconds ttl) {
    return hubemu::makeSasToken(hub_.hubHost(), device, deviceKey_,
                                static_cast<int64_t>(std::time(nullptr) + ttl.count()));
  }
  void useToken(const std::string& t) {
    auto user = serviceUser();
    writeFile(credentialsDir_ + "/sas-token", t + "\n", 0600, static_cast<int>(user.uid),
              static_cast<int>(user.gid));
    writeConfig("[hub]\nauthentication = sas-token\n");
  }
};

TEST_F(SasTokenAuthTest, ConnectsAsksForANewTokenAndRenewsThroughUpdateSasToken) {
  useToken(token(kDevice, 16s));
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  ASSERT_FALSE(c.SendMessage("with the operator's token", {}, {}).empty());
  EXPECT_EQ(c.AuthenticationType(), "sas-token");
  // About halfway for a short token (120 s before expiry for an ordinary one).
  ASSERT_TRUE(c.waitForSignal("NewSasTokenRequired", {}, 15s).has_value());
  EXPECT_EQ(errorNameOf([&] { c.UpdateSasToken(token("dev2", 3600s)); }),
            "org.freedesktop.DBus.Error.InvalidArgs");
  EXPECT_EQ(errorNameOf([&] { c.UpdateSasToken(token(kDevice, -10s)); }),
            "org.freedesktop.DBus.Error.InvalidArgs");
  size_t auths = service.authCount(kDevice);
  std::string fresh = token(kDevice, 3600s);
  c.UpdateSasToken(fresh);
  ASSERT_TRUE(service.waitForAuthCount(kDevice, auths + 1, 10s));
  auto latest = service.authEvents(kDevice).back();
  EXPECT_GT(latest.se, static_cast<int64_t>(std::time(nullptr)) + 3000);
  ASSERT_FALSE(c.SendMessage("with the new token", {}, {}).empty());
  EXPECT_EQ(c.SasTokenExpiry(), static_cast<uint64_t>(latest.se));
  for (const auto& r : c.signals("ConnectionStateChanged")) {
    EXPECT_NE(r.args[0], "false") << "re-authorising looked like an outage";
  }
}

TEST_F(SasTokenAuthTest, ATokenTheHubRefusesLeavesThePreviousOneInUseAndSaysSo) {
  useToken(token(kDevice, 3600s));
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  const std::uint64_t expiry = c.SasTokenExpiry();
  const size_t auths = service.authCount(kDevice);
  // Well-formed, for this device, not expired: only the hub can tell the signature is wrong.
  c.UpdateSasToken(hubemu::makeSasToken(hub_.hubHost(), kDevice, hubemu::randomKey(),
                                        static_cast<int64_t>(std::time(nullptr) + 7200)));
  auto refused = c.waitForSignal("BackgroundException");
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->args[0], "org.iothubd.Error.Credential");
  EXPECT_NE(refused->args[1].find("the previous token"), std::string::npos) << refused->args[1];
  ASSERT_TRUE(service.waitForAuthCount(kDevice, auths + 1, 10s))
      << "reconnected with the old token";
  ASSERT_FALSE(c.SendMessage("with the previous token", {}, {}).empty());
  EXPECT_EQ(c.SasTokenExpiry(), expiry);
  EXPECT_NE(c.LastError().find("refused the new SAS token"), std::string::npos) << c.LastError();
  for (const auto& r : c.signals("ConnectionStateChanged")) {
    EXPECT_NE(r.args[0], "false") << "the refused token took the device offline";
  }
}

}  // namespace
}  // namespace iothubd::testing
