// SPDX-License-Identifier: MIT
// Benchmark, not a test (issue 4): uploads the same 100 MiB file to the same Azurite through the
// daemon's UploadFile and with the curl CLI, alternating, and prints both throughputs and their
// ratio. `meson compile -C build run-upload-benchmark` (IOTHUBD_UPLOAD_MIB, IOTHUBD_UPLOAD_RUNS).
#include <cstdio>
#include <cstdlib>

#include "file_upload_fixture.hpp"

namespace iothubd::testing {
namespace {

using Seconds = std::chrono::duration<double>;

size_t envOr(const char* name, size_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoul(v, nullptr, 10) : fallback;
}

TEST_F(FileUploadTest, Benchmark) {
  const size_t mib = envOr("IOTHUBD_UPLOAD_MIB", 100);
  const size_t runs = envOr("IOTHUBD_UPLOAD_RUNS", 3);
  writeConfig("[file_upload]\nhttps_port = " + std::to_string(files_->port()) +
              "\n[daemon]\nlog_level = info\n");
  startDaemon();
  std::string path = sourceFile("payload", randomBytes(mib << 20));
  double bestDaemon = 1e9, bestCurl = 1e9;
  for (size_t i = 0; i < runs; ++i) {
    // Alternate, so both see the same Azurite memory state and machine load over the runs.
    auto t0 = std::chrono::steady_clock::now();
    upload("bench/daemon-" + std::to_string(i), path);
    double d = Seconds(std::chrono::steady_clock::now() - t0).count();

    std::string url = files_->uploadUrl("dev1/bench/curl-" + std::to_string(i));
    std::string cmd = "curl -sS -o /dev/null -w '%{http_code}' --cacert '" + hub_.caFile() +
                      "' -H 'x-ms-blob-type: BlockBlob' -H 'x-ms-version: 2021-08-06' -T '" + path +
                      "' '" + url + "'";
    t0 = std::chrono::steady_clock::now();
    FILE* p = ::popen(cmd.c_str(), "r");
    char code[8] = {};
    ASSERT_NE(std::fgets(code, sizeof code, p), nullptr);
    ::pclose(p);
    double c = Seconds(std::chrono::steady_clock::now() - t0).count();
    ASSERT_STREQ(code, "201");
    std::printf("run %zu: UploadFile %.2f s (%.1f MiB/s), curl %.2f s (%.1f MiB/s)\n", i + 1, d,
                static_cast<double>(mib) / d, c, static_cast<double>(mib) / c);
    bestDaemon = std::min(bestDaemon, d);
    bestCurl = std::min(bestCurl, c);
  }
  double daemonRate = static_cast<double>(mib) / bestDaemon;
  double curlRate = static_cast<double>(mib) / bestCurl;
  std::printf("best of %zu, %zu MiB: UploadFile %.1f MiB/s, curl CLI %.1f MiB/s, ratio %.2f\n",
              runs, mib, daemonRate, curlRate, daemonRate / curlRate);
}

}  // namespace
}  // namespace iothubd::testing
