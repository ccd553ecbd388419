// SPDX-License-Identifier: MIT
// openForUpload(): UploadFileFromPath's confinement, on real files, links and mounts.
#include "upload_path.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace iothubd::dbusapi {
namespace {

using core::Errc;

class UploadPathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string base = std::getenv("TMPDIR") != nullptr ? std::getenv("TMPDIR") : "/tmp";
    std::string pattern = base + "/iothubd-upload-path-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    // Canonical, as the configuration check makes every listed directory.
    root_ = std::filesystem::canonical(pattern).string();
    allowed_ = root_ + "/allowed";
    secret_ = root_ + "/secret";
    ASSERT_EQ(::mkdir(allowed_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(secret_.c_str(), 0700), 0);
    write(secret_ + "/key", "the device key", 0600);
    me_.uid = ::geteuid();
    me_.gids = {::getegid()};
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  static void write(const std::string& path, const std::string& data, mode_t mode) {
    std::ofstream(path) << data;
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
  }
  core::Result<core::UniqueFd> open(const std::string& path) { return open(path, me_); }
  core::Result<core::UniqueFd> open(const std::string& path, const PeerCredentials& who) {
    return openForUpload({allowed_}, path, who);
  }
  static std::string read(const core::UniqueFd& fd) {
    char buf[256];
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }
  static bool root() { return ::geteuid() == 0; }

  std::string root_, allowed_, secret_;
  PeerCredentials me_;
};

Errc codeOf(const core::Result<core::UniqueFd>& r) {
  return r ? Errc::Internal : r.error().code;
}

TEST_F(UploadPathTest, WithoutListedDirectoriesEveryPathIsRefusedSayingHowToEnableIt) {
  auto r = openForUpload({}, allowed_ + "/x", me_);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::AccessDenied);
  EXPECT_NE(r.error().message.find("upload_from_path_directories"), std::string::npos);
  EXPECT_NE(r.error().message.find("UploadFile"), std::string::npos);
}

TEST_F(UploadPathTest, AReadableFileBeneathAListedDirectoryOpens) {
  ::mkdir((allowed_ + "/sub").c_str(), 0755);
  write(allowed_ + "/sub/report.csv", "a,b\n", 0644);
  auto r = open(allowed_ + "/sub/report.csv");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(read(*r), "a,b\n");
  auto inside = open(allowed_ + "/sub/../sub/report.csv");
  EXPECT_TRUE(inside) << "\"..\" that stays beneath is fine";
}

TEST_F(UploadPathTest, PathsOutsideTheDirectoriesAreRefused) {
  EXPECT_EQ(codeOf(open(secret_ + "/key")), Errc::AccessDenied);
  EXPECT_EQ(codeOf(open(allowed_)), Errc::AccessDenied) << "the directory itself";
  EXPECT_EQ(codeOf(open(allowed_ + "x/key")), Errc::AccessDenied) << "a longer name, not beneath";
  EXPECT_EQ(codeOf(open("relative/key")), Errc::InvalidArgument);
  EXPECT_EQ(codeOf(open("")), Errc::InvalidArgument);
  EXPECT_EQ(codeOf(open("/proc/self/environ")), Errc::AccessDenied);
  EXPECT_EQ(codeOf(open("/dev/fd/0")), Errc::AccessDenied);
  auto longPath = open(allowed_ + "/" + std::string(70000, 'p'));
  ASSERT_FALSE(longPath);
  EXPECT_EQ(longPath.error().code, Errc::InvalidArgument);
  EXPECT_LT(longPath.error().message.size(), 512u) << "the path is quoted cut";
}

TEST_F(UploadPathTest, DotDotCannotLeaveTheDirectory) {
  auto r = open(allowed_ + "/../secret/key");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::AccessDenied);
  EXPECT_NE(r.error().message.find("leaves"), std::string::npos) << r.error().message;
  EXPECT_EQ(codeOf(open(allowed_ + "//" + secret_ + "/key")), Errc::AccessDenied);
}

TEST_F(UploadPathTest, SymlinksAreNeverFollowedNorMagicLinks) {
  ASSERT_EQ(::symlink((secret_ + "/key").c_str(), (allowed_ + "/key-link").c_str()), 0);
  ASSERT_EQ(::symlink(secret_.c_str(), (allowed_ + "/dir-link").c_str()), 0);
  ASSERT_EQ(::symlink("/proc/self/fd/3", (allowed_ + "/fd-link").c_str()), 0);
  ASSERT_EQ(::symlink("/proc/self", (allowed_ + "/proc-link").c_str()), 0);
  write(allowed_ + "/plain", "x", 0644);
  ASSERT_EQ(::symlink("plain", (allowed_ + "/inside-link").c_str()), 0);
  for (const char* name :
       {"/key-link", "/dir-link/key", "/fd-link", "/proc-link/environ", "/inside-link"}) {
    auto r = open(allowed_ + name);
    ASSERT_FALSE(r) << name;
    EXPECT_EQ(r.error().code, Errc::AccessDenied) << name;
  }
}

TEST_F(UploadPathTest, MountCrossingsAreRefused) {
  // "/" listed (the configuration check would refuse it): /proc is another mount.
  auto r = openForUpload({"/"}, "/proc/self/environ", me_);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::AccessDenied) << r.error().message;
}

TEST_F(UploadPathTest, AFileWithMoreThanOneNameIsRefused) {
  write(allowed_ + "/own", "data", 0644);
  ASSERT_EQ(::link((allowed_ + "/own").c_str(), (root_ + "/second-name").c_str()), 0);
  auto r = open(allowed_ + "/own");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::AccessDenied);
  EXPECT_NE(r.error().message.find("2 hard links"), std::string::npos) << r.error().message;
  if (root()) {
    // A hard link to the secret itself (root may make one; fs.protected_hardlinks stops users).
    ASSERT_EQ(::link((secret_ + "/key").c_str(), (allowed_ + "/key-hardlink").c_str()), 0);
    EXPECT_EQ(codeOf(open(allowed_ + "/key-hardlink")), Errc::AccessDenied);
  }
}

TEST_F(UploadPathTest, OnlyRegularFilesAndPipesAndAPipeWithoutWriterDoesNotBlock) {
  ::mkdir((allowed_ + "/d").c_str(), 0755);
  EXPECT_EQ(codeOf(open(allowed_ + "/d")), Errc::InvalidArgument);
  ASSERT_EQ(::mkfifo((allowed_ + "/fifo").c_str(), 0644), 0);
  EXPECT_TRUE(open(allowed_ + "/fifo"));
  EXPECT_EQ(codeOf(open(allowed_ + "/missing")), Errc::NotFound);
}

TEST_F(UploadPathTest, TheCallersOwnRightsDecideNotTheDaemons) {
  if (!root()) {
    GTEST_SKIP() << "needs root to give files other owners";
  }
  const std::string file = allowed_ + "/file";
  write(file, "data", 0640);
  ASSERT_EQ(::chown(file.c_str(), 4242, 4343), 0);
  const PeerCredentials owner{4242, {100}};
  const PeerCredentials member{5000, {100, 4343}};
  const PeerCredentials stranger{5001, {100}};
  EXPECT_TRUE(open(file, owner));
  EXPECT_TRUE(open(file, member));
  auto refused = open(file, stranger);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::AccessDenied);
  EXPECT_NE(refused.error().message.find("caller's rights"), std::string::npos);
  EXPECT_TRUE(open(file, PeerCredentials{0, {}})) << "root";

  ASSERT_EQ(::chmod(file.c_str(), 0044), 0);
  EXPECT_FALSE(open(file, owner)) << "the owner class decides, even when others may read";
  EXPECT_TRUE(open(file, stranger));

  // An owner the daemon's user namespace cannot map shows as 65534: it is nobody's file.
  ASSERT_EQ(::chown(file.c_str(), 65534, 65534), 0);
  ASSERT_EQ(::chmod(file.c_str(), 0660), 0);
  EXPECT_FALSE(open(file, PeerCredentials{65534, {65534}}));
}

TEST_F(UploadPathTest, AnAccessAclIsEvaluatedForTheCaller) {
  if (!root()) {
    GTEST_SKIP() << "needs root to give files other owners";
  }
  const std::string file = allowed_ + "/acl";
  write(file, "data", 0644);
  ASSERT_EQ(::chown(file.c_str(), 4242, 4343), 0);
  // user::rw- user:5001:--- group::r-- mask::r-- other::r--
  const unsigned char acl[] = {2,    0, 0, 0,                           // version
                               0x01, 0, 6, 0, 0xff, 0xff, 0xff, 0xff,   // user::rw-
                               0x02, 0, 0, 0, 0x89, 0x13, 0,    0,      // user:5001:---
                               0x04, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,   // group::r--
                               0x10, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,   // mask::r--
                               0x20, 0, 4, 0, 0xff, 0xff, 0xff, 0xff};  // other::r--
  if (::setxattr(file.c_str(), "system.posix_acl_access", acl, sizeof acl, 0) != 0) {
    GTEST_SKIP() << "no ACLs on this file system: " << std::strerror(errno);
  }
  EXPECT_FALSE(open(file, PeerCredentials{5001, {100}})) << "named entry without read";
  EXPECT_TRUE(open(file, PeerCredentials{5002, {100}})) << "others may read";
}

}  // namespace
}  // namespace iothubd::dbusapi
