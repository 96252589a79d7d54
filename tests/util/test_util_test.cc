// The helpers the black-box suites stand on must themselves be right.
#include <gtest/gtest.h>

#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

TEST(TestUtilTest, JsonParsesQemuImgDocuments) {
  std::string err;
  auto j = ParseJson(R"({"virtual-size": 4194304, "format-specific": {"data": {"compat": "1.1",
      "lazy-refcounts": false, "x": null}}, "snapshots": [{"id": "1", "name": "s\"1\u00e9"}],
      "neg": -1.5e3})",
                     &err);
  ASSERT_TRUE(j.has_value()) << err;
  EXPECT_EQ(j->At("virtual-size")->str, "4194304");
  EXPECT_EQ(j->At("format-specific.data.compat")->str, "1.1");
  EXPECT_EQ(j->At("format-specific.data.lazy-refcounts")->type, Json::Type::kBool);
  EXPECT_FALSE(j->At("format-specific.data.lazy-refcounts")->b);
  EXPECT_EQ(j->At("format-specific.data.x")->type, Json::Type::kNull);
  EXPECT_EQ(j->At("format-specific.data.missing"), nullptr);
  ASSERT_TRUE(j->Get("snapshots")->is_array());
  EXPECT_EQ(j->Get("snapshots")->arr[0].Get("name")->str, "s\"1\xc3\xa9");
  EXPECT_EQ(j->Get("neg")->str, "-1.5e3");
  EXPECT_FALSE(ParseJson("{\"a\": 1,}").has_value());
  EXPECT_FALSE(ParseJson("[1 2]").has_value());
  EXPECT_FALSE(ParseJson("{\"a\": 1} x").has_value());
  EXPECT_FALSE(ParseJson("\"unterminated").has_value());
  EXPECT_EQ(ParseJson("[true, {\"b\": 2, \"a\": [ ]}]")->ToString(),
            "[true, {\"a\": [], \"b\": 2}]");
}

TEST(TestUtilTest, RunCapturesOutputsAndStatus) {
  RunResult r = test::Run("echo out; echo err >&2; exit 3");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
  EXPECT_FALSE(r.crashed());
  EXPECT_TRUE(test::Run("kill -SEGV $$").crashed());
}

TEST(TestUtilTest, PokesAreBigEndianAndCompareFindsDifferences) {
  TempDir dir;
  std::string a = dir.Path("a"), b = dir.Path("b");
  WriteFile(a, std::string(32, '\0'));
  WriteFile(b, std::string(32, '\0'));
  EXPECT_EQ(CompareFiles(a, b), "");
  PokeBe64(a, 8, 0x0102030405060708ull);
  PokeBe32(a, 0, 0x514649fb);
  PokeBe16(a, 20, 0xabcd);
  EXPECT_EQ(PeekBe64(a, 8), 0x0102030405060708ull);
  EXPECT_EQ(PeekBe32(a, 0), 0x514649fbu);
  EXPECT_EQ(PeekBe16(a, 20), 0xabcd);
  EXPECT_EQ(ReadFile(a).substr(0, 4), "QFI\xfb");
  EXPECT_NE(CompareFiles(a, b).find("offset 0 "), std::string::npos) << CompareFiles(a, b);
  TruncateFile(b, 16);
  EXPECT_NE(CompareFiles(a, b).find("sizes differ"), std::string::npos);
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
