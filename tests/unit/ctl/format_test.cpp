// SPDX-License-Identifier: MIT
#include "format.hpp"

#include <gtest/gtest.h>

namespace iothubd::ctl {
namespace {

using namespace std::chrono_literals;

TEST(Format, BytesDurationsAndTimes) {
  EXPECT_EQ(formatBytes(0), "0 B");
  EXPECT_EQ(formatBytes(1023), "1023 B");
  EXPECT_EQ(formatBytes(1536), "1.5 KiB");
  EXPECT_EQ(formatBytes(64ull * 1024 * 1024), "64.0 MiB");
  EXPECT_EQ(formatBytes(5ull * 1024 * 1024 * 1024), "5.0 GiB");
  EXPECT_EQ(formatDuration(0s), "0 s");
  EXPECT_EQ(formatDuration(45s), "45 s");
  EXPECT_EQ(formatDuration(192s), "3 min 12 s");
  EXPECT_EQ(formatDuration(3600s), "1 h");
  EXPECT_EQ(formatDuration(7500s), "2 h 5 min");
  EXPECT_EQ(formatDuration(86400s + 4 * 3600s + 59s), "1 day 4 h");
  EXPECT_EQ(formatDuration(-5s), "0 s");
  EXPECT_EQ(formatUtc(1796580000), "2026-12-06 18:00:00 UTC");
}

TEST(Format, ProgressForATerminalAndForALog) {
  EXPECT_EQ(progressBar("r.csv", 45, 100, 10), "r.csv [####......]  45%  45 B of 100 B");
  EXPECT_EQ(progressBar("r.csv", 100, 100, 10), "r.csv [##########] 100%  100 B of 100 B");
  EXPECT_EQ(progressBar("pipe", 2048, 0, 10), "pipe 2.0 KiB");
  EXPECT_EQ(progressLine("r.csv", 4718592, 10485760),
            "upload r.csv: 4718592 of 10485760 bytes (45%)");
  EXPECT_EQ(progressLine("pipe", 10, 0), "upload pipe: 10 bytes");
}

TEST(Format, JsonStringsAreValidUtf8) {
  EXPECT_EQ(jsonString("a \"b\"\n"), R"("a \"b\"\n")");
  EXPECT_EQ(jsonString(std::string("\xff", 1)), R"("?")");
  EXPECT_EQ(jsonStringMap({{"k", "v"}, {"a", "b"}}), R"({"a":"b","k":"v"})");
}

TEST(Format, JsonIsReformattedWithNumbersKeptExactly) {
  // A number beyond double precision, and one RapidJSON 1.1.0 would round, stay as written.
  const std::string twin =
      R"( {"desired":{"big":12345678901234567890123,"f":0.1e-7},"a":[1,true,null]} )";
  EXPECT_EQ(*compactJson(twin),
            R"({"desired":{"big":12345678901234567890123,"f":0.1e-7},"a":[1,true,null]})");
  EXPECT_EQ(*prettyJson(R"({"a":{"b":1}})"), "{\n  \"a\": {\n    \"b\": 1\n  }\n}");
  EXPECT_TRUE(isJson("\"text\""));
  EXPECT_TRUE(isJson(" 42 "));
  EXPECT_FALSE(isJson("rebooting"));
  EXPECT_FALSE(isJson("{} {}"));
  EXPECT_FALSE(isJson(""));
  EXPECT_FALSE(isJson(std::string(100000, '[')));  // deep nesting: no stack overflow, refused
  EXPECT_FALSE(prettyJson("{").has_value());
}

TEST(Format, CloudMessagesAreOneJsonLineWithBinaryBodiesInBase64) {
  EXPECT_EQ(
      formatCloudMessage("hi", {{"colour", "red"}}, {{"message-id", "m1"}}),
      R"({"body":"hi","properties":{"colour":"red"},"systemProperties":{"message-id":"m1"}})");
  EXPECT_EQ(formatCloudMessage(std::string("\xff\x00", 2), {}, {}),
            R"({"bodyBase64":"/wA=","properties":{},"systemProperties":{}})");
}

DaemonStatus connectedStatus() {
  DaemonStatus s;
  s.properties = {{"Version", std::string("0.1.0")},
                  {"Connected", true},
                  {"ConnectionState", std::string("connected")},
                  {"HostName", std::string("contoso.azure-devices.net")},
                  {"GatewayHostName", std::string("edge.local")},
                  {"DeviceId", std::string("gw-7")},
                  {"ModuleId", std::string("")},
                  {"AuthenticationType", std::string("sas")},
                  {"SasTokenExpiry", std::uint64_t{1796583600}},
                  {"OutboxLength", std::uint64_t{1}},
                  {"OutboxBytes", std::uint64_t{2048}},
                  {"MessagesDelivered", std::uint64_t{12}},
                  {"MessagesDropped", std::uint64_t{0}},
                  {"MethodHandlers", std::map<std::string, std::string>{{"reboot", ":1.7"}}},
                  {"LastError", std::string("")}};
  s.pid = 4711;
  s.uptime = 192s;
  return s;
}

TEST(Format, StatusAtAGlance) {
  EXPECT_EQ(formatStatus(connectedStatus(), 1796580000),
            "iothubd 0.1.0 (pid 4711, up 3 min 12 s)\n"
            "     State: connected\n"
            "       Hub: contoso.azure-devices.net via gateway edge.local\n"
            "    Device: gw-7\n"
            "      Auth: sas; token expires 2026-12-06 19:00:00 UTC (in 1 h)\n"
            "    Outbox: 1 message, 2.0 KiB\n"
            "  Messages: 12 delivered, 0 dropped since start\n"
            "   Methods: reboot\n"
            "Last error: none\n");
  EXPECT_EQ(formatStatusJson(connectedStatus()),
            R"({"AuthenticationType":"sas","Connected":true,"ConnectionState":"connected",)"
            R"("DeviceId":"gw-7","GatewayHostName":"edge.local",)"
            R"("HostName":"contoso.azure-devices.net","LastError":"",)"
            R"("MessagesDelivered":12,"MessagesDropped":0,"MethodHandlers":{"reboot":":1.7"},)"
            R"("ModuleId":"","OutboxBytes":2048,"OutboxLength":1,"SasTokenExpiry":1796583600,)"
            R"("Version":"0.1.0","Pid":4711,"UptimeSeconds":192})");
}

TEST(Format, StatusShowsTheProvisioningStateOfADpsDevice) {
  DaemonStatus s = connectedStatus();
  s.properties["ProvisioningState"] = std::string("not-configured");
  EXPECT_EQ(formatStatus(s, 1796580000).find("DPS:"), std::string::npos);
  s.properties["ProvisioningState"] = std::string("assigned");
  EXPECT_NE(formatStatus(s, 1796580000)
                .find("       Hub: contoso.azure-devices.net via gateway edge.local\n"
                      "       DPS: assigned\n"
                      "    Device: gw-7\n"),
            std::string::npos)
      << formatStatus(s, 1796580000);
}

TEST(Format, MethodClaimsAsATable) {
  EXPECT_EQ(formatMethodClaims({{"reboot", ":1.7", 42, "python3 app.py"}, {"*", ":1.9", {}, ""}}),
            "METHOD  CLAIMED BY\n"
            "reboot  :1.7 (pid 42: python3 app.py)\n"
            "*       :1.9\n");
  EXPECT_EQ(formatMethodClaims({}),
            "No direct method is claimed: the hub's requests are answered 501.\n");
  EXPECT_EQ(formatMethodClaimsJson({{"reboot", ":1.7", 42, "app"}}),
            R"([{"method":"reboot","owner":":1.7","pid":42,"command":"app"}])");
}

}  // namespace
}  // namespace iothubd::ctl
