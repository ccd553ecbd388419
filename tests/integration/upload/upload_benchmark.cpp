// SPDX-License-Identifier: MIT
// Benchmark, not a test: uploads the same 100 MiB file to the same Azurite through the daemon's
// workflow (BlobUploader over CurlMultiClient on the event loop) and with the curl CLI (one Put
// Blob streamed from the file), and prints both throughputs and their ratio.
//
//   meson compile -C build upload-benchmark && build/tests/integration/upload/upload-benchmark
//   [MiB] [runs]
#include <fcntl.h>
#include <unistd.h>

#include <openssl/rand.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <optional>
#include <string>

#include "file_upload_hub.hpp"
#include "hub_emulator.hpp"
#include "iothubd/blob/blob_uploader.hpp"
#include "iothubd/http/curl_multi_client.hpp"
#include "iothubd/loop/event_loop.hpp"
#include "loop_test_util.hpp"
#include "temp_dir.hpp"

using namespace iothubd;
using Seconds = std::chrono::duration<double>;

namespace {

double workflowRun(hubemu::HubEmulator& hub, hubemu::FileUploadHub& files, const std::string& key,
                   const std::string& path, const std::string& name) {
  auto loop = std::move(*loop::EventLoop::create());
  http::CurlOptions options;
  options.tls.caFile = hub.caFile();
  auto client = std::move(*http::createCurlMultiClient(*loop, options));
  blob::BlobUploader uploader(
      *client, *loop, *loop, blob::HubEndpoint{files.host(), "dev1"},
      [&]() -> core::Result<core::Secret<>> {
        return core::Secret<>(
            hubemu::makeSasToken(hub.hubHost(), "dev1", key, std::time(nullptr) + 3600));
      },
      [&](core::UniqueFd fd) { return http::createFdReader(*loop, std::move(fd)); });
  std::optional<core::Result<blob::UploadOutcome>> result;
  const auto start = std::chrono::steady_clock::now();
  auto id =
      uploader.upload(name, core::UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC)), nullptr,
                      [&](core::Result<blob::UploadOutcome> r) { result = std::move(r); });
  if (!id ||
      !testing::runUntil(
          *loop, [&] { return result.has_value(); }, std::chrono::minutes(10)) ||
      !*result) {
    std::cerr << "workflow upload failed: "
              << (!id                  ? id.error().message
                  : result && !*result ? result->error().message
                                       : "timeout")
              << "\n";
    std::exit(1);
  }
  return Seconds(std::chrono::steady_clock::now() - start).count();
}

double curlRun(hubemu::HubEmulator& hub, hubemu::FileUploadHub& files, const std::string& path,
               const std::string& name) {
  const std::string url = files.uploadUrl(name);
  const std::string cmd = "curl -sS -o /dev/null -w '%{http_code}' --cacert '" + hub.caFile() +
                          "' -H 'x-ms-blob-type: BlockBlob' -H 'x-ms-version: 2021-08-06' -T '" +
                          path + "' '" + url + "'";
  const auto start = std::chrono::steady_clock::now();
  std::FILE* p = ::popen(cmd.c_str(), "r");
  char code[8] = {};
  const bool read = p != nullptr && std::fgets(code, sizeof code, p) != nullptr;
  if (p != nullptr)
    ::pclose(p);
  const double seconds = Seconds(std::chrono::steady_clock::now() - start).count();
  if (!read || std::string(code) != "201") {
    std::cerr << "curl upload failed (HTTP " << code << ")\n";
    std::exit(1);
  }
  return seconds;
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 100;
  const int runs = argc > 2 ? std::atoi(argv[2]) : 3;
  try {
    hubemu::HubEmulator hub;
    const std::string key = hub.addDevice("dev1");
    hub.start();
    hubemu::Azurite azurite(hub.dir());
    azurite.start();
    hubemu::FileUploadHub files(hub, &azurite);
    files.start();

    testing::TempDir dir("upload-benchmark");
    const std::string path = dir / "payload";
    {
      std::FILE* f = std::fopen(path.c_str(), "wb");
      std::string chunk(1 << 20, '\0');
      for (std::size_t i = 0; i < mib; ++i) {
        RAND_bytes(reinterpret_cast<unsigned char*>(chunk.data()), static_cast<int>(chunk.size()));
        std::fwrite(chunk.data(), 1, chunk.size(), f);
      }
      std::fclose(f);
    }
    double bestWorkflow = 1e9, bestCurl = 1e9;
    for (int i = 0; i < runs; ++i) {
      // Alternate, so both see the same Azurite memory state and machine load over the runs.
      const double w = workflowRun(hub, files, key, path, "bench/workflow-" + std::to_string(i));
      const double c = curlRun(hub, files, path, "dev1/bench/curl-" + std::to_string(i));
      std::printf("run %d: workflow %.2f s (%.1f MiB/s), curl %.2f s (%.1f MiB/s)\n", i + 1, w,
                  static_cast<double>(mib) / w, c, static_cast<double>(mib) / c);
      bestWorkflow = std::min(bestWorkflow, w);
      bestCurl = std::min(bestCurl, c);
    }
    const double workflowRate = static_cast<double>(mib) / bestWorkflow;
    const double curlRate = static_cast<double>(mib) / bestCurl;
    std::printf(
        "best of %d, %zu MiB: workflow %.1f MiB/s, curl CLI %.1f MiB/s, ratio workflow/curl %.2f\n",
        runs, mib, workflowRate, curlRate, workflowRate / curlRate);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "benchmark failed: " << e.what() << "\n";
    return 1;
  }
}
