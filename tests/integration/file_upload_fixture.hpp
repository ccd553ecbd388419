// SPDX-License-Identifier: MIT
// Fixture for file upload through the daemon: DaemonTest plus the hub's file-upload endpoints
// and one Azurite per test suite.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <regex>

#include "daemon_fixture.hpp"
#include "file_upload_hub.hpp"

namespace iothubd::testing {

inline std::string sha256Hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

inline std::string randomBytes(size_t size) {
  std::string data(size, '\0');
  std::mt19937_64 random(size);
  for (size_t i = 0; i < size; i += 8) {
    uint64_t v = random();
    std::memcpy(data.data() + i, &v, std::min<size_t>(8, size - i));
  }
  return data;
}

/// Whether process `pid` holds a descriptor for `path`.
inline bool holdsFile(pid_t pid, const std::string& path) {
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  bool found = false;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      char target[4096];
      ssize_t n = ::readlink((dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
      found |= n > 0 && std::string(target, static_cast<size_t>(n)) == path;
    }
    ::closedir(d);
  }
  return found;
}

inline size_t fdCount(pid_t pid) {
  size_t n = 0;
  if (DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str())) {
    while (dirent* e = ::readdir(d)) {
      n += e->d_name[0] != '.';
    }
    ::closedir(d);
  }
  return n;
}

class FileUploadTest : public DaemonTest {
 protected:
  static void SetUpTestSuite() {
    // One storage emulator for the suite: it only needs the process-wide test PKI, which every
    // HubEmulator of this process shares.
    pki_ = new hubemu::HubEmulator();
    azurite_ = new hubemu::Azurite(pki_->dir());
    azurite_->start();
  }
  static void TearDownTestSuite() {
    delete azurite_;
    delete pki_;
  }

  void SetUp() override {
    DaemonTest::SetUp();
    files_ = std::make_unique<hubemu::FileUploadHub>(hub_, azurite_);
    files_->start();
    writeConfig("[file_upload]\nhttps_port = " + std::to_string(files_->port()) +
                "\nblock_size = 4194304\n");
  }

  void TearDown() override {
    if (HasFailure() && files_) {
      static const std::regex kSig("sig=[^&\\s]*");
      std::cerr << "--- file-upload hub log ---\n"
                << files_->log() << "--- azurite log ---\n"
                << std::regex_replace(azurite_->log(), kSig, "sig=REDACTED");
    }
    DaemonTest::TearDown();
  }

  /// A file the daemon (user iothubd) may read, with `data` in it.
  std::string sourceFile(const std::string& name, const std::string& data, unsigned mode = 0644) {
    std::string path = daemonDir_ + "/" + name;
    writeFile(path, data, mode);
    return path;
  }

  std::string upload(const std::string& blob, const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    std::string id = client().UploadFile(blob, sdbus::UnixFd(fd));
    ::close(fd);
    return id;
  }

  bool notifiedSuccess(const std::string& correlationId) {
    for (const auto& n : files_->notifications()) {
      if (n.correlationId == correlationId && n.isSuccess) {
        return true;
      }
    }
    return false;
  }

  static inline hubemu::HubEmulator* pki_ = nullptr;
  static inline hubemu::Azurite* azurite_ = nullptr;
  std::unique_ptr<hubemu::FileUploadHub> files_;
};

}  // namespace iothubd::testing
