// SPDX-License-Identifier: MIT
// Fuzzes the twin and method JSON helpers (twin GET results and desired patches come from the
// hub; reported patches and method responses from local apps) and checks that they agree with
// one another.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_check.hpp"
#include "iothubd/proto/twin.hpp"

using namespace iothubd;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view json = fuzz::asText(data, size);

  const auto patch = proto::validateReportedPatch(json);
  const auto payload = proto::validateJsonPayload(json);
  if (patch) {
    // An object is a JSON value (a patch may be longer than a method response's 128 KB).
    FUZZ_CHECK(payload.has_value() || json.size() > proto::kMaxJsonPayloadBytes);
  }
  if (!payload) {
    FUZZ_CHECK(payload.error().code == core::Errc::InvalidArgument ||
               payload.error().code == core::Errc::LimitExceeded ||
               (payload.error().code == core::Errc::MessageTooLarge &&
                json.size() > proto::kMaxJsonPayloadBytes));
  }

  if (auto patchVersion = proto::versionOfDesiredPatch(json)) {
    // It parsed as an object (as a reported patch it breaks the hub's key rules: "$version").
    FUZZ_CHECK(payload.has_value() || json.size() > proto::kMaxJsonPayloadBytes);
  }
  if (patch) {
    FUZZ_CHECK(json.size() <= proto::kMaxReportedPatchBytes);
  }

  const auto version = proto::desiredVersionOfTwin(json);
  const auto section = proto::desiredSectionOfTwin(json);
  if (version) {
    FUZZ_CHECK(section.has_value());  // same `desired` object, serialized
  }
  if (section) {
    // The re-serialized section is valid JSON carrying the same $version (or none).
    const auto reparsed = proto::validateJsonPayload(*section);
    FUZZ_CHECK(reparsed.has_value() || section->size() > proto::kMaxJsonPayloadBytes);
    const auto sectionVersion = proto::versionOfDesiredPatch(*section);
    FUZZ_CHECK(sectionVersion.has_value() == version.has_value());
    if (version) {
      FUZZ_CHECK(*sectionVersion == *version);
    }
    // Serializing is deterministic: the section of the section's twin is the section.
    const auto twinAgain = proto::desiredSectionOfTwin("{\"desired\":" + *section + "}");
    FUZZ_CHECK(twinAgain.has_value() && *twinAgain == *section);
  }
  return 0;
}
