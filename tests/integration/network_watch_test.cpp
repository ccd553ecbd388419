// SPDX-License-Identifier: MIT
// Issue 14: when the network comes back, iothubd reconnects at once instead of waiting out its
// backoff. The hub is unreachable, the daemon backs off for 30-60 s (connection_retry_* = 60 s),
// the hub comes back, then the network manager says the network is online: the daemon is
// connected within seconds. With a real systemd-networkd on the private bus (its real policy,
// managing a veth link in this binary's network namespace whose peer the test takes down and
// up) and with an in-test NetworkManager (there is no real one here), which also appears after
// the daemon and restarts. With neither running, neither is ever bus-activated and the daemon
// connects as before.
//
// main() moves the binary into a private network and mount namespace first (the veth link, the
// bind mounts over networkd's directories, a read-only sysfs of this namespace). Needs root;
// exits 77 (skip) otherwise.
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "daemon_fixture.hpp"
#include "netns_support.hpp"

namespace iothubd::testing {
namespace {

using Steady = std::chrono::steady_clock;

/// A schedule whose shortest wait (half of 60 s) is far longer than any test waits: only the
/// network coming back explains a reconnect within seconds.
constexpr const char* kLongBackoff =
    "[connection]\nconnection_retry_initial_delay = 60\nconnection_retry_max_delay = 60\n";
constexpr auto kWellWithinTheBackoff = 15s;

constexpr const char* kNetworkd = "/lib/systemd/systemd-networkd";
constexpr const char* kNetworkdPolicy = "/usr/share/dbus-1/system.d/org.freedesktop.network1.conf";
constexpr const char* kNmPolicy = "/usr/share/dbus-1/system.d/org.freedesktop.NetworkManager.conf";
constexpr const char* kNmName = "org.freedesktop.NetworkManager";
constexpr const char* kNmPath = "/org/freedesktop/NetworkManager";
constexpr const char* kNmInterface = "org.freedesktop.NetworkManager";
constexpr std::uint32_t kNmDisconnected = 20;
constexpr std::uint32_t kNmConnectedGlobal = 70;

/// The link networkd brings online, and its peer, whose carrier the test switches.
constexpr const char* kUplink = "iothubd-up";
constexpr const char* kPeer = "iothubd-peer";

/// Milliseconds since `start`, for the printed timings.
long long msSince(Steady::time_point start) {
  return static_cast<long long>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Steady::now() - start).count());
}

/// NetworkManager's bus policy: the real one if installed, else the part of it that matters
/// here (root owns the name, everyone may read its properties).
std::string networkManagerPolicy(const TempDir& dir) {
  if (::access(kNmPolicy, R_OK) == 0) {
    return kNmPolicy;
  }
  const std::string path = dir / "nm-policy.conf";
  writeFile(path,
            R"(<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="org.freedesktop.NetworkManager"/>
    <allow send_destination="org.freedesktop.NetworkManager"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.freedesktop.NetworkManager"
           send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.NetworkManager"
           send_interface="org.freedesktop.DBus.Introspectable"/>
  </policy>
</busconfig>
)");
  return path;
}

/// NetworkManager's manager object as far as iothubd reads it: the State property and the
/// StateChanged signal, on a connection (and thread) of its own in this process.
class FakeNetworkManager {
 public:
  FakeNetworkManager(const std::string& busAddress, std::uint32_t state)
      : connection_(sdbus::createSessionBusConnectionWithAddress(busAddress)), state_(state) {
    object_ = sdbus::createObject(*connection_, kNmPath);
    object_->registerProperty("State").onInterface(kNmInterface).withGetter([this] {
      return state_.load();
    });
    object_->registerSignal("StateChanged")
        .onInterface(kNmInterface)
        .withParameters<std::uint32_t>();
    object_->finishRegistration();
    connection_->requestName(kNmName);
    connection_->enterEventLoopAsync();
  }
  ~FakeNetworkManager() { connection_->leaveEventLoop(); }
  FakeNetworkManager(const FakeNetworkManager&) = delete;
  FakeNetworkManager& operator=(const FakeNetworkManager&) = delete;

  /// As NetworkManager announces a new state: PropertiesChanged and StateChanged.
  void setState(std::uint32_t state) {
    state_ = state;
    object_->emitPropertiesChangedSignal(kNmInterface, {"State"});
    object_->emitSignal("StateChanged").onInterface(kNmInterface).withArguments(state);
  }

 private:
  std::unique_ptr<sdbus::IConnection> connection_;
  std::unique_ptr<sdbus::IObject> object_;  ///< after the connection: destroyed before it
  std::atomic<std::uint32_t> state_;
};

class NetworkWatchTest : public DaemonTest {
 protected:
  NetworkWatchTest() { busIncludes_ = {kNetworkdPolicy, networkManagerPolicy(dir_)}; }

  void SetUp() override {
    if (::access(kNetworkdPolicy, R_OK) != 0) {
      GTEST_SKIP() << kNetworkdPolicy << " is missing (package systemd)";
    }
    DaemonTest::SetUp();
    // The hub is unreachable when the daemon starts: its first attempt fails, and the next one
    // waits 30-60 s.
    hub_.stop();
    writeConfig(kLongBackoff);
  }

  /// Starts the daemon and waits until it waits out its backoff, having read the network
  /// manager's state as `reported` ("systemd-networkd reports the network offline").
  void startBackingOff(const std::string& reported) {
    startDaemon();
    client();  // subscribed from now on: the Connected change is not missed
    ASSERT_TRUE(daemon_->waitForLog("reconnecting in ")) << daemon_->log();
    if (!reported.empty()) {
      ASSERT_TRUE(daemon_->waitForLog(reported)) << daemon_->log();
    }
    ASSERT_FALSE(client().Connected());
    hub_.start();  // reachable again, on the same port; the daemon does not know yet
  }

  /// Waits for Connected and says how long it took since `since`.
  void expectConnectedSoon(Steady::time_point since, const std::string& manager) {
    ASSERT_TRUE(client().waitForConnectedProperty(true, kWellWithinTheBackoff))
        << "not connected " << kWellWithinTheBackoff.count() << " s after the network came back:\n"
        << daemon_->log();
    std::printf("connected %lld ms after %s said the network is back\n", msSince(since),
                manager.c_str());
    EXPECT_TRUE(daemon_->waitForLog("the network is online again (" + manager +
                                    "): reconnecting now instead of in "))
        << daemon_->log();
  }
};

/// A real systemd-networkd on the private bus, in this binary's namespaces: it manages kUplink
/// (one static address, required for online), whose carrier follows kPeer.
class NetworkdTest : public NetworkWatchTest {
 protected:
  void SetUp() override {
    if (::access(kNetworkd, X_OK) != 0 || ::getpwnam("systemd-network") == nullptr) {
      GTEST_SKIP() << kNetworkd << " or the user systemd-network is missing (package systemd)";
    }
    NetworkWatchTest::SetUp();
    if (IsSkipped()) {
      return;
    }
    const passwd* user = ::getpwnam("systemd-network");
    // Its state directory and configuration, per test, over the machine's.
    const std::string netif = dir_ / "netif";
    const std::string network = dir_ / "network";
    ::mkdir(netif.c_str(), 0755);
    ASSERT_EQ(::chown(netif.c_str(), user->pw_uid, user->pw_gid), 0);
    ::mkdir(network.c_str(), 0755);
    writeFile(network + "/10-iothubd-uplink.network",
              std::string("[Match]\nName=") + kUplink +
                  "\n[Network]\nAddress=10.99.0.1/24\n"
                  // Configured as soon as it has carrier: nothing waits for a router here.
                  "LinkLocalAddressing=no\nIPv6AcceptRA=no\n");
    for (const auto& [from, to] : {std::pair{netif, std::string("/run/systemd/netif")},
                                   std::pair{network, std::string("/etc/systemd/network")}}) {
      ::mkdir("/run/systemd", 0755);
      ::mkdir(to.c_str(), 0755);
      ASSERT_EQ(::mount(from.c_str(), to.c_str(), nullptr, MS_BIND, nullptr), 0)
          << "bind " << from << " over " << to << ": " << std::strerror(errno);
      mounted_.push_back(to);
    }
    // The peer stays down: no carrier, networkd reports "offline".
    ASSERT_EQ(run({"ip", "link", "add", kUplink, "type", "veth", "peer", "name", kPeer}), 0);
    startNetworkd();
  }

  void TearDown() override {
    if (networkd_ > 0) {
      ::kill(networkd_, SIGTERM);
      ::waitpid(networkd_, nullptr, 0);
    }
    (void)run({"ip", "link", "del", kUplink});
    for (const auto& m : mounted_) {
      ::umount2(m.c_str(), MNT_DETACH);
    }
    if (HasFailure()) {
      try {
        std::cerr << "----- systemd-networkd log -----\n" << readFile(dir_ / "networkd.log");
      } catch (const std::exception&) {
      }
    }
    NetworkWatchTest::TearDown();
  }

  void startNetworkd() {
    const std::string log = dir_ / "networkd.log";
    const std::string address = "DBUS_SYSTEM_BUS_ADDRESS=" + bus_->address();
    networkd_ = ::fork();
    ASSERT_GE(networkd_, 0);
    if (networkd_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      const int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(out, STDOUT_FILENO);
      ::dup2(out, STDERR_FILENO);
      // As root: it sets itself up and drops to systemd-network, as under systemd.
      const char* env[] = {address.c_str(), "SYSTEMD_LOG_LEVEL=debug", "SYSTEMD_LOG_TARGET=console",
                           nullptr};
      ::execle(kNetworkd, kNetworkd, static_cast<char*>(nullptr), env);
      ::_exit(127);
    }
  }

  pid_t networkd_ = -1;
  std::vector<std::string> mounted_;
};

// The user's scenario with systemd-networkd: the uplink's carrier comes back, networkd's
// OnlineState goes offline -> online, and the daemon stops waiting out its 30-60 s backoff.
TEST_F(NetworkdTest, TheNetworkComingBackEndsTheBackoffAtOnce) {
  startBackingOff("systemd-networkd reports the network offline");
  const auto back = Steady::now();
  ASSERT_EQ(run({"ip", "link", "set", kPeer, "up"}), 0);
  ASSERT_TRUE(daemon_->waitForLog("systemd-networkd: the network is online again"))
      << daemon_->log();
  expectConnectedSoon(back, "systemd-networkd");
}

// NetworkManager (in-test): State 20 -> 70 with StateChanged and PropertiesChanged.
TEST_F(NetworkWatchTest, NetworkManagerComingOnlineEndsTheBackoffAtOnce) {
  FakeNetworkManager nm(bus_->address(), kNmDisconnected);
  startBackingOff("NetworkManager reports the network offline");
  const auto back = Steady::now();
  nm.setState(kNmConnectedGlobal);
  expectConnectedSoon(back, "NetworkManager");
}

// A hostile app outside group iothub (user nobody) addresses a forged "NetworkManager is online"
// PropertiesChanged to iothubd: the bus policy lets PropertiesChanged through (the real services
// send their changes that way), but the daemon takes it only from the name's owner, so the backoff
// stands. The owner's own change then ends it.
TEST_F(NetworkWatchTest, AForgedOnlineSignalFromAnotherUserIsIgnored) {
  FakeNetworkManager nm(bus_->address(), kNmDisconnected);
  startBackingOff("NetworkManager reports the network offline");
  const char* forge = R"(import sys, dbus
bus = dbus.bus.BusConnection(sys.argv[1])
m = dbus.lowlevel.SignalMessage('/org/freedesktop/NetworkManager',
                                'org.freedesktop.DBus.Properties', 'PropertiesChanged')
m.set_destination('org.iothubd')
m.append('org.freedesktop.NetworkManager',
         dbus.Dictionary({'State': dbus.UInt32(70, variant_level=1)}, signature='sv'),
         dbus.Array([], signature='s'))
bus.send_message(m)
bus.flush()
)";
  ASSERT_EQ(
      run({"runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", forge, bus_->address()}), 0)
      << "the bus refused the forged signal, or python3-dbus is missing";
  ASSERT_TRUE(daemon_->waitForLog("ignoring PropertiesChanged from")) << daemon_->log();
  EXPECT_FALSE(client().Connected());
  EXPECT_EQ(daemon_->log().find("the network is online again"), std::string::npos)
      << daemon_->log();
  const auto back = Steady::now();
  nm.setState(kNmConnectedGlobal);
  expectConnectedSoon(back, "NetworkManager");
}

// A network manager that starts after the daemon is picked up, and one that restarts and finds
// the network back counts as the network coming back.
TEST_F(NetworkWatchTest, ANetworkManagerStartedLaterOrRestartedIsPickedUp) {
  startBackingOff("");
  std::optional<FakeNetworkManager> nm;
  nm.emplace(bus_->address(), kNmDisconnected);
  ASSERT_TRUE(daemon_->waitForLog("NetworkManager reports the network offline")) << daemon_->log();
  nm.reset();
  ASSERT_TRUE(daemon_->waitForLog("NetworkManager left the bus")) << daemon_->log();
  const auto back = Steady::now();
  nm.emplace(bus_->address(), kNmConnectedGlobal);
  expectConnectedSoon(back, "NetworkManager");
}

/// Both managers could be bus-activated (their policies, and service files that only leave a
/// mark), but neither runs.
class ActivationTest : public DaemonTest {
 protected:
  ActivationTest() {
    const std::string services = dir_ / "services";
    ::mkdir(services.c_str(), 0755);
    for (const char* name : kNames) {
      writeFile(services + "/" + name + ".service", std::string("[D-BUS Service]\nName=") + name +
                                                        "\nExec=/bin/sh -c 'touch " + mark(name) +
                                                        "; exit 1'\nUser=root\n");
    }
    const std::string activation = dir_ / "activation.conf";
    writeFile(activation, "<busconfig><servicedir>" + services + "</servicedir></busconfig>\n");
    busIncludes_ = {kNetworkdPolicy, networkManagerPolicy(dir_), activation};
  }
  void SetUp() override {
    if (::access(kNetworkdPolicy, R_OK) != 0) {
      GTEST_SKIP() << kNetworkdPolicy << " is missing (package systemd)";
    }
    DaemonTest::SetUp();
  }
  [[nodiscard]] std::string mark(const std::string& name) const {
    return dir_ / (name + ".started");
  }
  [[nodiscard]] bool started(const std::string& name) const {
    return ::access(mark(name).c_str(), F_OK) == 0;
  }

  static constexpr std::array<const char*, 2> kNames{"org.freedesktop.network1", kNmName};
};

// With neither manager running the daemon connects as it always did, and starts neither.
TEST_F(ActivationTest, AbsentNetworkManagersAreNeverStarted) {
  startDaemon();
  awaitOnline();  // the watch asked the bus long before this answer
  for (const char* name : kNames) {
    EXPECT_FALSE(started(name)) << name << " was bus-activated";
  }
  EXPECT_EQ(daemon_->log().find("is on the bus"), std::string::npos) << daemon_->log();
  // The mark works: a call that allows auto-start starts networkd's stand-in.
  (void)runForOutput({"busctl", "--address=" + bus_->address(), "--auto-start=yes", "--timeout=5",
                      "get-property", "org.freedesktop.network1", "/org/freedesktop/network1",
                      "org.freedesktop.network1.Manager", "OnlineState"});
  EXPECT_TRUE(started("org.freedesktop.network1"))
      << "the activation mark does not work: this test could not fail";
}

}  // namespace
}  // namespace iothubd::testing

int main(int argc, char** argv) {
  using namespace iothubd::testing;
  if (int r = enterPrivateNetwork(); r != 0) {
    return r;
  }
  if (int r = enterPrivateMounts(); r != 0) {
    return r;
  }
  // networkd reads links from sysfs, which shows the network namespace of whoever mounted it;
  // read-only, as in a container, so that networkd does not wait for a udev that is not there.
  if (::mount("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) !=
      0) {
    std::cerr << "cannot mount this namespace's sysfs: " << std::strerror(errno) << "\n";
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
