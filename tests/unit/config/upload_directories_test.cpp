// SPDX-License-Identifier: MIT
// [file_upload] upload_from_path_directories: what the configuration check lets through.
#include "iothubd/config/upload_directories.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <gtest/gtest.h>

#include "temp_dir.hpp"

namespace iothubd::config {
namespace {

class UploadDirectoriesTest : public ::testing::Test {
 protected:
  UploadDirectoriesTest() {
    root_ = std::filesystem::canonical(dir_.path()).string();
    for (const char* d :
         {"/etc", "/etc/iothubd", "/state", "/creds", "/apps", "/apps/out", "/keys"}) {
      ::mkdir((root_ + d).c_str(), 0755);
    }
    paths_.configPath = root_ + "/etc/iothubd/iothubd.conf";
    paths_.credentialsDirectory = root_ + "/creds";
    paths_.stateDirectory = root_ + "/state";
  }

  core::Result<void> check(const std::vector<std::string>& dirs) {
    settings_.uploadFromPathDirectories = dirs;
    return checkUploadDirectories(settings_, paths_);
  }
  std::string errorOf(const std::vector<std::string>& dirs) {
    auto r = check(dirs);
    EXPECT_FALSE(r) << dirs.front();
    return r ? std::string() : r.error().message;
  }

  testing::TempDir dir_{"iothubd-upload-dirs"};
  std::string root_;
  Settings settings_;
  DaemonPaths paths_;
};

TEST_F(UploadDirectoriesTest, NoneListedIsFineAndAnAppDirectoryApartIsAccepted) {
  EXPECT_TRUE(check({}));
  EXPECT_TRUE(check({root_ + "/apps/out"}));
}

TEST_F(UploadDirectoriesTest, TheDaemonsOwnDirectoriesAndWhatHoldsThemAreRefused) {
  EXPECT_NE(errorOf({root_ + "/etc/iothubd"}).find(" is "), std::string::npos);
  EXPECT_NE(errorOf({root_ + "/etc"}).find(" contains "), std::string::npos);
  EXPECT_NE(errorOf({root_ + "/creds"}).find("upload_from_path_directories"), std::string::npos);
  EXPECT_NE(errorOf({root_ + "/state"}).find(root_ + "/state"), std::string::npos);
  EXPECT_NE(errorOf({root_}).find(" contains "), std::string::npos);
  EXPECT_FALSE(check({"/"}));
  EXPECT_FALSE(check({"/proc"}));
  EXPECT_FALSE(check({"/proc/self"}));
  EXPECT_FALSE(check({"/dev"}));
  EXPECT_FALSE(check({"/run"})) << "holds /run/credentials";
  EXPECT_FALSE(check({"/var/lib"})) << "holds /var/lib/iothubd";
  ::mkdir((root_ + "/etc/iothubd/iothubd.conf.d").c_str(), 0755);
  EXPECT_FALSE(check({root_ + "/etc/iothubd/iothubd.conf.d"}));
}

TEST_F(UploadDirectoriesTest, DirectoriesOfSecretFilesAndTheOutboxAreRefused) {
  settings_.x509KeyFile = root_ + "/keys/device.key";
  EXPECT_NE(errorOf({root_ + "/keys"}).find(root_ + "/keys"), std::string::npos);
  settings_.x509KeyFile.clear();
  settings_.outboxPath = root_ + "/apps/out/outbox.db";
  EXPECT_FALSE(check({root_ + "/apps/out"}));
  EXPECT_FALSE(check({root_ + "/apps"}));
}

TEST_F(UploadDirectoriesTest, OnlyExistingCanonicalDirectoriesAreAccepted) {
  EXPECT_NE(errorOf({root_ + "/missing"}).find("No such file"), std::string::npos);
  ASSERT_EQ(::symlink((root_ + "/creds").c_str(), (root_ + "/apps/creds-link").c_str()), 0);
  std::string message = errorOf({root_ + "/apps/creds-link"});
  EXPECT_NE(message.find("not canonical"), std::string::npos) << message;
  ASSERT_EQ(::symlink((root_ + "/apps/out").c_str(), (root_ + "/out-link").c_str()), 0);
  EXPECT_NE(errorOf({root_ + "/out-link"}).find("write " + root_ + "/apps/out"), std::string::npos);
  EXPECT_FALSE(check({root_ + "/apps/../apps/out"}));
  testing::writeFile(root_ + "/apps/file", "x");
  EXPECT_NE(errorOf({root_ + "/apps/file"}).find("not a directory"), std::string::npos);
}

TEST_F(UploadDirectoriesTest, ASymlinkedProtectedDirectoryIsComparedByItsTarget) {
  // The state directory reached through a link: listing its real location is refused too.
  ASSERT_EQ(::symlink((root_ + "/apps/out").c_str(), (root_ + "/state-link").c_str()), 0);
  paths_.stateDirectory = root_ + "/state:" + root_ + "/state-link";
  EXPECT_FALSE(check({root_ + "/apps/out"}));
}

}  // namespace
}  // namespace iothubd::config
