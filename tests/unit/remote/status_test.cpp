#include "ndif_sweep/remote/status.hpp"

#include <gtest/gtest.h>

#include "ndif_sweep/core/error.hpp"

namespace ndif::remote {
namespace {

TEST(StatusParse, ReceivedHoldsTheJobId) {
  const auto s = parse_status(
      R"({"id": "6f1c", "status": "RECEIVED", "description": "Your job has been received.", "data": null, "session_id": null})");
  EXPECT_EQ(s.id, "6f1c");
  EXPECT_EQ(s.state, JobState::received);
  EXPECT_EQ(s.description, "Your job has been received.");
  EXPECT_FALSE(s.finished());
  EXPECT_FALSE(s.result_url);
}

TEST(StatusParse, EveryDocumentedStatusMapsToItsState) {
  const std::pair<const char*, JobState> cases[] = {{"QUEUED", JobState::queued},
                                                    {"PROVISIONING", JobState::provisioning},
                                                    {"DEPLOYING", JobState::deploying},
                                                    {"DISPATCHED", JobState::dispatched},
                                                    {"RUNNING", JobState::running},
                                                    {"LOG", JobState::log},
                                                    {"COMPLETED", JobState::completed},
                                                    {"ERROR", JobState::error},
                                                    {"NNSIGHT_ERROR", JobState::nnsight_error},
                                                    {"APPROVED", JobState::unknown},
                                                    {"SOMETHING_NEW", JobState::unknown}};
  for (const auto& [name, state] : cases) {
    const auto s = parse_status(std::string(R"({"id": "j", "status": ")") + name + R"("})");
    EXPECT_EQ(s.state, state) << name;
    EXPECT_EQ(s.status, name);
    if (state != JobState::unknown) {
      EXPECT_STREQ(state_name(state), name);
    }
  }
}

TEST(StatusParse, CompletedWithNullDataMeansFetchResultById) {
  const auto s = parse_status(R"({"id": "j", "status": "COMPLETED", "description": null, "data": null})");
  EXPECT_TRUE(s.finished());
  EXPECT_FALSE(s.result_url);
  EXPECT_EQ(s.description, "");
}

TEST(StatusParse, CompletedWithUrlOrUrlAndSize) {
  const auto url = parse_status(R"({"id": "j", "status": "COMPLETED", "data": "https://s3/x?sig=1"})");
  EXPECT_EQ(url.result_url, "https://s3/x?sig=1");
  EXPECT_FALSE(url.result_size);
  const auto sized = parse_status(R"({"id": "j", "status": "COMPLETED", "data": ["https://s3/y", 12345]})");
  EXPECT_EQ(sized.result_url, "https://s3/y");
  EXPECT_EQ(sized.result_size, 12345);
}

TEST(StatusParse, DataOfRunningStatusesIsIgnored) {
  EXPECT_EQ(parse_status(R"({"id": "j", "status": "LOG", "data": {"any": [1, 2]}})").state, JobState::log);
}

TEST(StatusParse, NnsightErrorTakesItsMessageFromData) {
  const auto s = parse_status(
      R"({"id": "j", "status": "NNSIGHT_ERROR", "description": null, "data": {"err_message": "IndexError: out of range", "node_id": 3, "traceback": "..."}})");
  EXPECT_EQ(s.state, JobState::nnsight_error);
  EXPECT_EQ(s.description, "IndexError: out of range");
}

TEST(StatusParse, GarbageIsADecodeErrorQuotingTheReply) {
  const char* bad[] = {"",
                       "<html>502 Bad Gateway</html>",
                       "[]",
                       "\"RUNNING\"",
                       R"({"status": "RUNNING"})",
                       R"({"id": 5, "status": "RUNNING"})",
                       R"({"id": "", "status": "RUNNING"})",
                       R"({"id": "j"})",
                       R"({"id": "j", "status": null})",
                       R"({"id": "j", "status": "RUNNING", "description": 7})",
                       R"({"id": "j", "status": "COMPLETED", "data": 5})",
                       R"({"id": "j", "status": "COMPLETED", "data": ["u"]})",
                       R"({"id": "j", "status": "COMPLETED", "data": ["u", -1]})",
                       R"({"id": "j", "status": "COMPLETED", "data": [1, 2]})",
                       R"({"id": "j", "status": "COMPLETED", "data": ""})",
                       R"({"id": "j", "status": "COMPLETED", "data": {"url": "u"}})",
                       "{\"id\": \"j\", \"status\": \"RUN"};
  for (const char* body : bad) {
    try {
      static_cast<void>(parse_status(body));
      ADD_FAILURE() << "accepted: " << body;
    } catch (const DecodeError& e) {
      EXPECT_NE(std::string(e.what()).find("job status reply is malformed"), std::string::npos) << e.what();
    }
  }
}

TEST(StatusParse, MessageQuotesOnlyTheStartOfALongReply) {
  try {
    static_cast<void>(parse_status(std::string(10000, 'x')));
    FAIL();
  } catch (const DecodeError& e) {
    EXPECT_LT(std::string(e.what()).size(), 250);
  }
}

}  // namespace
}  // namespace ndif::remote
