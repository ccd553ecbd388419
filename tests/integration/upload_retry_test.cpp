// SPDX-License-Identifier: MIT
// Issue 14: the hub's file-upload calls against a hub that throttles and loses answers, as the
// strict file-upload emulator plays it: a 429 on the storage-info request and a lost notification
// are retried (with backoff and jitter, src/blob), so the upload succeeds and the hub's upload
// slot is freed; the 10-uploads limit is the hub's answer, not retried. (The FileUploadTest
// suite of file_upload_test.cpp: one Azurite for both files.)
#include "file_upload_fixture.hpp"

namespace iothubd::testing {
namespace {

TEST_F(FileUploadTest, AThrottledStorageInfoRequestIsRetriedAndTheUploadSucceeds) {
  startDaemon();
  files_->setFaults(R"({"files":{"status":429,"count":1,"retryAfter":1}})");
  const std::string data = "after a 429\n";
  const std::string id = upload("throttled.txt", sourceFile("throttled.txt", data));
  EXPECT_TRUE(notifiedSuccess(id));
  EXPECT_EQ(files_->blob("dev1/throttled.txt").sha256, sha256Hex(data));
  std::vector<int> storageInfo;
  for (const auto& r : files_->hubRequests()) {
    if (r.kind == "storage-info") {
      storageInfo.push_back(r.status);
    }
  }
  EXPECT_EQ(storageInfo, (std::vector<int>{429, 200}));
  EXPECT_EQ(files_->activeUploads(kDevice), 0);
  EXPECT_NE(daemon_->log().find("answered 429 Too Many Requests (attempt 1 of 6), retrying in"),
            std::string::npos);
}

TEST_F(FileUploadTest, ALostNotificationIsSentAgainSoTheHubFreesTheUploadSlot) {
  startDaemon();
  files_->setFaults(R"({"notifications":{"status":503,"count":1}})");
  const std::string id = upload("slot.txt", sourceFile("slot.txt", "slot\n"));
  EXPECT_TRUE(notifiedSuccess(id));
  std::vector<int> notifications;
  for (const auto& r : files_->hubRequests()) {
    if (r.kind == "notification") {
      notifications.push_back(r.status);
    }
  }
  EXPECT_EQ(notifications, (std::vector<int>{503, 204}));
  EXPECT_EQ(files_->activeUploads(kDevice), 0) << "the slot is held until the SAS expires";
}

TEST_F(FileUploadTest, TheSeedsSingleStepsAreRetriedToo) {
  startDaemon();
  files_->setFaults(
      R"({"files":{"status":500,"count":1},"notifications":{"status":502,"count":1}})");
  auto info = client().GetStorageInfoForBlob("steps.txt");
  EXPECT_EQ(info["blobName"], "dev1/steps.txt");
  client().NotifyBlobUploadStatus(info["correlationId"], false, 500, "gave up");
  EXPECT_EQ(files_->activeUploads(kDevice), 0);
}

TEST_F(FileUploadTest, TheHubsTenUploadLimitIsItsAnswerNotRetried) {
  startDaemon();
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i) {
    ids.push_back(client().GetStorageInfoForBlob("f" + std::to_string(i))["correlationId"]);
  }
  std::string message;
  EXPECT_EQ(errorNameOf([&] { client().GetStorageInfoForBlob("eleventh"); }, &message),
            "org.iothubd.Error.Service");
  EXPECT_NE(message.find("403"), std::string::npos) << message;
  client().NotifyBlobUploadStatus(ids[0], true, 201, "done");
  EXPECT_FALSE(client().GetStorageInfoForBlob("eleventh")["correlationId"].empty());
  int refused = 0;
  for (const auto& r : files_->hubRequests()) {
    refused += r.status == 403;
  }
  EXPECT_EQ(refused, 1);
}

}  // namespace
}  // namespace iothubd::testing
