// SPDX-License-Identifier: MIT
// Start-up failures an operator can cause: each exits with a status that means something and one
// log line that names the file, key and problem, without any secret.
#include <sys/stat.h>
#include <sysexits.h>
#include <unistd.h>

#include "daemon_fixture.hpp"

namespace iothubd::testing {
namespace {

class StartupTest : public DaemonTest {};

TEST_F(StartupTest, SecretFileReadableByOthersExits78NamingTheFile) {
  std::string secret = credentialsDir_ + "/connection-string";
  ASSERT_EQ(::chmod(secret.c_str(), 0644), 0);
  EXPECT_EQ(runUntilExit(), EX_CONFIG);
  std::string log = daemon_->log();
  EXPECT_NE(log.find(secret), std::string::npos) << log;
  EXPECT_NE(log.find("0644"), std::string::npos) << log;
  EXPECT_EQ(log.find(deviceKey_), std::string::npos) << "the key leaked into the log";
}

TEST_F(StartupTest, UnknownConfigKeyExits78NamingFileLineAndKey) {
  writeConfig("[connection]\nkeep_alive_seconds = 30\n");
  EXPECT_EQ(runUntilExit(), EX_CONFIG);
  std::string log = daemon_->log();
  EXPECT_NE(log.find(configPath_ + ":"), std::string::npos) << log;
  EXPECT_NE(log.find("keep_alive_seconds: unknown key"), std::string::npos) << log;
}

TEST_F(StartupTest, MalformedConnectionStringExits78WithoutEchoingIt) {
  auto user = serviceUser();
  writeFile(credentialsDir_ + "/connection-string",
            "HostName=localhost;DeviceId=dev1;SharedAccessKey=" + deviceKey_ + ";Colour=red\n",
            0600, static_cast<int>(user.uid), static_cast<int>(user.gid));
  EXPECT_EQ(runUntilExit(), EX_CONFIG);
  std::string log = daemon_->log();
  EXPECT_NE(log.find("Colour"), std::string::npos) << log;
  EXPECT_EQ(log.find(deviceKey_), std::string::npos) << "the key leaked into the log";
}

TEST_F(StartupTest, HalfConfiguredProxyIsRefusedNotBypassed) {
  writeConfig("[proxy]\nproxy_type = HTTP\n");
  EXPECT_EQ(runUntilExit(), EX_CONFIG);
  EXPECT_NE(daemon_->log().find("proxy_address"), std::string::npos) << daemon_->log();
}

}  // namespace
}  // namespace iothubd::testing
