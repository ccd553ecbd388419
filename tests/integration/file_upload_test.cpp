// SPDX-License-Identifier: MIT
// File upload through the daemon (issue 4): the seed's two steps, UploadFile from a descriptor
// and UploadFileFromPath, against the hub's file-upload endpoints and Azurite as storage.
#include <future>

#include "file_upload_fixture.hpp"

namespace iothubd::testing {
namespace {

using Steady = std::chrono::steady_clock;

TEST_F(FileUploadTest, StorageInfoLetsCurlUploadAndTheNotificationReachesTheHubAsGiven) {
  startDaemon();
  auto info = client().GetStorageInfoForBlob("manual.txt");
  for (const char* key : {"correlationId", "hostName", "containerName", "blobName", "sasToken"}) {
    EXPECT_FALSE(info[key].empty()) << key;
  }
  EXPECT_EQ(info["blobName"], "dev1/manual.txt");
  std::string data = "uploaded by curl\n";
  std::string path = sourceFile("manual.txt", data);
  std::string url = "https://" + info["hostName"] + "/" + info["containerName"] + "/" +
                    info["blobName"] + info["sasToken"];
  std::string cmd = "curl -sS -o /dev/null -w '%{http_code}' --cacert '" + hub_.caFile() +
                    "' -X PUT -H 'x-ms-blob-type: BlockBlob' --data-binary @'" + path + "' '" +
                    url + "'";
  FILE* p = ::popen(cmd.c_str(), "r");
  char code[8] = {};
  size_t n = std::fread(code, 1, sizeof code - 1, p);
  ::pclose(p);
  EXPECT_EQ(std::string(code, n), "201");
  EXPECT_EQ(files_->blob("dev1/manual.txt").sha256, sha256Hex(data));

  client().NotifyBlobUploadStatus(info["correlationId"], true, 201, "uploaded with curl");
  auto notes = files_->notifications();
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_EQ(notes[0].correlationId, info["correlationId"]);
  EXPECT_TRUE(notes[0].isSuccess);
  EXPECT_EQ(notes[0].statusCode, 201);
  EXPECT_EQ(notes[0].statusDescription, "uploaded with curl");
}

TEST_F(FileUploadTest, UploadFileStoresEveryByteAndReportsProgressToTheTotal) {
  startDaemon();
  struct Case {
    std::string name;
    size_t size;
  };
  for (const Case& c : std::vector<Case>{{"empty.bin", 0},
                                         {"small.bin", 1024},
                                         {"nine.bin", 9u << 20},
                                         {"hundred.bin", 100u << 20}}) {
    std::string data = randomBytes(c.size);
    std::string path = sourceFile(c.name, data);
    auto started = Steady::now();
    std::string correlationId = upload(c.name, path);
    std::cout
        << c.name << ": " << c.size << " bytes in "
        << std::chrono::duration_cast<std::chrono::milliseconds>(Steady::now() - started).count()
        << " ms\n";
    auto blob = files_->blob("dev1/" + c.name);
    EXPECT_TRUE(blob.exists) << c.name;
    EXPECT_EQ(blob.size, c.size) << c.name;
    EXPECT_EQ(blob.sha256, sha256Hex(data)) << c.name;
    EXPECT_TRUE(notifiedSuccess(correlationId)) << c.name;
    auto last = client().waitForSignal("UploadProgress", [&](const SignalRecord& r) {
      return r.args[0] == c.name && r.args[1] == r.args[2];
    });
    ASSERT_TRUE(last.has_value()) << c.name;
    EXPECT_EQ(last->args[2], std::to_string(c.size)) << c.name;
    ::unlink(path.c_str());
  }
}

TEST_F(FileUploadTest, UploadFileReadsAPipeToItsEnd) {
  startDaemon();
  std::string data = randomBytes(5u << 20);
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  auto writer = std::async(std::launch::async, [&] {
    size_t off = 0;
    while (off < data.size()) {
      ssize_t n = ::write(fds[1], data.data() + off, std::min<size_t>(65536, data.size() - off));
      if (n <= 0) {
        break;
      }
      off += static_cast<size_t>(n);
    }
    ::close(fds[1]);
  });
  std::string correlationId = client().UploadFile("piped.bin", sdbus::UnixFd(fds[0]));
  ::close(fds[0]);
  writer.get();
  auto blob = files_->blob("dev1/piped.bin");
  EXPECT_EQ(blob.size, data.size());
  EXPECT_EQ(blob.sha256, sha256Hex(data));
  EXPECT_TRUE(notifiedSuccess(correlationId));
  auto last = client().waitForSignal("UploadProgress", [&](const SignalRecord& r) {
    return r.args[0] == "piped.bin" && r.args[1] == std::to_string(data.size()) &&
           r.args[1] == r.args[2];
  });
  EXPECT_TRUE(last.has_value());
}

TEST_F(FileUploadTest, TelemetryKeepsFlowingDuringALargeUpload) {
  startDaemon();
  awaitOnline();
  std::string path = sourceFile("big.bin", randomBytes(100u << 20));
  auto uploader = newClient();
  auto upload = std::async(std::launch::async, [&] {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    std::string id = uploader->UploadFile("big.bin", sdbus::UnixFd(fd));
    ::close(fd);
    return id;
  });
  size_t sent = 0;
  Steady::duration worst{};
  while (upload.wait_for(0s) != std::future_status::ready) {
    auto t0 = Steady::now();
    ASSERT_FALSE(client().SendMessage("during upload", {}, {}).empty());
    worst = std::max(worst, Steady::now() - t0);
    ++sent;
  }
  EXPECT_TRUE(notifiedSuccess(upload.get()));
  std::cout << "SendMessage during a 100 MiB upload: " << sent << " calls, worst reply "
            << std::chrono::duration_cast<std::chrono::milliseconds>(worst).count() << " ms\n";
  EXPECT_GT(sent, 0u);
}

TEST_F(FileUploadTest, StorageRefusingTheSasFailsWithItsStatusAndTheHubIsToldTheTruth) {
  startDaemon();
  std::string path = sourceFile("refused.bin", randomBytes(1024));
  // One good upload first: libcurl keeps its connections to the hub and to storage open for
  // reuse, and those are not leaks.
  upload("warm-up.bin", path);
  size_t fdsBefore = fdCount(daemon_->pid());
  files_->setFaults(R"({"sas":{"bad":true}})");
  std::string message;
  EXPECT_EQ(errorNameOf([&] { upload("refused.bin", path); }, &message),
            "org.iothubd.Error.Service");
  EXPECT_NE(message.find("403"), std::string::npos) << message;
  auto notes = files_->notifications();
  ASSERT_EQ(notes.size(), 2u);
  EXPECT_FALSE(notes[1].isSuccess);
  EXPECT_EQ(notes[1].statusCode, 403);
  // libcurl may close idle cached connections meanwhile, never open more for a failed upload.
  EXPECT_LE(fdCount(daemon_->pid()), fdsBefore) << "the daemon kept a descriptor";
  EXPECT_FALSE(holdsFile(daemon_->pid(), path));
}

TEST_F(FileUploadTest, StorageNotRunningFailsWithConnectionFailedAndTheHubIsToldTheTruth) {
  startDaemon();
  std::string path = sourceFile("nowhere.bin", randomBytes(1024));
  upload("warm-up.bin", path);  // libcurl's reusable connections, as above
  size_t fdsBefore = fdCount(daemon_->pid());
  files_->setFaults(R"({"sas":{"storageHost":"localhost:1"}})");
  std::string message;
  EXPECT_EQ(errorNameOf([&] { upload("nowhere.bin", path); }, &message),
            "org.iothubd.Error.ConnectionFailed");
  EXPECT_FALSE(message.empty());
  auto notes = files_->notifications();
  ASSERT_EQ(notes.size(), 2u);
  EXPECT_FALSE(notes[1].isSuccess);
  EXPECT_LE(fdCount(daemon_->pid()), fdsBefore) << "the daemon kept a descriptor";
  EXPECT_FALSE(holdsFile(daemon_->pid(), path));
}

TEST_F(FileUploadTest, UploadFileFromPathIsRefusedUntilTheOperatorListsADirectory) {
  startDaemon();
  std::string readable = sourceFile("readable.txt", "from a path\n", 0644);
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().UploadFileFromPath("readable.txt", readable); }, &message),
            "org.freedesktop.DBus.Error.AccessDenied");
  EXPECT_NE(message.find("upload_from_path_directories"), std::string::npos) << message;
  EXPECT_NE(message.find("UploadFile"), std::string::npos) << message;
  EXPECT_TRUE(files_->notifications().empty()) << "nothing reached the hub";
}

TEST_F(FileUploadTest, UploadFileFromPathReadsAListedDirectoryWithTheCallersRights) {
  const std::string outbox = dir_ / "app-out";
  ASSERT_EQ(::mkdir(outbox.c_str(), 0755), 0);
  writeConfig("[file_upload]\nhttps_port = " + std::to_string(files_->port()) +
              "\nupload_from_path_directories = " + outbox + "\n");
  startDaemon();
  std::string data = "from a path\n";
  writeFile(outbox + "/report.csv", data, 0644);
  std::string id = client().UploadFileFromPath("report.csv", outbox + "/report.csv");
  EXPECT_TRUE(notifiedSuccess(id));
  EXPECT_EQ(files_->blob("dev1/report.csv").sha256, sha256Hex(data));

  // Outside the listed directory the daemon's own rights are not asked: refused.
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().UploadFileFromPath("x", daemonDir_ + "/iothubd.conf"); },
                        &message),
            "org.freedesktop.DBus.Error.AccessDenied");
  EXPECT_NE(message.find("not inside a directory listed"), std::string::npos) << message;
}

TEST_F(FileUploadTest, LibcurlIsLoadedWithTheFirstUploadNotAtStart) {
  // Issue 13: libcurl and what it pulls in are about 4 MB of the daemon's memory; a gateway that
  // never uploads never pays them.
  startDaemon();
  awaitOnline();
  const auto curlLoaded = [&] {
    return readFile("/proc/" + std::to_string(daemon_->pid()) + "/maps").find("/libcurl.so") !=
           std::string::npos;
  };
  EXPECT_FALSE(curlLoaded()) << "libcurl was loaded before any upload";
  std::string correlationId = upload("first.bin", sourceFile("first.bin", "the first upload\n"));
  EXPECT_TRUE(notifiedSuccess(correlationId));
  EXPECT_TRUE(curlLoaded());
}

}  // namespace
}  // namespace iothubd::testing
