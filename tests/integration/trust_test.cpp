// SPDX-License-Identifier: MIT
// Issue 12, the trust boundary, on the private system-like bus with the real policy: the daemon
// runs as user iothubd; callers are root (this process), members of iothub and iothub-admin and a
// user in neither group, each a process of its own (bus_peer.hpp). Who may call what, who hears
// what, that no app takes the link from another, that no caller gets the daemon's secrets out
// through a path or a name, and that a forged NameOwnerChanged changes nothing.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <set>

#include <rapidjson/document.h>

#include "bus_peer.hpp"
#include "file_upload_fixture.hpp"

namespace iothubd::testing {
namespace {

using Steady = std::chrono::steady_clock;

/// The methods of org.iothubd.Device1 as the contract file lists them.
std::vector<std::string> contractMethods() {
  std::string xml = readFile(std::string(IOTHUBD_SOURCE_DIR) + "/dbus/org.iothubd.Device1.xml");
  xml = std::regex_replace(xml, std::regex("<!--[\\s\\S]*?-->"), "");
  std::vector<std::string> out;
  std::regex method(R"re(<method\s+name="([^"]+)")re");
  for (auto it = std::sregex_iterator(xml.begin(), xml.end(), method); it != std::sregex_iterator();
       ++it) {
    out.push_back((*it)[1]);
  }
  return out;
}

/// What every test here needs besides its base fixture: the test users, and the peer helper
/// where each of them may execute it (the build directory may be under /root).
template <class Base>
class WithPeers : public Base {
 protected:
  void SetUp() override {
    Base::SetUp();
    ensureTestUsers();
    const std::string dir = this->dir_ / "peer";
    ::mkdir(dir.c_str(), 0755);
    helper_ = dir + "/iothubd-test-peer";
    std::filesystem::copy_file(testPeerBinary(), helper_,
                               std::filesystem::copy_options::overwrite_existing);
    ::chmod(helper_.c_str(), 0755);
  }
  /// Another app, as `user`, on the test bus.
  std::unique_ptr<BusPeer> peer(const std::string& user) {
    return std::make_unique<BusPeer>(this->bus_->address(), user, helper_);
  }
  std::string helper_;
};

/// The bus driver's name for `name` (org.iothubd → the daemon's unique name).
std::string ownerOf(BusPeer& peer, const std::string& name) {
  return peer
      .call("GetNameOwner", "s", "[" + jsonQuote(name) + "]", "org.freedesktop.DBus",
            "/org/freedesktop/DBus", "org.freedesktop.DBus")
      .firstString();
}

bool anyContains(const std::vector<PeerEvent>& events, const std::string& text) {
  return std::any_of(events.begin(), events.end(),
                     [&](const PeerEvent& e) { return e.json.find(text) != std::string::npos; });
}

// --- who may call what ----------------------------------------------------------------------

class TrustTest : public WithPeers<DaemonTest> {
 protected:
  /// Replaces the test bus by one that also loads `rules` after our policy: an administrator's
  /// addition that lets more through than ours does.
  void useLaxPolicy(const std::string& rules) {
    writeFile(dir_ / "lax.conf",
              "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
              " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
              "<busconfig>" +
                  rules + "</busconfig>\n");
    bus_.reset();
    bus_ = std::make_unique<PrivateBus>(dir_ / "lax-bus", policyFilePath(),
                                        std::vector<std::string>{dir_ / "lax.conf"});
  }
  /// A member claims a method and holds the link; a member and root then forge the bus's
  /// NameOwnerChanged saying it left, unicast to the daemon and broadcast. Nothing may change.
  void forgeDepartures(bool expectForgeryToArrive);
};

TEST_F(TrustTest, EachCallerMayCallExactlyWhatThePolicyAndTheDaemonAllow) {
  startDaemon();
  awaitOnline();
  auto root = peer("root");
  auto admin = peer(kAdminUser);
  auto member = peer(kMemberUser);
  auto outsider = peer(kOutsiderUser);
  const auto methods = contractMethods();
  ASSERT_GE(methods.size(), 18u);
  for (const auto& method : methods) {
    SCOPED_TRACE(method);
    // No arguments: the bus decides first; a call it lets through fails in the daemon on its
    // signature (InvalidArgs), never with AccessDenied.
    EXPECT_NE(root->call(method).error, "org.freedesktop.DBus.Error.AccessDenied");
    EXPECT_NE(admin->call(method).error, "org.freedesktop.DBus.Error.AccessDenied");
    const auto byMember = member->call(method);
    if (method == "UpdateSasToken" || method == "Reprovision") {
      EXPECT_EQ(byMember.error, "org.freedesktop.DBus.Error.AccessDenied") << byMember.message;
    } else {
      EXPECT_NE(byMember.error, "org.freedesktop.DBus.Error.AccessDenied") << byMember.message;
    }
    const auto byOutsider = outsider->call(method);
    EXPECT_EQ(byOutsider.error, "org.freedesktop.DBus.Error.AccessDenied") << byOutsider.message;
  }
  // Properties: members yes, the outsider not even one of them.
  const std::string iface = jsonQuote("org.iothubd.Device1");
  for (auto* who : {root.get(), admin.get(), member.get()}) {
    EXPECT_TRUE(who->call("GetAll", "s", "[" + iface + "]", "org.freedesktop.DBus.Properties").ok())
        << who->user();
  }
  EXPECT_EQ(
      outsider->call("GetAll", "s", "[" + iface + "]", "org.freedesktop.DBus.Properties").error,
      "org.freedesktop.DBus.Error.AccessDenied");
  EXPECT_EQ(
      outsider->call("Get", "ss", "[" + iface + ",\"DeviceId\"]", "org.freedesktop.DBus.Properties")
          .error,
      "org.freedesktop.DBus.Error.AccessDenied");
  // Introspection and Ping stay open to everyone.
  EXPECT_TRUE(outsider->call("Introspect", "", "[]", "org.freedesktop.DBus.Introspectable").ok());
  EXPECT_TRUE(outsider->call("Ping", "", "[]", "org.freedesktop.DBus.Peer").ok());
  // With real arguments: the admin passes both checks (this device uses its key: NotSupported),
  // the member is stopped by the bus.
  const std::string token = "[\"SharedAccessSignature sr=x&sig=y&se=1\"]";
  EXPECT_EQ(admin->call("UpdateSasToken", "s", token).error, "org.iothubd.Error.NotSupported");
  EXPECT_EQ(root->call("UpdateSasToken", "s", token).error, "org.iothubd.Error.NotSupported");
  EXPECT_EQ(member->call("UpdateSasToken", "s", token).error,
            "org.freedesktop.DBus.Error.AccessDenied");
  // Reprovision moves the device: the same rule (without DPS configured: NotSupported).
  EXPECT_EQ(admin->call("Reprovision").error, "org.iothubd.Error.NotSupported");
  EXPECT_EQ(root->call("Reprovision").error, "org.iothubd.Error.NotSupported");
  EXPECT_EQ(member->call("Reprovision").error, "org.freedesktop.DBus.Error.AccessDenied");
}

TEST_F(TrustTest, TheDaemonRefusesUpdateSasTokenToAMemberEvenWhereThePolicyWouldLetItThrough) {
  // A laxer policy beside ours (an administrator's mistake): the daemon's own check still holds.
  useLaxPolicy(
      "<policy group=\"iothub\"><allow send_destination=\"org.iothubd\" "
      "send_interface=\"org.iothubd.Device1\"/></policy>");
  startDaemon();
  auto member = peer(kMemberUser);
  auto refused = member->call("UpdateSasToken", "s", "[\"SharedAccessSignature sr=x&sig=y&se=1\"]");
  EXPECT_EQ(refused.error, "org.freedesktop.DBus.Error.AccessDenied");
  EXPECT_NE(refused.message.find("iothub-admin"), std::string::npos) << refused.message;
  auto reprovision = member->call("Reprovision");
  EXPECT_EQ(reprovision.error, "org.freedesktop.DBus.Error.AccessDenied");
  EXPECT_NE(reprovision.message.find("iothub-admin"), std::string::npos) << reprovision.message;
}

// --- nobody takes the link from another ---------------------------------------------------

TEST_F(TrustTest, ByDefaultNoDisconnectClosesTheLink) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto a = peer(kMemberUser);
  auto b = peer(kMemberUser);
  ASSERT_TRUE(a->call("Connect").ok());
  ASSERT_TRUE(b->call("Disconnect").ok());
  ASSERT_TRUE(a->call("Disconnect").ok());
  client().Disconnect();  // root, without a hold
  EXPECT_TRUE(client().Connected());
  EXPECT_EQ(service.disconnectCount(kDevice), 0u);
  EXPECT_FALSE(client().SendMessage("still up", {}, {}).empty());
}

TEST_F(TrustTest, WithoutKeepConnectedTheLinkClosesOnlyWhenTheLastHolderLetsGo) {
  writeConfig("[connection]\nkeep_connected = false\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto a = peer(kMemberUser);
  auto b = peer(kMemberUser);
  ASSERT_TRUE(a->call("Connect").ok());
  // Another member's Disconnect (without a hold, or after its own hold) takes nothing away.
  ASSERT_TRUE(b->call("Disconnect").ok());
  ASSERT_TRUE(b->call("Connect").ok());
  ASSERT_TRUE(b->call("Disconnect").ok());
  EXPECT_TRUE(client().Connected());
  EXPECT_EQ(service.disconnectCount(kDevice), 0u);
  // A waiting operation of A survives B's Disconnect: a twin request goes through.
  EXPECT_TRUE(a->call("GetTwin").ok());

  // A's own Disconnect: nobody holds it any more, so it closes.
  ASSERT_TRUE(a->call("Disconnect").ok());
  EXPECT_TRUE(client().waitForConnectionStateChanged(false));
  ASSERT_TRUE(service.waitForDisconnect(kDevice).has_value());

  // A holder that leaves the bus releases its hold: the link closes when it was the last one.
  client().clearSignals();
  ASSERT_TRUE(b->call("Connect").ok());
  EXPECT_TRUE(client().waitForConnectionStateChanged(true));
  b.reset();  // the process exits, its connection goes
  EXPECT_TRUE(client().waitForConnectionStateChanged(false));
}

void TrustTest::forgeDepartures(bool expectForgeryToArrive) {
  writeConfig("[connection]\nkeep_connected = false\n");
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto victim = peer(kMemberUser);
  auto hostileMember = peer(kMemberUser);
  auto hostileRoot = peer("root");
  ASSERT_TRUE(victim->call("RegisterMethodHandler", "s", "[\"reboot\"]").ok());
  ASSERT_TRUE(victim->call("Connect").ok());
  const std::string daemonName = ownerOf(*victim, "org.iothubd");
  const std::string victimName = victim->uniqueName();
  ASSERT_FALSE(daemonName.empty());
  const std::string forged = "[" + jsonQuote(victimName) + "," + jsonQuote(victimName) + ",\"\"]";
  for (auto* hostile : {hostileMember.get(), hostileRoot.get()}) {
    (void)hostile->signal(daemonName, "/org/freedesktop/DBus", "org.freedesktop.DBus",
                          "NameOwnerChanged", "sss", forged);
    (void)hostile->signal("", "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameOwnerChanged",
                          "sss", forged);
    // The daemon handles one connection's messages in order: after this answer it has seen
    // whatever of the above reached it.
    ASSERT_TRUE(hostile->call("Ping", "", "[]", "org.freedesktop.DBus.Peer").ok());
  }
  const bool arrived =
      daemon_->log().find("ignoring a NameOwnerChanged signal from") != std::string::npos;
  EXPECT_EQ(arrived, expectForgeryToArrive)
      << "with our policy the bus refuses the forgery; with the lax one it reaches the daemon, "
         "which ignores it";

  // The claim stands: another app cannot take the name, and a request reaches the victim.
  EXPECT_EQ(hostileMember->call("RegisterMethodHandler", "s", "[\"reboot\"]").error,
            "org.iothubd.Error.AlreadyClaimed");
  auto invoked = std::async(std::launch::async,
                            [&] { return service.invokeMethod(kDevice, "reboot", "{}", 10s); });
  auto request = victim->waitForEvent(daemonName, "MethodRequestReceived");
  ASSERT_TRUE(request.has_value());
  rapidjson::Document args;
  args.Parse(request->json.c_str());
  ASSERT_TRUE(args.IsArray() && args.Size() == 3u);
  EXPECT_TRUE(
      victim
          ->call("SendMethodResponse", "sis", "[" + jsonQuote(args[0].GetString()) + ",200,\"{}\"]")
          .ok());
  EXPECT_EQ(invoked.get().status, 200);
  // The hold stands: the hostile member's Disconnect does not close the link.
  ASSERT_TRUE(hostileMember->call("Disconnect").ok());
  EXPECT_TRUE(client().Connected());
  EXPECT_EQ(service.disconnectCount(kDevice), 0u);
}

TEST_F(TrustTest, AForgedNameOwnerChangedIsRefusedByTheBus) {
  forgeDepartures(false);
}

TEST_F(TrustTest, AForgedNameOwnerChangedThatGetsThroughIsIgnoredByTheDaemon) {
  // Root may send anything to the daemon here, as under a careless local policy.
  useLaxPolicy("<policy user=\"root\"><allow send_destination=\"org.iothubd\"/></policy>");
  forgeDepartures(true);
}

// --- who hears what, with uploads ---------------------------------------------------------

using TrustUploadTest = WithPeers<FileUploadTest>;

TEST_F(TrustUploadTest, TheOutsiderHearsNothingAndEachMemberOnlyWhatIsForEveryMemberOrItsOwn) {
  startDaemon();
  hubemu::ServiceClient service(hub_);
  awaitOnline();
  auto outsider = peer(kOutsiderUser);
  auto a = peer(kMemberUser);
  auto b = peer(kMemberUser);
  const std::string daemonName = ownerOf(*a, "org.iothubd");
  ASSERT_FALSE(daemonName.empty());
  // The outsider tries everything a local user can: match rules by name and by unique name,
  // every signal, and eavesdropping on all traffic. The bus takes the plain rules (the policy
  // decides what they deliver) and refuses eavesdropping to users outright.
  for (const std::string& rule : std::vector<std::string>{
           "sender='org.iothubd'", "sender='" + daemonName + "'", "type='signal'"}) {
    auto added = outsider->addMatch(rule);
    EXPECT_TRUE(added.ok()) << rule << ": " << added.error << " " << added.message;
  }
  for (const std::string& rule :
       std::vector<std::string>{"eavesdrop=true", "eavesdrop=true,sender='" + daemonName + "'",
                                "eavesdrop=true,type='signal'"}) {
    auto added = outsider->addMatch(rule);
    EXPECT_TRUE(added.ok() || added.error == "org.freedesktop.DBus.Error.AccessDenied")
        << rule << ": " << added.error << " " << added.message;
  }
  // Members listen to everything iothubd broadcasts, and try to eavesdrop on the rest.
  for (auto* member : {a.get(), b.get()}) {
    ASSERT_TRUE(member->addMatch("type='signal',sender='org.iothubd'").ok());
    (void)member->addMatch("eavesdrop=true,sender='" + daemonName + "'");
  }
  // Proof that the outsider's rules work: the bus announces a peer that comes and goes.
  peer(kOutsiderUser).reset();

  // Everything iothubd sends: C2D, desired patch, a direct method for A, A's and root's
  // queued messages and uploads, a dropped connection (state, BackgroundException, properties).
  service.sendC2d(kDevice, "c2d body for members", {{"$.mid", "c2d-1"}}, {});
  ASSERT_TRUE(client().waitForSignal("MessageReceived").has_value());
  service.patchDesired(kDevice, R"({"trust":"desired"})");
  ASSERT_TRUE(client().waitForSignal("TwinDesiredPropertiesPatchReceived").has_value());

  ASSERT_TRUE(a->call("RegisterMethodHandler", "s", "[\"reboot\"]").ok());
  auto invoked = std::async(std::launch::async, [&] {
    return service.invokeMethod(kDevice, "reboot", R"({"secret":"for A"})", 10s);
  });
  auto request = a->waitForEvent(daemonName, "MethodRequestReceived");
  ASSERT_TRUE(request.has_value());
  rapidjson::Document args;
  args.Parse(request->json.c_str());
  ASSERT_TRUE(args.IsArray() && args.Size() == 3u);
  ASSERT_TRUE(
      a->call("SendMethodResponse", "sis", "[" + jsonQuote(args[0].GetString()) + ",200,\"{}\"]")
          .ok());
  EXPECT_EQ(invoked.get().status, 200);

  auto queued = a->call("QueueMessage", "sa{ss}a{ss}", R"(["from A",{},{"message-id":"a-1"}])");
  ASSERT_TRUE(queued.ok()) << queued.message;
  ASSERT_TRUE(a->waitForEvent(daemonName, "MessagesDelivered").has_value());
  EXPECT_EQ(client().QueueMessage("from root", {}, {{"message-id", "root-1"}}), "root-1");
  ASSERT_TRUE(client().waitForSignal("MessagesDelivered").has_value());

  const std::string aFile = dir_ / "a-upload.bin";
  writeFile(aFile, randomBytes(64 * 1024), 0644);
  auto uploaded = a->call("UploadFile", "sh", "[\"a-upload.bin\"," + jsonQuote(aFile) + "]");
  ASSERT_TRUE(uploaded.ok()) << uploaded.message;
  ASSERT_TRUE(a->waitForEvent(daemonName, "UploadProgress").has_value());
  const std::string rootFile = sourceFile("root-upload.bin", randomBytes(32 * 1024));
  EXPECT_FALSE(upload("root-upload.bin", rootFile).empty());
  ASSERT_TRUE(client().waitForSignal("UploadProgress").has_value());

  service.dropConnection(kDevice);
  ASSERT_TRUE(client().waitForConnectionStateChanged(false));
  ASSERT_TRUE(client().waitForSignal("BackgroundException").has_value());
  ASSERT_TRUE(client().waitForConnectionStateChanged(true));

  // Root received each of these when the bus sent them to everyone allowed; a round trip on
  // each peer's own connection now shows everything the bus sent it so far.
  for (auto* p : {outsider.get(), a.get(), b.get()}) {
    p->sync();
  }

  // The outsider: nothing at all from the daemon, through any rule. Its rules do work: it saw
  // the bus announce the peers that came and went.
  for (const auto& e : outsider->events()) {
    EXPECT_NE(e.sender, daemonName) << "the outsider received " << e.type << " " << e.member;
  }
  EXPECT_FALSE(outsider->eventsFrom("org.freedesktop.DBus", "NameOwnerChanged").empty())
      << outsider->events().size() << " events";

  // Every member: C2D, desired patch, connection state, background errors, properties.
  for (auto* member : {a.get(), b.get()}) {
    SCOPED_TRACE(member->uniqueName());
    for (const char* name :
         {"MessageReceived", "TwinDesiredPropertiesPatchReceived", "ConnectionStateChanged",
          "BackgroundException", "PropertiesChanged"}) {
      EXPECT_FALSE(member->eventsFrom(daemonName, name).empty()) << name;
    }
  }
  // Its own per-app signals reach A only.
  EXPECT_TRUE(anyContains(a->eventsFrom(daemonName, "MessagesDelivered"), "a-1"));
  for (const auto& e : a->eventsFrom(daemonName, "MessagesDelivered")) {
    EXPECT_EQ(e.json.find("root-1"), std::string::npos) << e.destination << " " << e.json;
  }
  EXPECT_TRUE(anyContains(a->eventsFrom(daemonName, "UploadProgress"), "a-upload.bin"));
  EXPECT_FALSE(anyContains(a->eventsFrom(daemonName, "UploadProgress"), "root-upload.bin"));
  EXPECT_TRUE(anyContains(a->eventsFrom(daemonName, "MethodRequestReceived"), "for A"));
  // B hears nothing of A's, not even by eavesdropping.
  for (const char* name :
       {"MessagesDelivered", "MessagesExpired", "UploadProgress", "MethodRequestReceived"}) {
    EXPECT_TRUE(b->eventsFrom(daemonName, name).empty()) << name;
  }
  // Nor does root's ordinary client.
  for (const auto& r : client().signals("MessagesDelivered")) {
    EXPECT_EQ(std::find(r.args.begin(), r.args.end(), "a-1"), r.args.end());
  }
  for (const auto& r : client().signals("UploadProgress")) {
    EXPECT_NE(r.args[0], "a-upload.bin");
  }
}

// --- no secret out through a path or a name ---------------------------------------------

TEST_F(TrustUploadTest, NoCallerGetsAByteOfTheDaemonsSecretsStateConfigurationOrProcOut) {
  // An app directory the operator listed, owned by the member's user.
  const std::string allowed = dir_ / "app-out";
  ASSERT_EQ(::mkdir(allowed.c_str(), 0755), 0);
  auto memberUser = serviceUser(kMemberUser);
  ASSERT_EQ(::chown(allowed.c_str(), memberUser.uid, memberUser.gid), 0);
  writeConfig("[file_upload]\nhttps_port = " + std::to_string(files_->port()) +
              "\nupload_from_path_directories = " + allowed + "\n");
  startDaemon();
  auto member = peer(kMemberUser);
  auto root = peer("root");

  const std::string credential = credentialsDir_ + "/connection-string";
  const std::string secret = readFile(credential);
  const std::string key = deviceKey_.substr(0, 24);  // what must never come out
  const std::string outbox = daemonDir_ + "/outbox.db";
  const std::string pid = std::to_string(daemon_->pid());
  std::vector<std::string> paths = {credential,
                                    credentialsDir_,
                                    outbox,
                                    configPath_,
                                    daemonDir_ + "/ca.pem",
                                    "/proc/self/environ",
                                    "/proc/self/status",
                                    "/proc/self/maps",
                                    "/proc/" + pid + "/environ",
                                    "/proc/thread-self/environ",
                                    allowed + "/../daemon/credentials/connection-string",
                                    allowed + "/../daemon/outbox.db",
                                    allowed + "/../daemon/iothubd.conf",
                                    allowed + "//" + credential};
  for (int fd = 0; fd < 16; ++fd) {
    paths.push_back("/proc/self/fd/" + std::to_string(fd));
    paths.push_back("/dev/fd/" + std::to_string(fd));
    paths.push_back("/proc/" + pid + "/fd/" + std::to_string(fd));
  }
  // Links inside the listed directory: to the secret, to the daemon's directories, to /proc.
  const std::vector<std::pair<std::string, std::string>> links = {
      {credential, "cred-link"},
      {credentialsDir_, "creds-dir-link"},
      {daemonDir_, "daemon-dir-link"},
      {"/proc/self", "proc-self-link"},
      {"/proc/self/fd/3", "fd3-link"},
      {"/dev/fd", "devfd-link"},
      {"/proc/" + pid + "/root", "root-link"}};
  for (const auto& [target, name] : links) {
    ASSERT_EQ(::symlink(target.c_str(), (allowed + "/" + name).c_str()), 0) << name;
    paths.push_back(allowed + "/" + name);
  }
  for (const char* inner : {"/creds-dir-link/connection-string", "/daemon-dir-link/outbox.db",
                            "/daemon-dir-link/iothubd.conf", "/proc-self-link/environ",
                            "/devfd-link/3", "/root-link" /* + daemon path */}) {
    paths.push_back(allowed + inner);
  }
  paths.push_back(allowed + "/root-link" + credential);

  // A hard link to the secret: the member may not make one (fs.protected_hardlinks, or the
  // credentials directory is closed to it) ...
  const std::string rootOnly = dir_ / "root-only";
  writeFile(rootOnly, "root's", 0600);
  int memberLink = member->link(credential, allowed + "/member-hardlink");
  EXPECT_NE(memberLink, 0) << "the member made a hard link to the daemon's secret";
  if (readFile("/proc/sys/fs/protected_hardlinks").rfind("1", 0) == 0) {
    EXPECT_EQ(member->link(rootOnly, allowed + "/member-root-link"), EPERM)
        << "fs.protected_hardlinks = 1 refuses links to files the user cannot read and write";
  }
  // ... and one that exists anyway (made by root, or on a file system without that
  // protection) is refused by the daemon: more than one name.
  ASSERT_EQ(::link(credential.c_str(), (allowed + "/hardlink").c_str()), 0);
  paths.push_back(allowed + "/hardlink");
  // A copy the daemon could read but the caller could not: the caller's rights decide.
  auto daemonUser = serviceUser();
  writeFile(allowed + "/daemon-readable", secret, 0600, static_cast<int>(daemonUser.uid),
            static_cast<int>(daemonUser.gid));

  const std::set<std::string> refusals = {"org.freedesktop.DBus.Error.AccessDenied",
                                          "org.freedesktop.DBus.Error.FileNotFound",
                                          "org.freedesktop.DBus.Error.InvalidArgs"};
  for (auto* caller : {member.get(), root.get()}) {
    for (const auto& path : paths) {
      auto r =
          caller->call("UploadFileFromPath", "ss", "[\"exfiltrated\"," + jsonQuote(path) + "]");
      EXPECT_TRUE(refusals.contains(r.error))
          << caller->user() << " " << path << ": " << r.error << " " << r.message;
      EXPECT_EQ(r.message.find(key), std::string::npos);
    }
  }
  auto byMember = member->call("UploadFileFromPath", "ss",
                               "[\"exfiltrated\"," + jsonQuote(allowed + "/daemon-readable") + "]");
  EXPECT_EQ(byMember.error, "org.freedesktop.DBus.Error.AccessDenied");
  EXPECT_NE(byMember.message.find("caller's rights"), std::string::npos) << byMember.message;

  // Names go to the hub as names: no local file is read for them.
  for (const std::string& name :
       std::vector<std::string>{"../../daemon/credentials/connection-string", "/proc/self/environ",
                                "/dev/fd/3", credential}) {
    auto info = member->call("GetStorageInfoForBlob", "s", "[" + jsonQuote(name) + "]");
    EXPECT_EQ(info.json.find(key), std::string::npos) << name;
  }

  // Not one request about a refused path reached the hub, and no blob holds the secret.
  for (const auto& request : files_->hubRequests()) {
    EXPECT_EQ(request.kind, "storage-info") << "only the GetStorageInfoForBlob calls";
  }
  EXPECT_LE(files_->hubRequests().size(), 4u);
  EXPECT_FALSE(files_->blob("dev1/exfiltrated").exists);

  // The control: a file of the member's own in the listed directory does go up.
  writeFile(allowed + "/report.csv", "a,b\n", 0644, static_cast<int>(memberUser.uid),
            static_cast<int>(memberUser.gid));
  auto report = member->call("UploadFileFromPath", "ss",
                             "[\"report.csv\"," + jsonQuote(allowed + "/report.csv") + "]");
  ASSERT_TRUE(report.ok()) << report.message;
  EXPECT_EQ(files_->blob("dev1/report.csv").sha256, sha256Hex("a,b\n"));
}

}  // namespace
}  // namespace iothubd::testing
