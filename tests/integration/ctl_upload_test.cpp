// SPDX-License-Identifier: MIT
// iothubctl upload against the daemon, the hub's file-upload endpoints and Azurite: in the
// FileUploadTest suite, whose Azurite it shares (starting one costs seconds).
#include <rapidjson/document.h>

#include "ctl_process.hpp"
#include "file_upload_fixture.hpp"

namespace iothubd::testing {

TEST_F(FileUploadTest, IothubctlUploadsAFileOpenedWithTheCallersRights) {
  auto ctlOptions = [this](const std::string& user = "") {
    CtlProcess::Options o;
    o.busAddress = bus_->address();
    o.user = user;
    return o;
  };
  startDaemon();
  const std::string data = randomBytes(5 * 1024 * 1024 + 17);     // two blocks
  const std::string path = sourceFile("report.bin", data, 0600);  // root's, 0600

  auto r = runCtl({"upload", path, "--name", "reports/today.bin"}, ctlOptions());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("uploaded reports/today.bin (5.0 MiB), correlation id "), std::string::npos)
      << r.out;
  // Not a terminal: plain progress lines, the last one complete.
  EXPECT_NE(r.err.find("upload reports/today.bin: 5242897 of 5242897 bytes (100%)\n"),
            std::string::npos)
      << r.err;
  auto blob = files_->blob(std::string(kDevice) + "/reports/today.bin");
  EXPECT_TRUE(blob.exists);
  EXPECT_EQ(blob.sha256, sha256Hex(data));

  // The kernel checks the caller's rights, not the daemon's: nobody may not read the file.
  auto denied = runCtl({"upload", path}, ctlOptions("nobody"));
  EXPECT_EQ(denied.status, 66) << denied.err;
  EXPECT_NE(denied.err.find("cannot open " + path + ": Permission denied"), std::string::npos)
      << denied.err;

  auto json = runCtl({"upload", "--json", path}, ctlOptions());
  ASSERT_EQ(json.status, 0) << json.err;
  rapidjson::Document d;
  d.Parse(json.out.c_str());
  ASSERT_TRUE(d.IsObject()) << json.out;
  EXPECT_STREQ(d["blobName"].GetString(), "report.bin");
  EXPECT_TRUE(notifiedSuccess(d["correlationId"].GetString()));
}

}  // namespace iothubd::testing
