#include <gtest/gtest.h>

#include "tools/cli/args.h"
#include "tools/cli/create_options.h"

namespace qcow2j::cli {
namespace {

uint64_t Size(const char* s) {
  auto r = ParseSize(s);
  EXPECT_TRUE(r.ok()) << s << ": " << r.status().ToString();
  return r.ok() ? *r : 0;
}

TEST(ParseSizeTest, SuffixesAreBinaryAndCaseInsensitive) {
  EXPECT_EQ(Size("512"), 512u);
  EXPECT_EQ(Size("512b"), 512u);
  EXPECT_EQ(Size("64k"), 65536u);
  EXPECT_EQ(Size("64K"), 65536u);
  EXPECT_EQ(Size("1M"), 1u << 20);
  EXPECT_EQ(Size("1G"), 1u << 30);
  EXPECT_EQ(Size("2t"), 2ull << 40);
  EXPECT_EQ(Size("1P"), 1ull << 50);
  EXPECT_EQ(Size("7E"), 7ull << 60);
  EXPECT_EQ(Size("0x100"), 256u);
  EXPECT_EQ(Size(" 12"), 12u);
}

TEST(ParseSizeTest, FractionsOnlyWithASuffix) {
  EXPECT_EQ(Size("1.5k"), 1536u);
  EXPECT_EQ(Size("1.k"), 1024u);
  EXPECT_EQ(Size("1.5e"), 1729382256910270464ull);
  EXPECT_FALSE(ParseSize("1.5").ok());
  EXPECT_FALSE(ParseSize(".5k").ok());
  EXPECT_FALSE(ParseSize("0.5").ok());
}

TEST(ParseSizeTest, RejectsGarbageSignsAndOverflow) {
  for (const char* bad : {"", "1x", "12k3", "1e3", "-1", "+5", "k", "0x"}) {
    EXPECT_FALSE(ParseSize(bad).ok()) << bad;
  }
  auto big = ParseSize("16E");
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().message(), "size out of range");
  EXPECT_FALSE(ParseSize("99999999999999999999").ok());
}

TEST(ParseOptionStringTest, SplitsKeysAndValues) {
  auto r = ParseOptionString("cluster_size=4k,lazy_refcounts=on,help");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[0], std::make_pair(std::string("cluster_size"), std::string("4k")));
  EXPECT_EQ((*r)[1], std::make_pair(std::string("lazy_refcounts"), std::string("on")));
  EXPECT_EQ((*r)[2].first, "help");
}

TEST(ParseOptionStringTest, DoubleCommaIsALiteralComma) {
  auto r = ParseOptionString("backing_file=a,,b.qcow2,backing_fmt=qcow2");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].second, "a,b.qcow2");
  EXPECT_EQ((*r)[1].second, "qcow2");
  EXPECT_FALSE(ParseOptionString("=x").ok());
}

TEST(SizeToStrTest, MatchesQemu) {
  EXPECT_EQ(SizeToStr(0), "0 B");
  EXPECT_EQ(SizeToStr(512), "512 B");
  EXPECT_EQ(SizeToStr(1000), "0.977 KiB");
  EXPECT_EQ(SizeToStr(67108864), "64 MiB");
  EXPECT_EQ(SizeToStr(1323008), "1.26 MiB");
  EXPECT_EQ(SizeToStr(266240), "260 KiB");
  EXPECT_EQ(SizeToStr(1ull << 30), "1 GiB");
}

std::string CreateLine(const char* fmt, const char* opts, uint64_t size) {
  CreateSpec spec;
  spec.opts.format = fmt;
  auto list = ParseOptionString(opts);
  EXPECT_TRUE(list.ok());
  Status st = ApplyCreateOptions(*list, &spec);
  EXPECT_TRUE(st.ok()) << st.ToString();
  spec.opts.size = size;
  return FormatCreateLine(spec);
}

TEST(CreateOptionsTest, FormattingLineMatchesQemuImg) {
  EXPECT_EQ(CreateLine("qcow2", "", 67108864),
            "fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=67108864 "
            "lazy_refcounts=off refcount_bits=16");
  EXPECT_EQ(CreateLine("qcow2",
                       "compat=v3,backing_file=base.qcow2,backing_fmt=qcow2,data_file=g.data,"
                       "data_file_raw=off,preallocation=off,refcount_bits=8,lazy_refcounts=on,"
                       "cluster_size=128k,extended_l2=on,compression_type=zstd",
                       67108864),
            "fmt=qcow2 cluster_size=131072 extended_l2=on preallocation=off "
            "compression_type=zstd size=67108864 compat=v3 backing_file=base.qcow2 "
            "backing_fmt=qcow2 data_file=g.data data_file_raw=off lazy_refcounts=on "
            "refcount_bits=8");
  EXPECT_EQ(CreateLine("raw", "preallocation=full", 1048576),
            "fmt=raw size=1048576 preallocation=full");
}

TEST(CreateOptionsTest, MapsOntoCreateOptions) {
  CreateSpec spec;
  auto list = ParseOptionString("compat=0.10,cluster_size=4k,lazy_refcounts=on,journal=off,"
                                "preallocation=metadata,compression_type=zstd");
  ASSERT_TRUE(list.ok());
  ASSERT_TRUE(ApplyCreateOptions(*list, &spec).ok());
  EXPECT_EQ(spec.opts.version, 2);
  EXPECT_EQ(spec.opts.cluster_size, 4096u);
  EXPECT_TRUE(spec.opts.lazy_refcounts);
  EXPECT_FALSE(spec.opts.journal);
  EXPECT_EQ(spec.opts.preallocation, Preallocation::kMetadata);
  EXPECT_EQ(spec.opts.compression_type, "zstd");

  CreateSpec bad;
  Status st = ApplyCreateOptions({{"foo", "bar"}}, &bad);
  EXPECT_EQ(st.message(), "Invalid parameter 'foo'");
  EXPECT_FALSE(ApplyCreateOptions({{"compat", "2"}}, &bad).ok());
  EXPECT_FALSE(ApplyCreateOptions({{"lazy_refcounts", "maybe"}}, &bad).ok());
  CreateSpec raw;
  raw.opts.format = "raw";
  EXPECT_FALSE(ApplyCreateOptions({{"cluster_size", "4k"}}, &raw).ok());
}

}  // namespace
}  // namespace qcow2j::cli
