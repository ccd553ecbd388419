// SPDX-License-Identifier: MIT
#include "iothubd/proto/sas_token.hpp"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "iothubd/proto/base64.hpp"
#include "iothubd/proto/percent_encoding.hpp"
#include "test_helpers.hpp"
#include "vector_file.hpp"

namespace iothubd::proto {
namespace {

using core::Errc;
using core::Secret;
using test::errorOf;
using test::failedWith;

constexpr std::string_view kHub = "contoso.azure-devices.net";
const Secret<> kKey{"UxJ3yLCg3tYdAqzP1Spzsp5BMHcY2nBNRL3Pbv541Pc="};

// One line of tests/data/sas_vectors.txt, computed with the openssl CLI (make_sas_vectors.sh).
struct Vector {
  std::string name, resourceUri, key;
  std::uint64_t expiry = 0;
  std::string policy, token;
};

std::vector<Vector> loadVectors() {
  std::vector<Vector> vectors;
  for (const auto& f :
       iothubd::testing::readVectorFile(IOTHUBD_TEST_DATA_DIR "/sas_vectors.txt", 6)) {
    vectors.push_back({f[0], f[1], f[2], std::stoull(f[3]), f[4] == "-" ? "" : f[4], f[5]});
  }
  return vectors;
}

const Vector& vectorNamed(const std::vector<Vector>& vectors, const std::string& name) {
  for (const auto& v : vectors) {
    if (v.name == name) {
      return v;
    }
  }
  ADD_FAILURE() << "no vector " << name;
  static const Vector kNone;
  return kNone;
}

std::string tokenFor(std::string_view uri, std::uint64_t expiry, std::string_view policy = {}) {
  return makeSasToken(uri, kKey, expiry, policy).value().reveal();
}

TEST(SasToken, MatchesTokensComputedWithOpensslCli) {
  const auto vectors = loadVectors();
  ASSERT_GE(vectors.size(), 5u);
  for (const auto& v : vectors) {
    const auto token = makeSasToken(v.resourceUri, Secret<>(v.key), v.expiry, v.policy);
    ASSERT_TRUE(token.has_value()) << v.name << ": " << errorOf(token);
    EXPECT_EQ(token->reveal(), v.token) << v.name;
  }
}

TEST(SasToken, DeviceVectorHasDeviceResourceAndNoSkn) {
  const auto vectors = loadVectors();
  const auto& v = vectorNamed(vectors, "device");
  EXPECT_EQ(v.resourceUri, sasResourceUri(kHub, "dev1", ""));
  EXPECT_EQ(v.token.find("&skn="), std::string::npos);
}

TEST(SasToken, ModuleVectorHasModuleResource) {
  const auto vectors = loadVectors();
  EXPECT_EQ(vectorNamed(vectors, "module").resourceUri, sasResourceUri(kHub, "dev1", "mod1"));
}

TEST(SasToken, PercentEncodesPlusSlashAndEqualsInTheSignature) {
  const auto vectors = loadVectors();
  const auto& v = vectorNamed(vectors, "plus-slash-equals");
  const auto parsed = parseSasToken(v.token).value();
  const std::string& sig = parsed.signature.reveal();
  ASSERT_NE(sig.find('+'), std::string::npos);
  ASSERT_NE(sig.find('/'), std::string::npos);
  ASSERT_NE(sig.find('='), std::string::npos);
  const auto token = makeSasToken(v.resourceUri, Secret<>(v.key), v.expiry).value().reveal();
  EXPECT_EQ(token, v.token);
  EXPECT_NE(token.find("%2B"), std::string::npos);
  EXPECT_NE(token.find("%2F"), std::string::npos);
  EXPECT_NE(token.find("%3D&se="), std::string::npos);
}

TEST(SasToken, ParsesEveryVectorBackToItsInputs) {
  for (const auto& v : loadVectors()) {
    const auto parsed = parseSasToken(v.token);
    ASSERT_TRUE(parsed.has_value()) << v.name << ": " << errorOf(parsed);
    EXPECT_EQ(parsed->resourceUri, v.resourceUri) << v.name;
    EXPECT_EQ(parsed->expiry, v.expiry) << v.name;
    EXPECT_EQ(parsed->keyName, v.policy) << v.name;
    // The decoded signature is the Base64 of a 32-byte HMAC-SHA256.
    EXPECT_EQ(base64Decode(parsed->signature.reveal()).value().size(), 32u) << v.name;
  }
}

TEST(SasToken, AppendsSknOnlyForAPolicyName) {
  EXPECT_EQ(tokenFor("h/devices/d", 1).find("skn"), std::string::npos);
  const std::string token = tokenFor(kHub, 1735689600, "iothubowner");
  EXPECT_EQ(token.substr(token.size() - 16), "&skn=iothubowner");
}

TEST(SasToken, ChangesWithExpiry) {
  EXPECT_NE(tokenFor("h/devices/d", 1), tokenFor("h/devices/d", 2));
}

TEST(SasToken, RejectsInvalidBase64KeyAsInvalidSymmetricKey) {
  EXPECT_TRUE(failedWith(makeSasToken("h/devices/d", Secret<>("not-base64!"), 1),
                         Errc::InvalidArgument, "Invalid Symmetric Key"));
  EXPECT_TRUE(failedWith(makeSasToken("h/devices/d", Secret<>("abc"), 1), Errc::InvalidArgument,
                         "Invalid Symmetric Key"));
}

TEST(SasToken, RejectsEmptyKey) {
  EXPECT_TRUE(failedWith(makeSasToken("h/devices/d", Secret<>(""), 1), Errc::InvalidArgument,
                         "Invalid Symmetric Key"));
}

TEST(SasResourceUri, BuildsDeviceAndModuleForms) {
  EXPECT_EQ(sasResourceUri(kHub, "dev1", ""), "contoso.azure-devices.net/devices/dev1");
  EXPECT_EQ(sasResourceUri(kHub, "dev1", "mod1"),
            "contoso.azure-devices.net/devices/dev1/modules/mod1");
}

TEST(ParseSasToken, AcceptsFieldsInAnyOrder) {
  // The docs show sig&se&skn&sr.
  const auto parsed =
      parseSasToken("SharedAccessSignature sig=abc%3D&se=1700000000&skn=pol&sr=h%2Fdevices%2Fd");
  ASSERT_TRUE(parsed.has_value()) << errorOf(parsed);
  EXPECT_EQ(parsed->resourceUri, "h/devices/d");
  EXPECT_EQ(parsed->signature.reveal(), "abc=");
  EXPECT_EQ(parsed->expiry, 1700000000u);
  EXPECT_EQ(parsed->keyName, "pol");
}

TEST(ParseSasToken, AcceptsUnencodedResourceAsTheCSdkSendsIt) {
  const auto parsed = parseSasToken("SharedAccessSignature sr=h/devices/d&sig=x&se=5");
  ASSERT_TRUE(parsed.has_value()) << errorOf(parsed);
  EXPECT_EQ(parsed->resourceUri, "h/devices/d");
}

TEST(ParseSasToken, AcceptsEmptySknAsTheCSdkSendsIt) {
  const auto parsed = parseSasToken("SharedAccessSignature sr=h&sig=x&se=5&skn=");
  ASSERT_TRUE(parsed.has_value()) << errorOf(parsed);
  EXPECT_EQ(parsed->keyName, "");
}

TEST(ParseSasToken, AcceptsMaximumExpiry) {
  EXPECT_EQ(parseSasToken("SharedAccessSignature sr=h&sig=x&se=18446744073709551615")->expiry,
            18446744073709551615u);
}

struct BadToken {
  const char* token;
  const char* message;
};

class ParseSasTokenRejects : public ::testing::TestWithParam<BadToken> {};

TEST_P(ParseSasTokenRejects, WithAPreciseMessage) {
  EXPECT_TRUE(
      failedWith(parseSasToken(GetParam().token), Errc::InvalidArgument, GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    EachMalformedShape, ParseSasTokenRejects,
    ::testing::Values(
        BadToken{"", "SAS token does not start with 'SharedAccessSignature '"},
        BadToken{"sr=h&sig=x&se=1", "SAS token does not start with 'SharedAccessSignature '"},
        BadToken{"sharedaccesssignature sr=h&sig=x&se=1",
                 "SAS token does not start with 'SharedAccessSignature '"},
        BadToken{"SharedAccessSignaturesr=h&sig=x&se=1",
                 "SAS token does not start with 'SharedAccessSignature '"},
        BadToken{"SharedAccessSignature ",
                 "SAS token has no fields after 'SharedAccessSignature '"},
        BadToken{"SharedAccessSignature sr=h&sig&se=1", "SAS token field 2 has no '='"},
        BadToken{"SharedAccessSignature sr=h&sig=x&se=1&", "SAS token field 4 has no '='"},
        BadToken{"SharedAccessSignature sr=h&=x&se=1", "SAS token field 2 has an empty name"},
        BadToken{"SharedAccessSignature sr=h&sig=x&se=1&foo=bar",
                 "SAS token has unexpected field 'foo'"},
        BadToken{"SharedAccessSignature SR=h&sig=x&se=1", "SAS token has unexpected field 'SR'"},
        BadToken{"SharedAccessSignature  sr=h&sig=x&se=1", "SAS token has unexpected field ' sr'"},
        BadToken{"SharedAccessSignature sr=h&sig=x&se=1&abc1+/=",
                 "SAS token has unexpected field (name not shown, it may be a secret)"},
        BadToken{"SharedAccessSignature sr=h&sig=x&se=1&se=2",
                 "SAS token has duplicate field 'se'"},
        BadToken{"SharedAccessSignature sig=x&se=1", "SAS token is missing field 'sr'"},
        BadToken{"SharedAccessSignature sr=h&se=1", "SAS token is missing field 'sig'"},
        BadToken{"SharedAccessSignature sr=h&sig=x", "SAS token is missing field 'se'"},
        BadToken{"SharedAccessSignature sr=&sig=x&se=1", "SAS token field 'sr' is empty"},
        BadToken{"SharedAccessSignature sr=h&sig=&se=1", "SAS token field 'sig' is empty"},
        BadToken{"SharedAccessSignature sr=h&sig=x&se=", "SAS token field 'se' is empty"},
        BadToken{"SharedAccessSignature sr=h&sig=x&se=12a",
                 "SAS token field 'se' is not a decimal number of seconds"},
        BadToken{"SharedAccessSignature sr=h&sig=x&se=-1",
                 "SAS token field 'se' is not a decimal number of seconds"},
        BadToken{"SharedAccessSignature sr=h&sig=x&se=1.5",
                 "SAS token field 'se' is not a decimal number of seconds"},
        BadToken{"SharedAccessSignature sr=h&sig=x&se=1700000000\n",
                 "SAS token field 'se' is not a decimal number of seconds"},
        BadToken{"SharedAccessSignature sr=h&sig=x&se=18446744073709551616",
                 "SAS token field 'se' is not a decimal number of seconds"},
        BadToken{"SharedAccessSignature sr=h%2&sig=x&se=1",
                 "SAS token field 'sr' has a malformed percent-escape at offset 1"},
        BadToken{"SharedAccessSignature sr=h&sig=ab%zz&se=1",
                 "SAS token field 'sig' has a malformed percent-escape at offset 2"},
        BadToken{"SharedAccessSignature sr=h&sig=x&se=1&skn=%",
                 "SAS token field 'skn' has a malformed percent-escape at offset 0"}));

TEST(ParseSasToken, ErrorMessagesNeverContainTheSignature) {
  const std::string secretSig = "TopSecretSignatureValue";
  for (const std::string& token : {"SharedAccessSignature sr=h&sig=" + secretSig + "&se=x",
                                   "SharedAccessSignature sr=h&sig=" + secretSig + "&se=1&bad=1",
                                   "SharedAccessSignature sig=" + secretSig + "&se=1",
                                   "SharedAccessSignature sr=h&sig=" + secretSig + "%&se=1"}) {
    const auto parsed = parseSasToken(token);
    ASSERT_FALSE(parsed.has_value()) << token;
    EXPECT_EQ(parsed.error().message.find(secretSig), std::string::npos) << parsed.error().message;
  }
}

TEST(SasTokenTarget, SplitsDeviceResource) {
  const auto target =
      sasTokenTarget(parseSasToken(tokenFor("h.example/devices/dev1", 5)).value()).value();
  EXPECT_EQ(target.hubHost, "h.example");
  EXPECT_EQ(target.deviceId, "dev1");
  EXPECT_EQ(target.moduleId, "");
}

TEST(SasTokenTarget, SplitsModuleResource) {
  const auto target =
      sasTokenTarget(parseSasToken(tokenFor("h.example/devices/dev1/modules/m1", 5)).value())
          .value();
  EXPECT_EQ(target.hubHost, "h.example");
  EXPECT_EQ(target.deviceId, "dev1");
  EXPECT_EQ(target.moduleId, "m1");
}

TEST(SasTokenTarget, RejectsOtherResourceShapes) {
  for (const std::string uri :
       {"h.example", "h.example/devices", "h.example/devices/", "/devices/d", "h/things/d",
        "h/devices/d/modules", "h/devices/d/modules/", "h/devices/d/mods/m",
        "h/devices/d/modules/m/x", "scope/registrations/reg"}) {
    SasToken token;
    token.resourceUri = uri;
    EXPECT_TRUE(
        failedWith(sasTokenTarget(token), Errc::InvalidArgument,
                   "SAS token resource '" + uri +
                       "' is not of the form {host}/devices/{deviceId}[/modules/{moduleId}]"))
        << uri;
  }
}

class ValidateSasTokenFor : public ::testing::Test {
 protected:
  static constexpr std::uint64_t kNow = 1700000100;
  const std::string deviceToken_ = tokenFor(sasResourceUri(kHub, "dev1", ""), kNow + 3600);
  const std::string moduleToken_ = tokenFor(sasResourceUri(kHub, "dev1", "m1"), kNow + 3600);
};

TEST_F(ValidateSasTokenFor, AcceptsTokenForThisDevice) {
  const auto token = validateSasTokenFor(deviceToken_, kHub, "dev1", "", kNow);
  ASSERT_TRUE(token.has_value()) << errorOf(token);
  EXPECT_EQ(token->expiry, kNow + 3600);
}

TEST_F(ValidateSasTokenFor, AcceptsTokenForThisModule) {
  EXPECT_TRUE(validateSasTokenFor(moduleToken_, kHub, "dev1", "m1", kNow).has_value());
}

TEST_F(ValidateSasTokenFor, ComparesHubHostCaseInsensitively) {
  EXPECT_TRUE(
      validateSasTokenFor(deviceToken_, "Contoso.Azure-Devices.NET", "dev1", "", kNow).has_value());
}

TEST_F(ValidateSasTokenFor, RejectsTokenForAnotherDevice) {
  EXPECT_TRUE(failedWith(validateSasTokenFor(deviceToken_, kHub, "dev2", "", kNow),
                         Errc::InvalidArgument, "SAS token is for device 'dev1', not 'dev2'"));
}

TEST_F(ValidateSasTokenFor, ComparesDeviceIdCaseSensitively) {
  EXPECT_TRUE(failedWith(validateSasTokenFor(deviceToken_, kHub, "Dev1", "", kNow),
                         Errc::InvalidArgument, "SAS token is for device 'dev1', not 'Dev1'"));
}

TEST_F(ValidateSasTokenFor, RejectsTokenForAnotherHub) {
  EXPECT_TRUE(
      failedWith(validateSasTokenFor(deviceToken_, "fabrikam.azure-devices.net", "dev1", "", kNow),
                 Errc::InvalidArgument,
                 "SAS token is for hub 'contoso.azure-devices.net', not "
                 "'fabrikam.azure-devices.net'"));
}

TEST_F(ValidateSasTokenFor, DeviceRejectsModuleToken) {
  EXPECT_TRUE(failedWith(validateSasTokenFor(moduleToken_, kHub, "dev1", "", kNow),
                         Errc::InvalidArgument,
                         "SAS token is for module 'm1', not for the device itself"));
}

TEST_F(ValidateSasTokenFor, ModuleRejectsDeviceToken) {
  EXPECT_TRUE(failedWith(validateSasTokenFor(deviceToken_, kHub, "dev1", "m1", kNow),
                         Errc::InvalidArgument,
                         "SAS token is for the device itself, not module 'm1'"));
}

TEST_F(ValidateSasTokenFor, RejectsTokenForAnotherModule) {
  EXPECT_TRUE(failedWith(validateSasTokenFor(moduleToken_, kHub, "dev1", "m2", kNow),
                         Errc::InvalidArgument, "SAS token is for module 'm1', not 'm2'"));
}

TEST_F(ValidateSasTokenFor, RejectsExpiredToken) {
  const std::string token = tokenFor(sasResourceUri(kHub, "dev1", ""), 1700000000);
  EXPECT_TRUE(failedWith(validateSasTokenFor(token, kHub, "dev1", "", kNow), Errc::InvalidArgument,
                         "SAS token expired at 1700000000 (now 1700000100)"));
}

TEST_F(ValidateSasTokenFor, TreatsExpiryEqualToNowAsExpired) {
  const std::string token = tokenFor(sasResourceUri(kHub, "dev1", ""), kNow);
  EXPECT_TRUE(failedWith(validateSasTokenFor(token, kHub, "dev1", "", kNow), Errc::InvalidArgument,
                         "SAS token expired at 1700000100 (now 1700000100)"));
  EXPECT_TRUE(validateSasTokenFor(token, kHub, "dev1", "", kNow - 1).has_value());
}

TEST_F(ValidateSasTokenFor, PassesOnParseErrors) {
  EXPECT_TRUE(failedWith(validateSasTokenFor("Bearer abc", kHub, "dev1", "", kNow),
                         Errc::InvalidArgument,
                         "SAS token does not start with 'SharedAccessSignature '"));
}

TEST_F(ValidateSasTokenFor, RejectsHubLevelToken) {
  EXPECT_TRUE(failedWith(
      validateSasTokenFor(tokenFor(kHub, kNow + 10, "iothubowner"), kHub, "dev1", "", kNow),
      Errc::InvalidArgument,
      "SAS token resource 'contoso.azure-devices.net' is not of the form "
      "{host}/devices/{deviceId}[/modules/{moduleId}]"));
}

TEST(SasTokenSecret, PrintsRedacted) {
  std::ostringstream out;
  out << makeSasToken("h/devices/d", kKey, 1).value();
  EXPECT_EQ(out.str(), "***");
}

}  // namespace
}  // namespace iothubd::proto
