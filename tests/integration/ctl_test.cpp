// SPDX-License-Identifier: MIT
// iothubctl against a running iothubd (as user iothubd on the private bus with our policy) and
// the hub emulator: every subcommand as an operator or a script uses it, its output and its exit
// status. `check` has its own tests below, each with the one fault it must name.
#include <rapidjson/document.h>
#include <signal.h>
#include <sys/socket.h>

#include <netinet/in.h>

#include <regex>

#include "ctl_process.hpp"
#include "daemon_fixture.hpp"
#include "file_upload_hub.hpp"

namespace iothubd::testing {
namespace {

rapidjson::Document parseJson(const std::string& text) {
  rapidjson::Document d;
  d.Parse(text.c_str());
  EXPECT_FALSE(d.HasParseError()) << text;
  return d;
}

CtlProcess::Options ctlOptions(const std::string& busAddress, std::string input = "",
                               std::string user = "") {
  CtlProcess::Options o;
  o.busAddress = busAddress;
  o.input = std::move(input);
  o.user = std::move(user);
  return o;
}

class CtlTest : public DaemonTest {
 protected:
  CtlProcess::Options options(std::string input = "") {
    return ctlOptions(bus_->address(), std::move(input));
  }
  CtlOutcome ctl(const std::vector<std::string>& args, std::string input = "") {
    return runCtl(args, options(std::move(input)));
  }
  std::unique_ptr<CtlProcess> start(const std::vector<std::string>& args) {
    return std::make_unique<CtlProcess>(args, options());
  }
  /// Restarts iothubd on the same bus and hub, as systemctl restart would.
  void restartDaemon() {
    ASSERT_EQ(daemon_->stop(), 0);
    startDaemon();
  }
};

TEST_F(CtlTest, StatusShowsTheConnectionAndExitsByState) {
  auto stopped = ctl({"status"});
  EXPECT_EQ(stopped.status, 69) << stopped.err;
  EXPECT_EQ(stopped.out, "iothubd is not running.\n");

  writeConfig("[connection]\nkeep_connected = false\n");  // so that Disconnect closes the link
  startDaemon();
  awaitOnline();
  auto human = ctl({"status"});
  ASSERT_EQ(human.status, 0) << human.out << human.err;
  EXPECT_EQ(human.out.rfind("iothubd " IOTHUBD_VERSION " (pid ", 0), 0u) << human.out;
  for (const char* line :
       {"     State: connected\n", "       Hub: localhost\n", "    Device: dev1\n",
        "      Auth: sas; token expires ", "    Outbox: 0 messages, 0 B\n", "Last error: none\n"}) {
    EXPECT_NE(human.out.find(line), std::string::npos) << line << " in\n" << human.out;
  }

  auto json = ctl({"status", "--json"});
  ASSERT_EQ(json.status, 0) << json.err;
  auto d = parseJson(json.out);
  EXPECT_TRUE(d["Connected"].GetBool());
  EXPECT_STREQ(d["Version"].GetString(), IOTHUBD_VERSION);
  EXPECT_STREQ(d["DeviceId"].GetString(), "dev1");
  EXPECT_EQ(d["Pid"].GetUint(), static_cast<unsigned>(daemon_->pid()));
  EXPECT_TRUE(d["MethodHandlers"].IsObject());

  // Running but not connected: exit status 3, and the reason.
  hubemu::ServiceClient service(hub_);
  client().Disconnect();
  auto down = ctl({"status"});
  EXPECT_EQ(down.status, 3) << down.out;
  EXPECT_NE(down.out.find("State: disconnected"), std::string::npos) << down.out;
}

TEST_F(CtlTest, SendsOneMessageWithItsProperties) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  auto r = ctl({"send", R"({"t":21.5})", "-p", "alert level=high", "--content-type",
                "application/json", "--content-encoding", "utf-8", "--message-id", "ctl-1",
                "--system-property", "correlation-id=c-9"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "sent ctl-1\n");
  auto t = service.waitForTelemetry([](const auto& m) { return m.payload == R"({"t":21.5})"; });
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->property("alert level"), "high");
  EXPECT_EQ(t->property("$.mid"), "ctl-1");
  EXPECT_EQ(t->property("$.ct"), "application/json");
  EXPECT_EQ(t->property("$.ce"), "utf-8");
  EXPECT_EQ(t->property("$.cid"), "c-9");

  auto queued = ctl({"send", "--queue", "--json", R"({"door":"open"})"});
  ASSERT_EQ(queued.status, 0) << queued.err;
  auto d = parseJson(queued.out);
  EXPECT_TRUE(d["queued"].GetBool());
  const std::string id = d["messageId"].GetString();
  EXPECT_TRUE(service.waitForTelemetry([&](const auto& m) { return m.property("$.mid") == id; }));
}

TEST_F(CtlTest, SendsEveryLineOfStdinAndBinaryBodies) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  auto r = ctl({"send", "-", "-p", "batch=yes"}, "{\"n\":1}\n\n{\"n\":2}\n{\"n\":3}");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 3) << r.out;  // the blank line is none
  for (const char* body : {"{\"n\":1}", "{\"n\":2}", "{\"n\":3}"}) {
    auto t = service.waitForTelemetry([&](const auto& m) { return m.payload == body; });
    ASSERT_TRUE(t.has_value()) << body;
    EXPECT_EQ(t->property("batch"), "yes");
  }

  const std::string bytes("\x00\xff\x01 binary", 10);
  auto b = ctl({"send", "--binary", "-"}, bytes);
  ASSERT_EQ(b.status, 0) << b.err;
  EXPECT_TRUE(service.waitForTelemetry([&](const auto& m) { return m.payload == bytes; }));
}

TEST_F(CtlTest, RefusedInputAndUsageErrorsHaveTheirOwnExitStatus) {
  startDaemon();
  auto refused = ctl({"send", "x", "--system-property", "colour=red"});
  EXPECT_EQ(refused.status, 65) << refused.err;
  EXPECT_NE(refused.err.find("colour"), std::string::npos) << refused.err;

  // A refused line in a batch is named by its line number; nothing of that batch is sent.
  auto badLine = ctl({"send", "-", "-p", "$bad=1"}, "ok\n\nalso ok\n");
  EXPECT_EQ(badLine.status, 65) << badLine.err;
  EXPECT_EQ(badLine.err.rfind("iothubctl: line 1: ", 0), 0u) << badLine.err;

  auto usage = ctl({"send"});
  EXPECT_EQ(usage.status, 64);
  EXPECT_NE(usage.err.find("send needs a message body"), std::string::npos) << usage.err;
  EXPECT_EQ(ctl({"twin", "frobnicate"}).status, 64);
  EXPECT_EQ(ctl({"status", "--queue"}).status, 64);

  auto badPatch = ctl({"twin", "patch", "[1,2]"});
  EXPECT_EQ(badPatch.status, 65) << badPatch.err;
}

TEST_F(CtlTest, BusPolicyRefusalIsExitStatus77) {
  startDaemon();
  CtlProcess::Options o = options();
  o.user = "nobody";  // neither root nor in group iothub
  auto r = runCtl({"send", "x"}, o);
  EXPECT_EQ(r.status, 77) << r.err;
  EXPECT_NE(r.err.find("members of group iothub"), std::string::npos) << r.err;
}

TEST_F(CtlTest, TwinGetPatchAndWatch) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto patched = ctl({"twin", "patch", R"({"firmware":"1.2.3"})"});
  ASSERT_EQ(patched.status, 0) << patched.err;
  EXPECT_EQ(patched.out, "reported properties updated: version 2\n");
  auto fromStdin = ctl({"twin", "patch", "--json", "-"}, R"({"uptime":7})");
  ASSERT_EQ(fromStdin.status, 0) << fromStdin.err;
  EXPECT_EQ(fromStdin.out, "{\"version\":3}\n");

  auto twin = ctl({"twin", "get", "--json"});
  ASSERT_EQ(twin.status, 0) << twin.err;
  auto d = parseJson(twin.out);
  EXPECT_STREQ(d["reported"]["firmware"].GetString(), "1.2.3");
  auto pretty = ctl({"twin", "get"});
  EXPECT_NE(pretty.out.find("\n  \"reported\": {\n"), std::string::npos) << pretty.out;

  auto watch = start({"twin", "watch", "--count", "2"});
  ASSERT_TRUE(watch->waitForErr("watching desired-property patches")) << watch->err();
  service.patchDesired(kDevice, R"({"mode":"eco"})");
  service.patchDesired(kDevice, R"({"mode":"fast","level":{"x":1}})");
  auto done = watch->wait();
  EXPECT_EQ(done.status, 0) << done.err;
  EXPECT_EQ(done.out,
            "{\"mode\":\"eco\",\"$version\":2}\n"
            "{\"mode\":\"fast\",\"level\":{\"x\":1},\"$version\":3}\n");
}

TEST_F(CtlTest, C2dWatchPrintsOneJsonLinePerMessage) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto watch = start({"c2d", "watch", "--count", "2"});
  ASSERT_TRUE(watch->waitForErr("watching cloud-to-device messages")) << watch->err();
  service.sendC2d(kDevice, "hello", {{"$.mid", "c2d-1"}}, {{"colour", "red"}});
  service.sendC2d(kDevice, std::string("\xff\x00", 2));
  auto done = watch->wait();
  EXPECT_EQ(done.status, 0) << done.err;
  EXPECT_NE(done.out.find(R"({"body":"hello","properties":{"colour":"red"},)"
                          R"("systemProperties":{"message-id":"c2d-1"}})"),
            std::string::npos)
      << done.out;
  EXPECT_NE(done.out.find(R"({"bodyBase64":"/wA=")"), std::string::npos) << done.out;
}

TEST_F(CtlTest, MethodServeAnswersWithTheCommandAndMethodListShowsTheClaim) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto serve = start({"method", "serve", "*", "--count", "3", "--", "sh", "-c",
                      "case \"$IOTHUB_METHOD_NAME\" in\n"
                      "  echo) printf '{\"got\":'; cat; printf '}' ;;\n"
                      "  missing) echo 404 >&3; echo '{\"error\":\"no such thing\"}' ;;\n"
                      "  *) echo oops; exit 2 ;;\n"
                      "esac"});
  ASSERT_TRUE(serve->waitForErr("serving direct method *")) << serve->err();

  auto list = ctl({"method", "list"});
  ASSERT_EQ(list.status, 0) << list.err;
  EXPECT_NE(list.out.find("METHOD  CLAIMED BY\n*       :"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("iothubctl method serve *"), std::string::npos) << list.out;
  auto listJson = parseJson(ctl({"method", "list", "--json"}).out);
  ASSERT_EQ(listJson.Size(), 1u);
  EXPECT_STREQ(listJson[0]["method"].GetString(), "*");

  auto echo = service.invokeMethod(kDevice, "echo", R"({"delay":1})", 10s);
  EXPECT_EQ(echo.status, 200);
  EXPECT_EQ(echo.payload, R"({"got":{"delay":1}})");
  auto missing = service.invokeMethod(kDevice, "missing", "null", 10s);
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.payload, R"({"error":"no such thing"})");
  auto failing = service.invokeMethod(kDevice, "reboot", "null", 10s);
  EXPECT_EQ(failing.status, 500);
  EXPECT_EQ(failing.payload, R"("oops")");  // plain text is sent as a JSON string

  auto done = serve->wait();
  EXPECT_EQ(done.status, 0) << done.err;
  EXPECT_NE(done.out.find("echo request "), std::string::npos) << done.out;
  EXPECT_NE(done.out.find(": 500 (exit status 2, "), std::string::npos) << done.out;
  // The claim ended with iothubctl (the daemon learns of it from the bus's NameOwnerChanged,
  // which may come after iothubctl's exit status).
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!client().MethodHandlers().empty() && std::chrono::steady_clock::now() < deadline) {
    (void)client().Version();  // a round trip through the daemon's queue
  }
  EXPECT_TRUE(client().MethodHandlers().empty());
}

TEST_F(CtlTest, MethodServeClaimsAgainAfterTheDaemonRestarts) {
  startDaemon();
  auto serve = start({"method", "serve", "reboot", "--", "echo", "{\"rebooting\":true}"});
  ASSERT_TRUE(serve->waitForErr("serving direct method reboot")) << serve->err();
  restartDaemon();
  ASSERT_TRUE(serve->waitForErr("iothubd restarted; claimed reboot again")) << serve->err();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto r = service.invokeMethod(kDevice, "reboot", "null", 10s);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.payload, R"({"rebooting":true})");
  serve->signal(SIGTERM);
  EXPECT_EQ(serve->wait().status, 0);
}

TEST_F(CtlTest, MethodHandlersPropertyNamesEachClaimAndItsHolder) {
  startDaemon();
  auto app = newClient();
  app->RegisterMethodHandler("reboot");
  client().RegisterMethodHandler("*");
  auto handlers = client().MethodHandlers();
  EXPECT_EQ(handlers, (StringMap{{"*", client().uniqueName()}, {"reboot", app->uniqueName()}}));
  app.reset();  // the app leaves the bus: its claim goes
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (client().MethodHandlers().count("reboot") != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    (void)client().Version();  // a round trip through the daemon's queue
  }
  EXPECT_EQ(client().MethodHandlers(), (StringMap{{"*", client().uniqueName()}}));
  EXPECT_EQ(client().Version(), IOTHUBD_VERSION);
}

/// The Python example (examples/iothubd_app.py) answers again after a daemon restart: it claims its
/// method on every new owner of org.iothubd (NameOwnerChanged).
TEST_F(CtlTest, PythonExampleClaimsAgainAfterTheDaemonRestarts) {
  startDaemon();
  CtlProcess::Options o = options();
  o.program = "/usr/bin/python3";  // with python3-dbus, which the pyenv python3 lacks
  CtlProcess app({std::string(IOTHUBD_SOURCE_DIR) + "/examples/iothubd_app.py"}, o);
  ASSERT_TRUE(app.waitForOut("ready\n")) << app.out() << app.err();
  restartDaemon();
  ASSERT_TRUE(app.waitForOut("ready\n", 10s, 2)) << app.out() << app.err();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto r = service.invokeMethod(kDevice, "reboot", R"({"delay":0})", 10s);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.payload, R"({"rebooting": true})");
}

// --- check ----------------------------------------------------------------------------------

class CtlCheckTest : public CtlTest {
 protected:
  void SetUp() override {
    CtlTest::SetUp();
    files_ = std::make_unique<hubemu::FileUploadHub>(hub_, nullptr);  // the hub's HTTPS side
    files_->start();
    writeConfig(fileUpload());
  }
  std::string fileUpload() const {
    return "[file_upload]\nhttps_port = " + std::to_string(files_->port()) + "\n";
  }
  /// `iothubctl check --json` with the test's configuration and credentials; the results by id.
  std::map<std::string, std::pair<std::string, std::string>> check(int* status = nullptr) {
    auto r =
        ctl({"check", "--json", "--config", configPath_, "--credentials-dir", credentialsDir_});
    last_ = r.out + r.err;
    if (status != nullptr) {
      *status = r.status;
    }
    std::map<std::string, std::pair<std::string, std::string>> byId;
    auto d = parseJson(r.out);
    if (!d.IsObject()) {
      return byId;
    }
    for (const auto& c : d["checks"].GetArray()) {
      byId[c["id"].GetString()] = {c["result"].GetString(), std::string(c["message"].GetString()) +
                                                                " | fix: " + c["fix"].GetString()};
    }
    return byId;
  }
  std::unique_ptr<hubemu::FileUploadHub> files_;
  std::string last_;
};

TEST_F(CtlCheckTest, EverythingOkWithARunningConnectedDaemon) {
  startDaemon();
  awaitOnline();
  auto r = check();
  for (const char* id : {"configuration", "credentials", "tls-settings", "dns", "tcp", "tls",
                         "clock", "expiry", "daemon", "outbox"}) {
    ASSERT_TRUE(r.count(id)) << id << "\n" << last_;
    EXPECT_EQ(r[id].first, "ok") << id << ": " << r[id].second;
  }
  EXPECT_NE(r["dns"].second.find("localhost resolves to 127.0.0.1"), std::string::npos)
      << r["dns"].second;
  EXPECT_NE(r["daemon"].second.find("is connected to localhost as dev1"), std::string::npos)
      << r["daemon"].second;
  // Human output: one line per check, the summary last.
  auto human = ctl({"check", "--config", configPath_, "--credentials-dir", credentialsDir_});
  EXPECT_NE(human.out.find("\nok       tls "), std::string::npos) << human.out;
  EXPECT_NE(human.out.find(" ok, "), std::string::npos) << human.out;
}

TEST_F(CtlCheckTest, AWrongCaIsATlsErrorWithItsFix) {
  const std::string wrongCa = daemonDir_ + "/wrong-ca.pem";
  hub_.issueClientCertificate("Some Other CA", wrongCa, daemonDir_ + "/wrong-ca.key", "", true);
  writeConfig(fileUpload() + "[connection]\nserver_verification_cert = " + wrongCa + "\n");
  int status = 0;
  auto r = check(&status);
  EXPECT_EQ(status, 1);
  EXPECT_EQ(r["tcp"].first, "ok") << r["tcp"].second;
  EXPECT_EQ(r["tls"].first, "error") << last_;
  EXPECT_NE(r["tls"].second.find("certificate verification failed for localhost:" +
                                 std::to_string(hub_.port())),
            std::string::npos)
      << r["tls"].second;
  EXPECT_NE(r["tls"].second.find("fix: set [connection] server_verification_cert"),
            std::string::npos)
      << r["tls"].second;
  // Works without the daemon: it just says so.
  EXPECT_EQ(r["daemon"].first, "warning") << r["daemon"].second;
  EXPECT_NE(r["daemon"].second.find("iothubd is not running"), std::string::npos);
}

TEST_F(CtlCheckTest, AClosedPortIsATcpError) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const int closedPort = ntohs(a.sin_port);  // bound, never listening: connections are refused
  writeConfig(fileUpload() + "[hub]\nport = " + std::to_string(closedPort) + "\n");
  auto r = check();
  ::close(fd);
  EXPECT_EQ(r["tcp"].first, "error") << last_;
  EXPECT_NE(r["tcp"].second.find("no address of localhost:" + std::to_string(closedPort) +
                                 " accepts TCP: 127.0.0.1: Connection refused"),
            std::string::npos)
      << r["tcp"].second;
  EXPECT_NE(r["tcp"].second.find("websockets = true"), std::string::npos) << r["tcp"].second;
  EXPECT_EQ(r.count("tls"), 0u) << "no TLS check without a TCP connection";
}

TEST_F(CtlCheckTest, ASkewedClockIsAnErrorBeyondFiveMinutes) {
  files_->setFaults(R"({"date":{"offsetSeconds":600}})");  // the hub is 10 min ahead
  auto r = check();
  EXPECT_EQ(r["clock"].first, "error") << last_;
  // ±1 s: the Date header counts whole seconds.
  EXPECT_TRUE(std::regex_search(
      r["clock"].second, std::regex("is (9 min 59 s|10 min|10 min 1 s) behind the hub's clock")))
      << r["clock"].second;
  EXPECT_NE(r["clock"].second.find("timedatectl set-ntp true"), std::string::npos);

  files_->setFaults(R"({"date":{"offsetSeconds":-90}})");
  r = check();
  EXPECT_EQ(r["clock"].first, "warning") << r["clock"].second;
  // The Date header has whole seconds and the request takes time: 90 s give or take one.
  EXPECT_TRUE(std::regex_search(r["clock"].second, std::regex("1 min (29|30|31) s ahead of")))
      << r["clock"].second;
}

TEST_F(CtlCheckTest, BadCredentialsAndConfigurationAreNamed) {
  writeConnectionString("not base64!");
  auto r = check();
  EXPECT_EQ(r["configuration"].first, "ok");
  EXPECT_EQ(r["credentials"].first, "error") << last_;
  EXPECT_EQ(r.count("dns"), 0u);

  writeConfig("[connection]\nkeep_alive = banana\n");
  r = check();
  EXPECT_EQ(r["configuration"].first, "error") << last_;
  EXPECT_NE(r["configuration"].second.find("keep_alive"), std::string::npos);
}

TEST_F(CtlCheckTest, AnOperatorSuppliedTokenNearItsExpiryIsAWarning) {
  const auto se = std::time(nullptr) + 3600;
  writeConfig(fileUpload() + "[hub]\nauthentication = sas-token\n");
  writeCredential("sas-token", hubemu::makeSasToken(hub_.hubHost(), kDevice, deviceKey_, se));
  auto r = check();
  EXPECT_EQ(r["expiry"].first, "warning") << last_;
  EXPECT_NE(r["expiry"].second.find("the SAS token expires at "), std::string::npos);
}

}  // namespace
}  // namespace iothubd::testing
