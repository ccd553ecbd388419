// SPDX-License-Identifier: MIT
#include "sas.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <charconv>
#include <map>

namespace iothubd::hubemu {
namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

}  // namespace

std::optional<std::string> base64Decode(std::string_view text) {
  if (text.size() % 4 != 0)
    return std::nullopt;
  std::string out(text.size() / 4 * 3, '\0');
  // EVP_DecodeBlock accepts whitespace and does not report padding, so validate the alphabet
  // first and strip the padding bytes by hand.
  size_t pad = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const bool alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                       c == '+' || c == '/';
    if (c == '=') {
      if (i + 2 < text.size())
        return std::nullopt;
      ++pad;
    } else if (!alpha || pad > 0) {
      return std::nullopt;
    }
  }
  if (text.empty())
    return std::string{};
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0 || static_cast<size_t>(n) < pad)
    return std::nullopt;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string base64Encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::optional<std::string> percentDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    if (i + 2 >= text.size())
      return std::nullopt;
    const int hi = hexValue(text[i + 1]);
    const int lo = hexValue(text[i + 2]);
    if (hi < 0 || lo < 0)
      return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

std::string percentEncode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0x0F]);
    }
  }
  return out;
}

std::string hmacSha256(std::string_view key, std::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &len);
  return std::string(reinterpret_cast<const char*>(mac), len);
}

SasCheck verifySasToken(std::string_view password, std::string_view resource,
                        std::string_view base64Key, int64_t nowSeconds) {
  SasCheck result;
  constexpr std::string_view kPrefix = "SharedAccessSignature ";
  if (!password.starts_with(kPrefix)) {
    result.reason = "password is not a SharedAccessSignature";
    return result;
  }
  std::map<std::string, std::string, std::less<>> fields;
  std::string_view rest = password.substr(kPrefix.size());
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    const std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    const size_t eq = pair.find('=');
    if (eq == std::string_view::npos) {
      result.reason = "malformed token field";
      return result;
    }
    const std::string key(pair.substr(0, eq));
    if (key != "sr" && key != "sig" && key != "se" && key != "skn") {
      result.reason = "unknown token field '" + key + "'";
      return result;
    }
    if (!fields.emplace(key, std::string(pair.substr(eq + 1))).second) {
      result.reason = "duplicate token field '" + key + "'";
      return result;
    }
  }
  for (const char* required : {"sr", "sig", "se"}) {
    if (!fields.contains(required)) {
      result.reason = std::string("token lacks ") + required;
      return result;
    }
  }
  const auto sr = percentDecode(fields["sr"]);
  if (!sr || *sr != resource) {
    result.reason = "sr does not name " + std::string(resource);
    return result;
  }
  const std::string& se = fields["se"];
  int64_t expiry = 0;
  const auto [end, ec] = std::from_chars(se.data(), se.data() + se.size(), expiry);
  if (ec != std::errc{} || end != se.data() + se.size()) {
    result.reason = "se is not a number";
    return result;
  }
  const auto key = base64Decode(base64Key);
  if (!key) {
    result.reason = "registry key is not base64";
    return result;
  }
  const auto sig = percentDecode(fields["sig"]);
  const std::string expected = base64Encode(hmacSha256(*key, percentEncode(*sr) + "\n" + se));
  if (!sig || sig->size() != expected.size() ||
      CRYPTO_memcmp(sig->data(), expected.data(), expected.size()) != 0) {
    result.reason = "signature mismatch";
    return result;
  }
  // Checked after the signature so that a forged token never learns whether its se was good.
  if (expiry <= nowSeconds) {
    result.reason = "token expired at " + se;
    return result;
  }
  result.ok = true;
  result.expiry = expiry;
  return result;
}

}  // namespace iothubd::hubemu
