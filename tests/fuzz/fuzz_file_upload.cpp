// SPDX-License-Identifier: MIT
// Fuzzes the file-upload parsing (protocol doc 8): the hub's storage-info answer (JSON from the
// network, holding a SAS token that must never reach an error message) and the blob names apps
// ask for, with the request body built from an accepted name.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "iothubd/proto/file_upload.hpp"

using namespace iothubd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = fuzz::asText(data, size);

  if (auto info = proto::parseStorageInfo(text)) {
    FUZZ_CHECK(!info->correlationId.empty() && !info->hostName.empty());
    FUZZ_CHECK(!info->containerName.empty() && !info->blobName.empty());
    FUZZ_CHECK(!info->sasToken.empty() && info->sasToken.front() == '?');
    // The host becomes a URL authority: only the characters the contract allows.
    for (const char c : info->hostName) {
      FUZZ_CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 std::string_view(".-_:/[]").find(c) != std::string_view::npos);
    }
  } else {
    FUZZ_CHECK(info.error().code == core::Errc::Protocol);
    // Messages name fields and offsets, never a value (the SAS token is a secret): bounded.
    FUZZ_CHECK(info.error().message.size() < 200);
  }

  if (proto::validateBlobName(text)) {
    auto body = proto::storageInfoRequestBody(text);
    FUZZ_CHECK(body.has_value());
    FUZZ_CHECK(body->rfind("{\"blobName\":\"", 0) == 0 && body->back() == '}');
  } else {
    FUZZ_CHECK(!proto::storageInfoRequestBody(text).has_value());
  }
  return 0;
}
