// SPDX-License-Identifier: MIT
// Independent SAS-token verification for the hub emulator. Deliberately does not share code with
// src/proto: the emulator is the oracle the daemon's token code is tested against, so a bug in one
// must not be mirrored in the other.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace iothubd::hubemu {

// RFC 4648 base64 with padding; nullopt on any malformed input.
std::optional<std::string> base64Decode(std::string_view text);
std::string base64Encode(std::string_view bytes);

// Percent-decoding that never maps '+' to space (IoT Hub uses RFC 3986, not forms).
std::optional<std::string> percentDecode(std::string_view text);
// Encodes everything except RFC 3986 unreserved characters.
std::string percentEncode(std::string_view text);

std::string hmacSha256(std::string_view key, std::string_view data);

struct SasCheck {
  bool ok = false;
  std::string reason;  // why it was refused (for the broker log and the auth-refused event)
  int64_t expiry = 0;  // the token's se, valid when ok
};

// Verifies `password` as "SharedAccessSignature sr=…&sig=…&se=…" for `resource` (decoded form,
// e.g. "localhost/devices/dev1") against `base64Key`; `nowSeconds` is Unix time.
SasCheck verifySasToken(std::string_view password, std::string_view resource,
                        std::string_view base64Key, int64_t nowSeconds);

}  // namespace iothubd::hubemu
