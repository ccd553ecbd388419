// SPDX-License-Identifier: MIT
// Limits on what bus peers can make the daemon hold (issue 9), each over the real bus against
// the real daemon and hub emulator: every over-limit call gets its named error at once, nothing
// is held or sent for it, and other apps (and the next call) are served as before.
#include <sys/stat.h>

#include <functional>
#include <future>

#include "daemon_fixture.hpp"

namespace iothubd::testing {
namespace {

using Steady = std::chrono::steady_clock;

class LimitsTest : public DaemonTest {
 protected:
  /// GetTwin without waiting for its answer; the future holds the error name ("" = success).
  static std::future<std::string> getTwinAsync(DeviceClient& c) {
    auto promise = std::make_shared<std::promise<std::string>>();
    auto future = promise->get_future();
    c.getProxyForTest()
        .callMethodAsync("GetTwin")
        .onInterface("org.iothubd.Device1")
        .uponReplyInvoke([promise](const sdbus::Error* error, const std::string&) {
          promise->set_value(error != nullptr ? error->getName() : std::string());
        });
    return future;
  }
};

std::string deepJson(int depth) {
  return std::string(static_cast<std::size_t>(depth), '[') + "1" +
         std::string(static_cast<std::size_t>(depth), ']');
}

TEST_F(LimitsTest, MessagesAndPayloadsOverALimitGetTheirNamedErrorAndNothingIsSent) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  StringMap manyProperties;
  for (int i = 0; i < 257; ++i) {
    manyProperties["p" + std::to_string(i)] = "v";
  }
  StringMap wideBag;  // 60 000 bytes as the hub counts them, 180 000 percent-encoded
  for (int i = 0; i < 200; ++i) {
    wideBag["p" + std::to_string(i)] = std::string(300, '/');
  }
  struct Case {
    const char* what;
    std::function<void()> call;
    const char* error;
  };
  const std::vector<Case> cases = {
      {"257 properties", [&] { c.SendMessage("x", manyProperties, {}); },
       "org.iothubd.Error.MessageTooLarge"},
      {"257 properties, queued", [&] { c.QueueMessage("x", manyProperties, {}); },
       "org.iothubd.Error.MessageTooLarge"},
      {"a property value over 16 KiB",
       [&] {
         c.SendMessage("x", {{"k", std::string(16385, 'v')}}, {});
       },
       "org.iothubd.Error.MessageTooLarge"},
      {"a property name over 256 bytes",
       [&] {
         c.SendBinaryMessage({1, 2}, {{std::string(257, 'n'), "v"}}, {});
       },
       "org.iothubd.Error.MessageTooLarge"},
      {"a property bag that no MQTT topic holds", [&] { c.SendMessage("x", wideBag, {}); },
       "org.iothubd.Error.MessageTooLarge"},
      {"a patch 33 levels deep",
       [&] { c.PatchTwinReportedProperties("{\"a\":" + deepJson(32) + "}"); },
       "org.iothubd.Error.LimitExceeded"},
      {"a patch over 256 KiB",
       [&] { c.PatchTwinReportedProperties("{\"a\":\"" + std::string(256 * 1024, 'x') + "\"}"); },
       "org.iothubd.Error.MessageTooLarge"},
      {"a method response 33 levels deep", [&] { c.SendMethodResponse("r", 200, deepJson(33)); },
       "org.iothubd.Error.LimitExceeded"},
      {"a method response over 128 KiB",
       [&] { c.SendMethodResponse("r", 200, "\"" + std::string(128 * 1024, 'x') + "\""); },
       "org.iothubd.Error.MessageTooLarge"},
      {"an upload correlation id over 1024 bytes",
       [&] { c.NotifyBlobUploadStatus(std::string(1025, 'c'), true, 200, "ok"); },
       "org.freedesktop.DBus.Error.InvalidArgs"},
  };
  int sent = 0;
  for (const auto& tc : cases) {
    std::string message;
    EXPECT_EQ(errorNameOf(tc.call, &message), tc.error) << tc.what << ": " << message;
    EXPECT_LT(message.size(), 512u) << tc.what << ": the error names the limit, not the input";
    EXPECT_FALSE(c.SendMessage(std::string("after ") + tc.what, {}, {}).empty()) << tc.what;
    ++sent;
  }
  // The limits sit exactly at their values: these pass.
  StringMap atLimit = manyProperties;
  atLimit.erase("p0");
  EXPECT_FALSE(c.SendMessage("256 properties", atLimit, {}).empty());
  EXPECT_FALSE(c.SendMessage("long value", {{"k", std::string(16384, 'v')}}, {}).empty());
  EXPECT_GT(c.PatchTwinReportedProperties("{\"a\":" + deepJson(10) + "}"), 0u);
  sent += 2;
  for (int i = 0; i < sent; ++i) {
    ASSERT_TRUE(service.waitForTelemetry({}, 10s).has_value()) << i;
  }
  EXPECT_FALSE(service.waitForTelemetry({}, 500ms).has_value())
      << "a refused message reached the hub";
  EXPECT_EQ(c.OutboxLength(), 0u);
}

TEST_F(LimitsTest, MethodClaimsPerAppAreBoundedAndAReleasedNameFreesItsSlot) {
  writeConfig("[limits]\nmax_method_claims_per_app = 3\n");
  startDaemon();
  auto& c = client();
  c.RegisterMethodHandler("a");
  c.RegisterMethodHandler("b");
  c.RegisterMethodHandler("c");
  c.RegisterMethodHandler("c");  // holding a name again is no new claim
  std::string message;
  EXPECT_EQ(errorNameOf([&] { c.RegisterMethodHandler("d"); }, &message),
            "org.iothubd.Error.LimitExceeded");
  EXPECT_NE(message.find("max_method_claims_per_app"), std::string::npos) << message;
  auto other = newClient();
  other->RegisterMethodHandler("d");  // per app: another connection has its own
  c.UnregisterMethodHandler("a");
  c.RegisterMethodHandler("e");
}

TEST_F(LimitsTest, PendingCallsArePerConnectionAndFreedWhenAnswered) {
  writeConfig("[limits]\nmax_pending_calls_per_app = 2\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  service.twinFault(kDevice, hubemu::TwinFault{3s, 0, -1});  // twin answers come 3 s late
  auto& c = client();
  auto first = getTwinAsync(c);
  auto second = getTwinAsync(c);
  // Calls on one connection arrive in order: both are pending when this one is dispatched.
  const auto start = Steady::now();
  std::string message;
  EXPECT_EQ(errorNameOf([&] { c.GetTwin(); }, &message), "org.iothubd.Error.LimitExceeded");
  EXPECT_LT(Steady::now() - start, 2s) << "refused at once, not after the twin answers";
  EXPECT_NE(message.find("max_pending_calls_per_app"), std::string::npos) << message;
  // Another app is not affected.
  auto other = newClient();
  EXPECT_FALSE(other->GetTwin().empty());
  EXPECT_EQ(first.get(), "");
  EXPECT_EQ(second.get(), "");
  service.clearFaults(kDevice);
  EXPECT_FALSE(c.GetTwin().empty()) << "the answered calls freed their slots";
}

TEST_F(LimitsTest, MethodRequestsBeyondThePendingLimitAreAnswered503AtOnce) {
  writeConfig(
      "[limits]\nmax_pending_method_requests = 1\n[methods]\nmethod_response_timeout = 30\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  c.RegisterMethodHandler("slow");
  auto first = std::async(std::launch::async,
                          [&] { return service.invokeMethod(kDevice, "slow", "{}", 20s); });
  auto request = c.waitForSignal("MethodRequestReceived");
  ASSERT_TRUE(request.has_value());
  const auto start = Steady::now();
  const auto second = service.invokeMethod(kDevice, "slow", "{}", 20s);
  EXPECT_EQ(second.status, 503);
  EXPECT_NE(second.payload.find("too many method requests pending"), std::string::npos)
      << second.payload;
  EXPECT_LT(Steady::now() - start, 5s);
  c.SendMethodResponse(request->args[0], 200, R"({"done":true})");
  EXPECT_EQ(first.get().status, 200);
  // The answered request freed the slot.
  auto third = std::async(std::launch::async,
                          [&] { return service.invokeMethod(kDevice, "slow", "{}", 20s); });
  auto next = c.waitForSignal("MethodRequestReceived");
  ASSERT_TRUE(next.has_value());
  c.SendMethodResponse(next->args[0], 200, "{}");
  EXPECT_EQ(third.get().status, 200);
}

// Issue 14: what the hub would refuse with 400 (reported patches) or never deliver (method
// responses) is refused at once with an error naming the hub's rule, and nothing reaches the
// hub. The emulator is made lenient for this test (twinLimits off): had the daemon sent a patch,
// the emulator would have applied it and said so (a twin-reported event).
TEST_F(LimitsTest, WhatTheHubWouldRefuseIsRefusedAtOnceNamingTheRuleAndNeverSent) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  service.setBehaviour({.twinLimits = false});
  awaitOnline();
  auto& c = client();
  struct Case {
    const char* what;
    std::string patch;
    const char* error;
    const char* rule;
  };
  std::string eightStrings = "{";
  for (int i = 0; i < 8; ++i) {
    eightStrings += (i ? ",\"" : "\"") + std::string(1, static_cast<char>('a' + i)) + "\":\"" +
                    std::string(4096, 'v') + "\"";
  }
  eightStrings += "}";
  std::string tooDeep = "1";  // the patch's own object and 11 levels below it
  for (int i = 0; i < 12; ++i) {
    tooDeep = "{\"l\":" + tooDeep + "}";
  }
  const std::vector<Case> cases = {
      {"a key with a dot", R"({"fw.version":"1.0"})", "org.freedesktop.DBus.Error.InvalidArgs",
       "does not allow in twin keys"},
      {"a key with a dollar", R"({"net":{"$x":1}})", "org.freedesktop.DBus.Error.InvalidArgs",
       "does not allow in twin keys"},
      {"a key with a space", R"({"alert level":1})", "org.freedesktop.DBus.Error.InvalidArgs",
       "does not allow in twin keys"},
      {"a key over 1 KB", "{\"" + std::string(1025, 'k') + "\":1}",
       "org.iothubd.Error.MessageTooLarge", "at most 1 KB (1024 bytes) per twin key"},
      {"a string over 4 KB", R"({"log":")" + std::string(4097, 'x') + "\"}",
       "org.iothubd.Error.MessageTooLarge", "at most 4 KB (4096 bytes) per twin string"},
      {"11 levels", tooDeep, "org.freedesktop.DBus.Error.InvalidArgs",
       "IoT Hub allows 10 levels in twins"},
      {"an integer beyond 2^52", R"({"counter":4503599627370496})",
       "org.freedesktop.DBus.Error.InvalidArgs", "(-2^52..2^52-1)"},
      {"32 KB as the hub counts", eightStrings, "org.iothubd.Error.MessageTooLarge",
       "reported properties may hold at most 32 KB (32768 bytes)"},
  };
  for (const auto& tc : cases) {
    std::string message;
    const auto start = Steady::now();
    EXPECT_EQ(errorNameOf([&] { c.PatchTwinReportedProperties(tc.patch); }, &message), tc.error)
        << tc.what << ": " << message;
    EXPECT_NE(message.find(tc.rule), std::string::npos) << tc.what << ": " << message;
    EXPECT_LT(Steady::now() - start, 2s) << tc.what << ": not at once";
  }
  // Right at the limits the hub takes them.
  EXPECT_EQ(c.PatchTwinReportedProperties(R"({"s":")" + std::string(4096, 'x') + "\"}"), 2u);
  ASSERT_TRUE(service.waitForEvent("twin-reported", kDevice).has_value());
  EXPECT_EQ(service.events("twin-reported", kDevice).size(), 1u)
      << "a refused patch reached the hub";

  // Method responses: at most 128 KB of JSON; the request stays answerable.
  c.RegisterMethodHandler("report");
  auto invoked = std::async(std::launch::async,
                            [&] { return service.invokeMethod(kDevice, "report", "{}", 20s); });
  auto request = c.waitForSignal("MethodRequestReceived");
  ASSERT_TRUE(request.has_value());
  std::string message;
  EXPECT_EQ(errorNameOf(
                [&] {
                  c.SendMethodResponse(request->args[0], 200,
                                       "\"" + std::string(128 * 1024, 'x') + "\"");
                },
                &message),
            "org.iothubd.Error.MessageTooLarge");
  EXPECT_NE(message.find("at most 128 KB (131072 bytes) in a method response"), std::string::npos)
      << message;
  EXPECT_EQ(errorNameOf([&] { c.SendMethodResponse(request->args[0], 200, "{not json"); }),
            "org.freedesktop.DBus.Error.InvalidArgs");
  c.SendMethodResponse(request->args[0], 200, R"({"ok":true})");
  const auto result = invoked.get();
  EXPECT_EQ(result.status, 200);
  EXPECT_EQ(result.payload, R"({"ok":true})");
  EXPECT_TRUE(service.events("method-response-refused", kDevice).empty());
}

TEST_F(LimitsTest, WhatTheHubSendsOverTheBoundIsDroppedOrAnsweredNeverForwarded) {
  // 256 KiB pass on (IoT Hub itself sends at most 64 KiB C2D, 128 KiB method payloads and 32 KiB
  // desired sections); beyond that the daemon would be asked to build signals near the bus's
  // limit.
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto& c = client();
  const std::string big(300 * 1024, 'b');

  service.sendC2d(kDevice, big);
  auto dropped = c.waitForSignal("BackgroundException");
  ASSERT_TRUE(dropped.has_value());
  EXPECT_EQ(dropped->args[0], "org.iothubd.Error.MessageTooLarge");
  EXPECT_NE(dropped->args[1].find("cloud-to-device message of 307200 bytes"), std::string::npos)
      << dropped->args[1];
  service.sendC2d(kDevice, "small");
  auto small = c.waitForSignal("MessageReceived");
  ASSERT_TRUE(small.has_value());
  EXPECT_EQ(std::string(small->body.begin(), small->body.end()), "small")
      << "the large one was forwarded";
  EXPECT_EQ(c.signals("MessageReceived").size(), 1u);

  service.patchDesired(kDevice, R"({"big":")" + big + R"("})");
  auto patchDropped = c.waitForSignal("BackgroundException");
  ASSERT_TRUE(patchDropped.has_value());
  EXPECT_NE(patchDropped->args[1].find("desired-properties patch"), std::string::npos);
  service.patchDesired(kDevice, R"({"small":1})");
  ASSERT_TRUE(c.waitForSignal("TwinDesiredPropertiesPatchReceived", [](const SignalRecord& r) {
                 return r.args[0].find("small") != std::string::npos;
               }).has_value());
  for (const auto& r : c.signals("TwinDesiredPropertiesPatchReceived")) {
    EXPECT_EQ(r.args[0].find("\"big\""), std::string::npos) << "the large patch was forwarded";
  }

  c.RegisterMethodHandler("*");
  auto tooLarge = service.invokeMethod(kDevice, "upload", "\"" + big + "\"", 5s);
  EXPECT_EQ(tooLarge.status, 413);
  auto badName = service.invokeMethod(kDevice, std::string(129, 'n'), "{}", 5s);
  EXPECT_EQ(badName.status, 400);
  EXPECT_TRUE(c.signals("MethodRequestReceived").empty()) << "a request was forwarded";
  EXPECT_NE(daemon_->log().find("answering 413"), std::string::npos);
}

TEST_F(LimitsTest, MethodNamesAndEveryQuotedStringInAnErrorAreBounded) {
  writeConfig("[file_upload]\nupload_from_path_directories = " + daemonDir_ + "x\n");
  ::mkdir((daemonDir_ + "x").c_str(), 0755);
  startDaemon();
  auto& c = client();
  EXPECT_NO_THROW(c.RegisterMethodHandler(std::string(128, 'm')));
  std::string message;
  EXPECT_EQ(errorNameOf([&] { c.RegisterMethodHandler(std::string(129, 'm')); }, &message),
            "org.freedesktop.DBus.Error.InvalidArgs");
  EXPECT_EQ(errorNameOf([&] { c.RegisterMethodHandler("tab\there"); }),
            "org.freedesktop.DBus.Error.InvalidArgs");
  // Strings of megabytes full of bytes that quote four times as long: every error stays small.
  const std::string huge(4 * 1024 * 1024, '\x01');
  for (const auto& call : std::vector<std::function<void()>>{
           [&] { c.RegisterMethodHandler(huge); }, [&] { c.UnregisterMethodHandler(huge); },
           [&] { c.UploadFileFromPath("x", "/" + huge); },
           [&] { c.UploadFileFromPath("x", daemonDir_ + "x/" + huge); },
           [&] { c.SendMethodResponse(huge, 200, ""); },
           [&] {
             c.SendMessage("x", {{huge, "v"}}, {});
           },
           [&] {
             c.SendMessage("x", {}, {{huge, "v"}});
           }}) {
    message.clear();
    EXPECT_FALSE(errorNameOf(call, &message).empty());
    EXPECT_LE(message.size(), 2048u + 16u) << message.substr(0, 200);
  }
  EXPECT_FALSE(c.SendMessage("still serving", {}, {}).empty());
}

}  // namespace
}  // namespace iothubd::testing
