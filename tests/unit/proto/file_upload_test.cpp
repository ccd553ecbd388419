// SPDX-License-Identifier: MIT
// File-upload builders and parsers (protocol doc section 8).
#include "iothubd/proto/file_upload.hpp"

#include <gtest/gtest.h>

#include "iothubd/proto/base64.hpp"
#include "test_helpers.hpp"

namespace iothubd::proto {
namespace {

using core::Errc;
using test::errorOf;
using test::failedWith;

constexpr std::string_view kGoodInfo =
    R"({"correlationId":"MjAyMy0xMi0w","hostName":"acct.blob.core.windows.net",)"
    R"("containerName":"uploads","blobName":"dev1/logs/a b.txt",)"
    R"("sasToken":"?sv=2018-03-28&sr=b&sig=abc%2B%3D&se=2030-01-01T00%3A00%3A00Z&sp=rw"})";

TEST(FileUpload, BuildsHubPathsWithEncodedDeviceId) {
  EXPECT_EQ(storageInfoPath("dev 1/x"), "/devices/dev%201%2Fx/files?api-version=2021-04-12");
  EXPECT_EQ(notificationPath("dev1", "2019-10-01"),
            "/devices/dev1/files/notifications?api-version=2019-10-01");
}

TEST(FileUpload, BuildsRequestBodyWithJsonEscaping) {
  auto body = storageInfoRequestBody("logs/\"q\" é.txt");
  ASSERT_TRUE(body) << errorOf(body);
  EXPECT_EQ(*body, "{\"blobName\":\"logs/\\\"q\\\" é.txt\"}");
}

TEST(FileUpload, RefusesBadBlobNames) {
  EXPECT_TRUE(failedWith(storageInfoRequestBody(""), Errc::InvalidArgument, "blob name is empty"));
  EXPECT_TRUE(failedWith(validateBlobName(std::string(1025, 'a')), Errc::InvalidArgument,
                         "blob name is longer than 1024 bytes"));
  EXPECT_TRUE(validateBlobName(std::string(1024, 'a')));
  EXPECT_TRUE(failedWith(validateBlobName("a\nb"), Errc::InvalidArgument,
                         "blob name contains a control character at offset 1"));
  EXPECT_TRUE(failedWith(validateBlobName("a\\b"), Errc::InvalidArgument,
                         "blob name contains '\\' at offset 1"));
  EXPECT_TRUE(
      failedWith(validateBlobName("dir/"), Errc::InvalidArgument, "blob name ends with '/'"));
  EXPECT_TRUE(
      failedWith(validateBlobName("name."), Errc::InvalidArgument, "blob name ends with '.'"));
}

TEST(FileUpload, ParsesStorageInfo) {
  auto info = parseStorageInfo(kGoodInfo);
  ASSERT_TRUE(info) << errorOf(info);
  EXPECT_EQ(info->correlationId, "MjAyMy0xMi0w");
  EXPECT_EQ(info->hostName, "acct.blob.core.windows.net");
  EXPECT_EQ(info->containerName, "uploads");
  EXPECT_EQ(info->blobName, "dev1/logs/a b.txt");
  EXPECT_EQ(info->sasToken, "?sv=2018-03-28&sr=b&sig=abc%2B%3D&se=2030-01-01T00%3A00%3A00Z&sp=rw");
}

TEST(FileUpload, AddsTheQuestionMarkTheHubLeftOut) {
  auto info = parseStorageInfo(
      R"({"correlationId":"c","hostName":"h","containerName":"c","blobName":"b","sasToken":"sv=1&sig=x","extra":1})");
  ASSERT_TRUE(info) << errorOf(info);
  EXPECT_EQ(info->sasToken, "?sv=1&sig=x");
}

TEST(FileUpload, StorageInfoErrorsArePreciseAndNeverShowTheToken) {
  EXPECT_TRUE(failedWith(parseStorageInfo("{\"a\":"), Errc::Protocol,
                         "storage info is not valid JSON at offset 5: Invalid value."));
  EXPECT_TRUE(
      failedWith(parseStorageInfo("[]"), Errc::Protocol, "storage info is not a JSON object"));
  EXPECT_TRUE(failedWith(parseStorageInfo(std::string_view("{}\0x", 4)), Errc::Protocol,
                         "storage info is not valid JSON at offset 2: NUL byte"));
  EXPECT_TRUE(failedWith(
      parseStorageInfo(R"({"hostName":"h","containerName":"c","blobName":"b","sasToken":"?s"})"),
      Errc::Protocol, "storage info lacks 'correlationId'"));
  EXPECT_TRUE(failedWith(
      parseStorageInfo(
          R"({"correlationId":"c","hostName":"h","containerName":"c","blobName":"b","sasToken":7})"),
      Errc::Protocol, "storage info field 'sasToken' is not a string"));
  EXPECT_TRUE(failedWith(
      parseStorageInfo(
          R"({"correlationId":"c","hostName":"h","containerName":"","blobName":"b","sasToken":"?secret"})"),
      Errc::Protocol, "storage info field 'containerName' is empty"));
  auto evil = parseStorageInfo(
      R"({"correlationId":"c","hostName":"evil@h","containerName":"c","blobName":"b","sasToken":"?secret"})");
  EXPECT_TRUE(
      failedWith(evil, Errc::Protocol,
                 "storage info field 'hostName' contains an invalid character at offset 4"));
  EXPECT_EQ(errorOf(evil).find("secret"), std::string::npos);
}

TEST(FileUpload, BuildsNotificationBody) {
  EXPECT_EQ(
      notificationBody({"c\"1", true, 201, "Created"}),
      R"({"correlationId":"c\"1","isSuccess":true,"statusCode":201,"statusDescription":"Created"})");
  EXPECT_EQ(
      notificationBody({"c", false, 403, "AuthorizationFailure"}),
      R"({"correlationId":"c","isSuccess":false,"statusCode":403,"statusDescription":"AuthorizationFailure"})");
}

TEST(FileUpload, BuildsBlobUrlEncodingEachSegment) {
  auto info = parseStorageInfo(kGoodInfo);
  ASSERT_TRUE(info);
  EXPECT_EQ(blobUrlForLog(*info), "https://acct.blob.core.windows.net/uploads/dev1/logs/a%20b.txt");
  EXPECT_EQ(blobUrl(*info), blobUrlForLog(*info) + info->sasToken);
  info->blobName = "dev1/100%+?#.bin";
  EXPECT_EQ(blobUrlForLog(*info),
            "https://acct.blob.core.windows.net/uploads/dev1/100%25%2B%3F%23.bin");
}

TEST(FileUpload, BlockIdsHaveFixedWidth) {
  EXPECT_EQ(blockId(0), base64Encode("000000"));
  EXPECT_EQ(blockId(0), "MDAwMDAw");
  EXPECT_EQ(blockId(49999), base64Encode("049999"));
  EXPECT_EQ(blockId(7).size(), blockId(kMaxBlockCount - 1).size());
}

TEST(FileUpload, BuildsBlockUrls) {
  const std::string url = "https://h/c/b?sv=1&sig=s";
  EXPECT_EQ(putBlockUrl(url, "MDAwMDAw"), url + "&comp=block&blockid=MDAwMDAw");
  EXPECT_EQ(putBlockUrl(url, "a+b/="), url + "&comp=block&blockid=a%2Bb%2F%3D");
  EXPECT_EQ(putBlockListUrl(url), url + "&comp=blocklist");
}

TEST(FileUpload, BuildsBlockListXml) {
  EXPECT_EQ(blockListBody({blockId(0), blockId(1)}),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<BlockList><Latest>MDAwMDAw</Latest>"
            "<Latest>MDAwMDAx</Latest></BlockList>");
  EXPECT_EQ(blockListBody({}),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\r\n<BlockList></BlockList>");
}

}  // namespace
}  // namespace iothubd::proto
