// SPDX-License-Identifier: MIT
#include "iothubd/proto/topics.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "iothubd/proto/property_bag.hpp"
#include "test_helpers.hpp"

namespace iothubd::proto {
namespace {

using core::Errc;
using test::errorOf;
using test::failedWith;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

TEST(SubscribeTopics, MatchSections5To7) {
  EXPECT_EQ(c2dSubscribeTopic("dev1"), "devices/dev1/messages/devicebound/#");
  EXPECT_EQ(moduleInputsSubscribeTopic("dev1", "mod1"), "devices/dev1/modules/mod1/inputs/#");
  EXPECT_EQ(kMethodsSubscribeTopic, "$iothub/methods/POST/#");
  EXPECT_EQ(kTwinResponseSubscribeTopic, "$iothub/twin/res/#");
  EXPECT_EQ(kTwinDesiredSubscribeTopic, "$iothub/twin/PATCH/properties/desired/#");
}

TEST(PublishTopics, MatchSections6And7) {
  EXPECT_EQ(methodResponseTopic(200, "1"), "$iothub/methods/res/200/?$rid=1");
  EXPECT_EQ(methodResponseTopic(504, "abc"), "$iothub/methods/res/504/?$rid=abc");
  EXPECT_EQ(twinGetTopic("7"), "$iothub/twin/GET/?$rid=7");
  EXPECT_EQ(twinPatchReportedTopic("8"), "$iothub/twin/PATCH/properties/reported/?$rid=8");
}

TEST(PublishTopics, EncodeRequestIds) {
  EXPECT_EQ(methodResponseTopic(200, "a b&c"), "$iothub/methods/res/200/?$rid=a%20b%26c");
  EXPECT_EQ(twinGetTopic("x/y"), "$iothub/twin/GET/?$rid=x%2Fy");
  EXPECT_EQ(twinPatchReportedTopic("="), "$iothub/twin/PATCH/properties/reported/?$rid=%3D");
}

TEST(ClassifyTopic, RecognizesEachInboundFamily) {
  EXPECT_EQ(classifyTopic("devices/dev1/messages/devicebound/", "dev1"), InboundKind::C2d);
  EXPECT_EQ(classifyTopic("devices/dev1/messages/devicebound/%24.mid=1", "dev1"), InboundKind::C2d);
  EXPECT_EQ(classifyTopic("$iothub/methods/POST/reboot/?$rid=1", "dev1"),
            InboundKind::MethodRequest);
  EXPECT_EQ(classifyTopic("$iothub/twin/res/200/?$rid=1", "dev1"), InboundKind::TwinResponse);
  EXPECT_EQ(classifyTopic("$iothub/twin/PATCH/properties/desired/?$version=2", "dev1"),
            InboundKind::TwinDesiredPatch);
}

TEST(ClassifyTopic, ReturnsUnknownForEverythingElse) {
  EXPECT_EQ(classifyTopic("devices/dev2/messages/devicebound/", "dev1"), InboundKind::Unknown);
  EXPECT_EQ(classifyTopic("devices/dev10/messages/devicebound/", "dev1"), InboundKind::Unknown);
  EXPECT_EQ(classifyTopic("devices/dev1/messages/events/", "dev1"), InboundKind::Unknown);
  EXPECT_EQ(classifyTopic("devices/dev1/modules/m/inputs/in1/", "dev1"), InboundKind::Unknown);
  EXPECT_EQ(classifyTopic("$iothub/twin/PATCH/properties/reported/?$rid=1", "dev1"),
            InboundKind::Unknown);
  EXPECT_EQ(classifyTopic("$iothub/methods/res/200/?$rid=1", "dev1"), InboundKind::Unknown);
  EXPECT_EQ(classifyTopic("", "dev1"), InboundKind::Unknown);
}

TEST(ParsePropertyBag, KeepsOrderAndMarksBareKeys) {
  const auto entries = parsePropertyBag("a=1&b&c=&%24.mid=x%20y");
  ASSERT_TRUE(entries.has_value()) << errorOf(entries);
  ASSERT_EQ(entries->size(), 4u);
  EXPECT_EQ((*entries)[0].key, "a");
  EXPECT_TRUE((*entries)[0].hasValue);
  EXPECT_EQ((*entries)[1].key, "b");
  EXPECT_FALSE((*entries)[1].hasValue);
  EXPECT_EQ((*entries)[2].value, "");
  EXPECT_TRUE((*entries)[2].hasValue);
  EXPECT_EQ((*entries)[3].key, "$.mid");
  EXPECT_EQ((*entries)[3].value, "x y");
}

TEST(ParsePropertyBag, SkipsEmptyPieces) {
  const auto entries = parsePropertyBag("&a=1&&b=2&");
  ASSERT_TRUE(entries.has_value()) << errorOf(entries);
  EXPECT_EQ(entries->size(), 2u);
  EXPECT_TRUE(parsePropertyBag("").value().empty());
}

TEST(ParsePropertyBag, SplitsOnFirstEquals) {
  EXPECT_EQ(parsePropertyBag("k=a=b").value().at(0).value, "a=b");
}

TEST(ParsePropertyBag, RejectsMalformedEscapesAndEmptyNames) {
  EXPECT_TRUE(failedWith(parsePropertyBag("a=1&b%=2"), Errc::Protocol,
                         "property 2 name has a malformed percent-escape at offset 1"));
  EXPECT_TRUE(failedWith(parsePropertyBag("a=%zz"), Errc::Protocol,
                         "property 1 ('a') value has a malformed percent-escape at offset 0"));
  EXPECT_TRUE(failedWith(parsePropertyBag("=v"), Errc::Protocol, "property 1 has an empty name"));
}

TEST(ParseC2dTopic, ParsesDocumentedExample) {
  const auto props = parseC2dTopic(
      "devices/dev1/messages/devicebound/%24.mid=6b82&%24.to=%2Fdevices%2Fdev1%2Fmessages%2F"
      "devicebound&iothub-ack=full&color=red",
      "dev1");
  ASSERT_TRUE(props.has_value()) << errorOf(props);
  EXPECT_THAT(props->systemProperties,
              ElementsAre(Pair("ack", "full"), Pair("message-id", "6b82"),
                          Pair("to", "/devices/dev1/messages/devicebound")));
  EXPECT_THAT(props->properties, ElementsAre(Pair("color", "red")));
}

TEST(ParseC2dTopic, AcceptsEmptyBag) {
  const auto props = parseC2dTopic("devices/dev1/messages/devicebound/", "dev1");
  ASSERT_TRUE(props.has_value()) << errorOf(props);
  EXPECT_THAT(props->properties, IsEmpty());
  EXPECT_THAT(props->systemProperties, IsEmpty());
}

TEST(ParseC2dTopic, GivesKeyWithoutEqualsAnEmptyValue) {
  const auto props = parseC2dTopic("devices/dev1/messages/devicebound/flag&k=v", "dev1");
  ASSERT_TRUE(props.has_value()) << errorOf(props);
  EXPECT_THAT(props->properties, ElementsAre(Pair("flag", ""), Pair("k", "v")));
}

TEST(ParseC2dTopic, DecodesKeysAndValuesButKeepsPlus) {
  const auto props = parseC2dTopic(
      "devices/dev1/messages/devicebound/alert%20level=very%20high&path=a%2Fb%26c&sum=1+1&"
      "caf%C3%A9=%C3%A9",
      "dev1");
  ASSERT_TRUE(props.has_value()) << errorOf(props);
  EXPECT_THAT(props->properties,
              ElementsAre(Pair("alert level", "very high"), Pair("caf\xC3\xA9", "\xC3\xA9"),
                          Pair("path", "a/b&c"), Pair("sum", "1+1")));
}

TEST(ParseC2dTopic, MapsEverySystemKeyToItsBusName) {
  const auto props = parseC2dTopic(
      "devices/dev1/messages/devicebound/%24.mid=1&%24.cid=2&%24.uid=3&%24.ct=application%2Fjson&"
      "%24.ce=utf-8&%24.exp=6&%24.to=7&iothub-ack=none&%24.sub=8&%24.on=9&%24.ctime=10",
      "dev1");
  ASSERT_TRUE(props.has_value()) << errorOf(props);
  EXPECT_THAT(props->properties, IsEmpty());
  EXPECT_THAT(
      props->systemProperties,
      ElementsAre(Pair("ack", "none"), Pair("component-name", "8"),
                  Pair("content-encoding", "utf-8"), Pair("content-type", "application/json"),
                  Pair("correlation-id", "2"), Pair("creation-time-utc", "10"),
                  Pair("expiry-time-utc", "6"), Pair("message-id", "1"), Pair("output-name", "9"),
                  Pair("to", "7"), Pair("user-id", "3")));
}

TEST(ParseC2dTopic, MapsCreationTimeApplicationProperty) {
  const auto props = parseC2dTopic(
      "devices/dev1/messages/devicebound/iothub-creation-time-utc=2021-04-21T11%3A30%3A16Z",
      "dev1");
  ASSERT_TRUE(props.has_value()) << errorOf(props);
  EXPECT_THAT(props->systemProperties,
              ElementsAre(Pair("creation-time-utc", "2021-04-21T11:30:16Z")));
}

TEST(ParseC2dTopic, KeepsUnknownSystemKeysUnderTheirWireName) {
  const auto props = parseC2dTopic(
      "devices/dev1/messages/devicebound/%24.cdid=dev0&$.cmid=m&iothub-operation=x&app=1", "dev1");
  ASSERT_TRUE(props.has_value()) << errorOf(props);
  EXPECT_THAT(props->systemProperties, ElementsAre(Pair("$.cdid", "dev0"), Pair("$.cmid", "m"),
                                                   Pair("iothub-operation", "x")));
  EXPECT_THAT(props->properties, ElementsAre(Pair("app", "1")));
}

TEST(ParseC2dTopic, LetsTheLastRepeatedKeyWin) {
  const auto props = parseC2dTopic("devices/dev1/messages/devicebound/k=1&k=2", "dev1");
  ASSERT_TRUE(props.has_value()) << errorOf(props);
  EXPECT_THAT(props->properties, ElementsAre(Pair("k", "2")));
}

TEST(ParseC2dTopic, KeepsRawSlashInsteadOfDroppingTheRest) {
  const auto props = parseC2dTopic("devices/dev1/messages/devicebound/k=a/b", "dev1");
  ASSERT_TRUE(props.has_value()) << errorOf(props);
  EXPECT_THAT(props->properties, ElementsAre(Pair("k", "a/b")));
}

TEST(ParseC2dTopic, RejectsOtherDevicesAndTopics) {
  EXPECT_TRUE(failedWith(parseC2dTopic("devices/dev2/messages/devicebound/", "dev1"),
                         Errc::Protocol, "not a C2D topic of device 'dev1'"));
  EXPECT_TRUE(failedWith(parseC2dTopic("devices/dev1/messages/devicebound", "dev1"), Errc::Protocol,
                         "not a C2D topic of device 'dev1'"));
  EXPECT_TRUE(failedWith(parseC2dTopic("$iothub/twin/res/200/?$rid=1", "dev1"), Errc::Protocol,
                         "not a C2D topic of device 'dev1'"));
}

TEST(ParseC2dTopic, RejectsMalformedBag) {
  EXPECT_TRUE(failedWith(parseC2dTopic("devices/dev1/messages/devicebound/a=%4", "dev1"),
                         Errc::Protocol,
                         "C2D topic: property 1 ('a') value has a malformed percent-escape at "
                         "offset 0"));
  EXPECT_TRUE(failedWith(parseC2dTopic("devices/dev1/messages/devicebound/=x", "dev1"),
                         Errc::Protocol, "C2D topic: property 1 has an empty name"));
}

TEST(ParseModuleInputTopic, ParsesInputNameAndBag) {
  const auto input = parseModuleInputTopic(
      "devices/edge1/modules/filter/inputs/in%201/%24.mid=1&temp=high", "edge1", "filter");
  ASSERT_TRUE(input.has_value()) << errorOf(input);
  EXPECT_EQ(input->inputName, "in 1");
  EXPECT_THAT(input->properties.systemProperties, ElementsAre(Pair("message-id", "1")));
  EXPECT_THAT(input->properties.properties, ElementsAre(Pair("temp", "high")));
}

TEST(ParseModuleInputTopic, RejectsBadTopics) {
  EXPECT_TRUE(
      failedWith(parseModuleInputTopic("devices/edge1/modules/other/inputs/in/", "edge1", "filter"),
                 Errc::Protocol, "not an input topic of module 'edge1/filter'"));
  EXPECT_TRUE(
      failedWith(parseModuleInputTopic("devices/edge1/modules/filter/inputs/in", "edge1", "filter"),
                 Errc::Protocol, "input topic has no '/' after the input name"));
  EXPECT_TRUE(failedWith(
      parseModuleInputTopic("devices/edge1/modules/filter/inputs//a=1", "edge1", "filter"),
      Errc::Protocol, "input topic has an empty input name"));
}

TEST(ParseMethodRequestTopic, ParsesNameAndRequestId) {
  const auto request = parseMethodRequestTopic("$iothub/methods/POST/reboot/?$rid=1");
  ASSERT_TRUE(request.has_value()) << errorOf(request);
  EXPECT_EQ(request->methodName, "reboot");
  EXPECT_EQ(request->requestId, "1");
}

TEST(ParseMethodRequestTopic, DecodesEncodedMethodName) {
  const auto request = parseMethodRequestTopic("$iothub/methods/POST/set%20mode%2Fnight/?$rid=a3");
  ASSERT_TRUE(request.has_value()) << errorOf(request);
  EXPECT_EQ(request->methodName, "set mode/night");
}

TEST(ParseMethodRequestTopic, RequestIdRoundTripsToTheResponseTopic) {
  const auto request = parseMethodRequestTopic("$iothub/methods/POST/m/?$rid=a%20b%26c");
  ASSERT_TRUE(request.has_value()) << errorOf(request);
  EXPECT_EQ(request->requestId, "a b&c");
  EXPECT_EQ(methodResponseTopic(200, request->requestId),
            "$iothub/methods/res/200/?$rid=a%20b%26c");
}

TEST(ParseMethodRequestTopic, AcceptsRidWithoutDollarAndIgnoresOtherQueryKeys) {
  const auto request = parseMethodRequestTopic("$iothub/methods/POST/m/?x=1&rid=9");
  ASSERT_TRUE(request.has_value()) << errorOf(request);
  EXPECT_EQ(request->requestId, "9");
}

TEST(ParseMethodRequestTopic, RejectsBadTopics) {
  EXPECT_TRUE(failedWith(parseMethodRequestTopic("$iothub/methods/res/200/?$rid=1"), Errc::Protocol,
                         "not a method request topic"));
  EXPECT_TRUE(failedWith(parseMethodRequestTopic("$iothub/methods/POST/reboot"), Errc::Protocol,
                         "method request topic has no '/?' query"));
  EXPECT_TRUE(failedWith(parseMethodRequestTopic("$iothub/methods/POST//?$rid=1"), Errc::Protocol,
                         "method request topic has an empty method name"));
  EXPECT_TRUE(failedWith(parseMethodRequestTopic("$iothub/methods/POST/a/b/?$rid=1"),
                         Errc::Protocol, "method request topic has extra '/' in the method name"));
  EXPECT_TRUE(failedWith(parseMethodRequestTopic("$iothub/methods/POST/bad%/?$rid=1"),
                         Errc::Protocol, "method name has a malformed percent-escape at offset 3"));
  EXPECT_TRUE(failedWith(parseMethodRequestTopic("$iothub/methods/POST/reboot/?"), Errc::Protocol,
                         "method request topic has no $rid"));
  EXPECT_TRUE(failedWith(parseMethodRequestTopic("$iothub/methods/POST/reboot/?$rid="),
                         Errc::Protocol, "method request topic has no $rid"));
  EXPECT_TRUE(failedWith(parseMethodRequestTopic("$iothub/methods/POST/reboot/?$rid=%G0"),
                         Errc::Protocol,
                         "method request topic query: property 1 ('$rid') value has a malformed "
                         "percent-escape at offset 0"));
}

TEST(ParseTwinResponseTopic, ParsesGetResponseWithoutVersion) {
  const auto response = parseTwinResponseTopic("$iothub/twin/res/200/?$rid=42");
  ASSERT_TRUE(response.has_value()) << errorOf(response);
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->requestId, "42");
  EXPECT_FALSE(response->version.has_value());
}

TEST(ParseTwinResponseTopic, ParsesPatchResponseWithVersion) {
  const auto response = parseTwinResponseTopic("$iothub/twin/res/204/?$rid=7&$version=12");
  ASSERT_TRUE(response.has_value()) << errorOf(response);
  EXPECT_EQ(response->status, 204);
  EXPECT_EQ(response->requestId, "7");
  EXPECT_EQ(response->version, 12u);
}

TEST(ParseTwinResponseTopic, ParsesErrorStatusesAndDecodesRid) {
  const auto response = parseTwinResponseTopic("$iothub/twin/res/429/?$rid=a%2Fb");
  ASSERT_TRUE(response.has_value()) << errorOf(response);
  EXPECT_EQ(response->status, 429);
  EXPECT_EQ(response->requestId, "a/b");
}

TEST(ParseTwinResponseTopic, RejectsBadTopics) {
  EXPECT_TRUE(failedWith(parseTwinResponseTopic("$iothub/twin/GET/?$rid=1"), Errc::Protocol,
                         "not a twin response topic"));
  EXPECT_TRUE(failedWith(parseTwinResponseTopic("$iothub/twin/res/200"), Errc::Protocol,
                         "twin response topic has no '/?' query"));
  EXPECT_TRUE(failedWith(parseTwinResponseTopic("$iothub/twin/res/abc/?$rid=1"), Errc::Protocol,
                         "twin response topic has an invalid status 'abc'"));
  EXPECT_TRUE(failedWith(parseTwinResponseTopic("$iothub/twin/res/20/?$rid=1"), Errc::Protocol,
                         "twin response topic has an invalid status '20'"));
  EXPECT_TRUE(failedWith(parseTwinResponseTopic("$iothub/twin/res/2000/?$rid=1"), Errc::Protocol,
                         "twin response topic has an invalid status '2000'"));
  EXPECT_TRUE(failedWith(parseTwinResponseTopic("$iothub/twin/res/099/?$rid=1"), Errc::Protocol,
                         "twin response topic has an invalid status '099'"));
  EXPECT_TRUE(failedWith(parseTwinResponseTopic("$iothub/twin/res//?$rid=1"), Errc::Protocol,
                         "twin response topic has an invalid status ''"));
  EXPECT_TRUE(failedWith(parseTwinResponseTopic("$iothub/twin/res/200/?$version=3"), Errc::Protocol,
                         "twin response topic has no $rid"));
  EXPECT_TRUE(failedWith(parseTwinResponseTopic("$iothub/twin/res/204/?$rid=1&$version=x"),
                         Errc::Protocol, "twin response topic $version: not a decimal number"));
  EXPECT_TRUE(failedWith(parseTwinResponseTopic("$iothub/twin/res/204/?$rid=1&$version="),
                         Errc::Protocol, "twin response topic $version: empty number"));
  EXPECT_TRUE(failedWith(
      parseTwinResponseTopic("$iothub/twin/res/204/?$rid=1&$version=18446744073709551616"),
      Errc::Protocol, "twin response topic $version: number out of range"));
}

TEST(ParseDesiredPatchTopic, ReturnsVersion) {
  EXPECT_EQ(parseDesiredPatchTopic("$iothub/twin/PATCH/properties/desired/?$version=3").value(),
            3u);
  EXPECT_EQ(
      parseDesiredPatchTopic("$iothub/twin/PATCH/properties/desired/?$version=18446744073709551615")
          .value(),
      18446744073709551615u);
}

TEST(ParseDesiredPatchTopic, RejectsBadTopics) {
  EXPECT_TRUE(failedWith(parseDesiredPatchTopic("$iothub/twin/PATCH/properties/reported/?$rid=1"),
                         Errc::Protocol, "not a desired-properties patch topic"));
  EXPECT_TRUE(failedWith(parseDesiredPatchTopic("$iothub/twin/PATCH/properties/desired/"),
                         Errc::Protocol, "desired patch topic has no '/?' query after 'desired'"));
  EXPECT_TRUE(
      failedWith(parseDesiredPatchTopic("$iothub/twin/PATCH/properties/desired/x/?$version=1"),
                 Errc::Protocol, "desired patch topic has no '/?' query after 'desired'"));
  EXPECT_TRUE(failedWith(parseDesiredPatchTopic("$iothub/twin/PATCH/properties/desired/?$rid=1"),
                         Errc::Protocol, "desired patch topic has no $version"));
  EXPECT_TRUE(
      failedWith(parseDesiredPatchTopic("$iothub/twin/PATCH/properties/desired/?$version=-1"),
                 Errc::Protocol, "desired patch topic $version: not a decimal number"));
}

}  // namespace
}  // namespace iothubd::proto
