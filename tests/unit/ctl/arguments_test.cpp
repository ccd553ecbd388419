// SPDX-License-Identifier: MIT
#include "arguments.hpp"

#include <gtest/gtest.h>

#include "exit_codes.hpp"

namespace iothubd::ctl {
namespace {

Invocation parse(std::vector<std::string> args) {
  auto r = parseArguments(args);
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
  return r ? *r : Invocation{};
}

std::string refusal(std::vector<std::string> args) {
  auto r = parseArguments(args);
  EXPECT_FALSE(r.has_value());
  return r ? "" : r.error().message;
}

TEST(Arguments, SendTakesEveryMessageOptionInAnyOrder) {
  auto inv = parse({"--json", "send", "-p", "a=1", "{\"t\":1}", "--property=b=x=y", "--queue",
                    "--content-type", "application/json", "--content-encoding=utf-8",
                    "--message-id", "m1", "--system-property", "correlation-id=c"});
  EXPECT_EQ(inv.command, Command::Send);
  EXPECT_TRUE(inv.json);
  EXPECT_EQ(inv.send.body, "{\"t\":1}");
  EXPECT_EQ(inv.send.properties, (std::map<std::string, std::string>{{"a", "1"}, {"b", "x=y"}}));
  EXPECT_EQ(inv.send.systemProperties,
            (std::map<std::string, std::string>{{"content-type", "application/json"},
                                                {"content-encoding", "utf-8"},
                                                {"message-id", "m1"},
                                                {"correlation-id", "c"}}));
  EXPECT_TRUE(inv.send.queue);
  EXPECT_FALSE(inv.send.binary);
  EXPECT_FALSE(inv.send.fromStdin());
}

TEST(Arguments, DashIsStdinAndDoubleDashLetsABodyStartWithADash) {
  EXPECT_TRUE(parse({"send", "-"}).send.fromStdin());
  EXPECT_EQ(parse({"send", "--", "-5"}).send.body, "-5");
  EXPECT_EQ(parse({"twin", "patch", "-"}).patch, "-");
  EXPECT_EQ(parse({"upload", "-", "--name", "log.txt"}).uploadFile, "-");
}

TEST(Arguments, OneMessageIdCannotNameEveryLine) {
  EXPECT_NE(refusal({"send", "-", "--message-id", "x"}).find("every line"), std::string::npos);
  EXPECT_TRUE(parseArguments({"send", "-", "--binary", "--message-id", "x"}).has_value());
}

TEST(Arguments, MethodServeTakesTheCommandAfterDoubleDash) {
  auto inv = parse({"method", "serve", "reboot", "--count", "2", "--", "sh", "-c", "echo --json"});
  EXPECT_EQ(inv.command, Command::MethodServe);
  EXPECT_EQ(inv.methodName, "reboot");
  EXPECT_EQ(inv.methodCommand, (std::vector<std::string>{"sh", "-c", "echo --json"}));
  EXPECT_EQ(inv.count, 2u);
  EXPECT_FALSE(inv.json) << "options after -- belong to the command";
  EXPECT_NE(refusal({"method", "serve", "reboot"}).find("method serve NAME -- COMMAND"),
            std::string::npos);
  EXPECT_NE(refusal({"method", "serve", "reboot", "--"}).find("COMMAND"), std::string::npos);
}

TEST(Arguments, EveryCommandParses) {
  EXPECT_EQ(parse({"status"}).command, Command::Status);
  EXPECT_EQ(parse({"twin", "get"}).command, Command::TwinGet);
  EXPECT_EQ(parse({"twin", "watch", "-n", "3"}).count, 3u);
  EXPECT_EQ(parse({"method", "list"}).command, Command::MethodList);
  EXPECT_EQ(parse({"c2d", "watch"}).command, Command::C2dWatch);
  auto upload = parse({"upload", "/var/log/app.log"});
  EXPECT_EQ(upload.uploadFile, "/var/log/app.log");
  EXPECT_EQ(upload.blobName, "");
  auto check = parse({"check", "--config", "/tmp/x.conf", "--credentials-dir", "/tmp/c"});
  EXPECT_EQ(check.configPath, "/tmp/x.conf");
  EXPECT_EQ(check.credentialsDirectory, "/tmp/c");
  EXPECT_EQ(parse({"check"}).configPath, kDefaultConfig);
  EXPECT_EQ(parse({"status", "--timeout", "120"}).timeout, std::chrono::seconds(120));
  EXPECT_EQ(parse({"--help"}).command, Command::Help);
  EXPECT_EQ(parse({"send", "--help"}).command, Command::Help);
  EXPECT_EQ(parse({"--version"}).command, Command::Version);
}

TEST(Arguments, MistakesAreNamed) {
  EXPECT_EQ(refusal({}), "no command given");
  EXPECT_EQ(refusal({"frobnicate"}), "unknown command \"frobnicate\"");
  EXPECT_EQ(refusal({"twin"}), "twin needs get|patch|watch");
  EXPECT_EQ(refusal({"twin", "put"}), "unknown command \"twin put\" (twin get|patch|watch)");
  EXPECT_EQ(refusal({"status", "--queue"}), "--queue does not go with status");
  EXPECT_EQ(refusal({"send", "a", "b"}), "send: unexpected argument \"b\"");
  EXPECT_EQ(refusal({"send", "-p", "novalue", "x"}), "--property wants KEY=VALUE, not \"novalue\"");
  EXPECT_EQ(refusal({"send", "-p"}), "-p needs a value");
  EXPECT_EQ(refusal({"status", "--json=yes"}), "--json takes no value");
  EXPECT_EQ(refusal({"status", "--bogus"}), "unknown option --bogus");
  EXPECT_EQ(refusal({"status", "--timeout", "0"}),
            "--timeout wants a whole number from 1 to 604800, not \"0\"");
  EXPECT_EQ(refusal({"upload", "-"}), "upload - needs --name BLOB");
  EXPECT_EQ(refusal({"upload"}), "upload needs a file (or - for stdin)");
}

TEST(ExitCodes, FollowSysexitsByErrorName) {
  EXPECT_EQ(exitCodeForError("org.freedesktop.DBus.Error.InvalidArgs"), exitcode::kDataError);
  EXPECT_EQ(exitCodeForError("org.iothubd.Error.MessageTooLarge"), exitcode::kDataError);
  EXPECT_EQ(exitCodeForError("org.freedesktop.DBus.Error.AccessDenied"), exitcode::kNoPermission);
  EXPECT_EQ(exitCodeForError("org.freedesktop.DBus.Error.ServiceUnknown"), exitcode::kUnavailable);
  EXPECT_EQ(exitCodeForError("org.freedesktop.systemd1.NoSuchUnit"), exitcode::kUnavailable);
  EXPECT_EQ(exitCodeForError("org.iothubd.Error.OperationTimeout"), exitcode::kTempFail);
  EXPECT_EQ(exitCodeForError("org.iothubd.Error.QueueFull"), exitcode::kTempFail);
  EXPECT_EQ(exitCodeForError("org.freedesktop.DBus.Error.NoReply"), exitcode::kTempFail);
  EXPECT_EQ(exitCodeForError("org.iothubd.Error.Credential"), exitcode::kConfig);
  EXPECT_EQ(exitCodeForError("org.iothubd.Error.Service"), exitcode::kFailed);
  EXPECT_EQ(exitCodeForError("org.iothubd.Error.AlreadyClaimed"), exitcode::kFailed);
}

TEST(ExitCodes, BusErrorsAreExplainedForAnOperator) {
  EXPECT_NE(describeError("org.freedesktop.systemd1.NoSuchUnit",
                          "Unit dbus-org.iothubd.service not found.")
                .find("systemctl enable --now iothubd"),
            std::string::npos);
  EXPECT_NE(describeError("org.freedesktop.DBus.Error.AccessDenied",
                          "Rejected send message, 2 matched rules")
                .find("members of group iothub"),
            std::string::npos);
  EXPECT_EQ(describeError("org.iothubd.Error.QueueFull", "the outbox is full"),
            "the outbox is full (QueueFull)");
  EXPECT_EQ(describeError("org.freedesktop.DBus.Error.InvalidArgs", "bad key"), "bad key");
}

}  // namespace
}  // namespace iothubd::ctl
