// `qcow2j check --salvage`: images that qemu-img and qemu-io made, damaged by
// byte pokes past what repair can keep, are salvaged into a new image that
// qemu-img check finds clean, in which every cluster the damage did not
// touch reads back the pattern written before the damage, every lost
// cluster reads as zeros and is listed among the lost ranges, and the
// damaged image is left as it was.
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "qcow2j/check.h"
#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

constexpr uint64_t kCs = 65536;
constexpr uint64_t kCopied = 1ull << 63;
constexpr uint64_t kMask = 0x00fffffffffffe00ull;

struct Region {
  uint64_t offset, length;
  int pattern;
};
// Guest clusters 0-3, 16, 64 (compressed), 512-513 (first L2 table) and
// 16384 (second L2 table).
const std::vector<Region> kRegions = {{0, 256 << 10, 0x11},     {1 << 20, 64 << 10, 0x22},
                                      {4 << 20, 64 << 10, 0x66}, {32 << 20, 128 << 10, 0x33},
                                      {1ull << 30, 64 << 10, 0x44}};
const std::set<uint64_t> kFirstL2 = {0, 1, 2, 3, 16, 64, 512, 513};

using Layout = ImageLayout;
Layout ReadLayout(const std::string& path) { return ReadImageLayout(path); }

struct Recipe {
  const char* name;
  bool extended_l2;
  std::function<void(const Layout&)> poke;
  std::set<uint64_t> lost;  // guest clusters (of kRegions) that must be lost
};

void Must(const RunResult& r) { ASSERT_EQ(r.exit_code, 0) << r.Describe(); }

class SalvageSuite : public ::testing::TestWithParam<Recipe> {
 public:
  static void SetUpTestSuite() {
    ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img is required";
    ASSERT_TRUE(HaveProgram("qemu-io")) << "qemu-io is required";
    dir_ = new TempDir();
    for (bool ext : {false, true}) {
      const std::string img = dir_->Path(ext ? "ext.qcow2" : "plain.qcow2");
      Must(test::Run("qemu-img create -q -f qcow2 -o extended_l2=" + std::string(ext ? "on" : "off") +
               " " + Quote(img) + " 4G"));
      std::string writes;
      for (const Region& r : kRegions) {
        const bool compressed = r.pattern == 0x66;
        writes += " -c " + Quote(std::string("write ") + (compressed ? "-c " : "") + "-P " +
                                 std::to_string(r.pattern) + " " + std::to_string(r.offset) +
                                 " " + std::to_string(r.length));
      }
      Must(test::Run("qemu-io" + writes + " " + Quote(img)));
    }
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

 protected:
  static TempDir* dir_;
};
TempDir* SalvageSuite::dir_ = nullptr;

// Whether guest cluster c lies in one of the JSON document's lost ranges.
bool InLostRanges(const Json& doc, uint64_t c) {
  const Json* lost = doc.Get("lost-ranges");
  if (!lost) return false;
  for (const Json& r : lost->arr) {
    const uint64_t off = std::stoull(r.Get("guest-offset")->str);
    const uint64_t len = std::stoull(r.Get("length")->str);
    if (c * kCs >= off && c * kCs < off + len) return true;
  }
  return false;
}

TEST_P(SalvageSuite, CopiesWhatIsReadable) {
  const Recipe& r = GetParam();
  TempDir tmp;
  const std::string img = tmp.Path("img.qcow2");
  const std::string out = tmp.Path("out.qcow2");
  Must(test::Run("cp " + Quote(dir_->Path(r.extended_l2 ? "ext.qcow2" : "plain.qcow2")) + " " +
           Quote(img)));
  r.poke(ReadLayout(img));
  const std::string before = ReadFile(img);

  RunResult s = test::Run(Cli() + " check --salvage=" + Quote(out) + " --output=json " + Quote(img));
  ASSERT_FALSE(s.crashed()) << s.Describe();
  EXPECT_EQ(s.exit_code, r.lost.empty() ? 0 : 2) << s.Describe();
  auto doc = ParseJson(s.out);
  ASSERT_TRUE(doc.has_value()) << s.Describe();
  EXPECT_TRUE(ReadFile(img) == before) << "salvage changed the damaged image";

  RunResult q = test::Run("qemu-img check " + Quote(out));
  EXPECT_EQ(q.exit_code, 0) << q.Describe();
  RunResult info = test::Run("qemu-img info --output=json " + Quote(out));
  auto j = ParseJson(info.out);
  ASSERT_TRUE(j.has_value()) << info.Describe();
  EXPECT_EQ(j->Get("virtual-size")->str, "4294967296");
  EXPECT_EQ(j->Get("cluster-size")->str, "65536");

  std::string reads;
  for (const Region& g : kRegions) {
    for (uint64_t off = g.offset; off < g.offset + g.length; off += kCs) {
      const bool lost = r.lost.count(off / kCs) > 0;
      EXPECT_EQ(InLostRanges(*doc, off / kCs), lost) << "guest cluster " << off / kCs << "\n"
                                                     << s.out;
      reads += " -c " + Quote("read -P " + std::to_string(lost ? 0 : g.pattern) + " " +
                              std::to_string(off) + " 65536");
    }
  }
  RunResult data = test::Run("qemu-io -r" + reads + " " + Quote(out));
  EXPECT_EQ(data.exit_code, 0) << data.Describe();
  EXPECT_EQ(data.out.find("Pattern verification failed"), std::string::npos) << data.Describe();
}

std::vector<Recipe> Recipes() {
  std::vector<Recipe> v;
  v.push_back({"Undamaged", false, [](const Layout&) {}, {}});
  v.push_back({"L1EntryPastEof", false,
               [](const Layout& l) { PokeBe64(l.path, l.l1 + 16, (1ull << 50) | kCopied); },
               {16384}});
  v.push_back({"L1TablePastEof", false, [](const Layout& l) { PokeBe64(l.path, 40, 1ull << 40); },
               {0, 1, 2, 3, 16, 64, 512, 513, 16384}});
  v.push_back({"GarbageL2Table", false,
               [](const Layout& l) {
                 std::mt19937_64 rng(5);
                 std::string junk(kCs, '\0');
                 for (char& ch : junk) ch = static_cast<char>(rng());
                 PokeBytes(l.path, l.l2, junk);
               },
               kFirstL2});
  v.push_back({"CorruptedCompressedData", false,
               [](const Layout& l) {
                 const uint64_t e = l.L2(64);
                 const uint64_t host = e & ((1ull << 54) - 1);  // 64 KiB clusters: 54 offset bits
                 PokeBytes(l.path, host, std::string(64, '\xff'));
               },
               {64}});
  v.push_back({"RefcountTableDestroyed", false,
               [](const Layout& l) { PokeBytes(l.path, l.rt, std::string(kCs, '\xff')); }, {}});
  v.push_back({"RefcountBlockZeroed", false,
               [](const Layout& l) { PokeBytes(l.path, l.rb, std::string(kCs, '\0')); }, {}});
  v.push_back({"DataPointsAtRefcountBlock", false,
               [](const Layout& l) { PokeBe64(l.path, l.l2 + 8, l.rb | kCopied); }, {1}});
  v.push_back({"L2EntryReservedBits", false,
               [](const Layout& l) { PokeBe64(l.path, l.l2 + 24, l.L2(3) | (1ull << 57)); }, {3}});
  v.push_back({"L1PointsAtRefcountTable", false,
               [](const Layout& l) { PokeBe64(l.path, l.l1 + 16, l.rt | kCopied); }, {16384}});
  // Cluster 1 maps cluster 0's data too: only the first mapping is copied.
  v.push_back({"TwoEntriesShareADataCluster", false,
               [](const Layout& l) { PokeBe64(l.path, l.l2 + 8, l.L2(0)); }, {1}});
  v.push_back({"ExtendedL2InconsistentBitmap", true,
               [](const Layout& l) {
                 // Cluster 2: every subcluster both allocated and zero.
                 PokeBe64(l.path, l.l2 + 16 * 2 + 8, ~0ull);
               },
               {2}});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Recipes, SalvageSuite, ::testing::ValuesIn(Recipes()),
                         [](const ::testing::TestParamInfo<Recipe>& i) { return i.param.name; });

TEST(Salvage, RefusesExistingOutputAndRepairFlag) {
  ASSERT_TRUE(HaveProgram("qemu-img"));
  TempDir tmp;
  const std::string img = tmp.Path("a.qcow2"), out = tmp.Path("b.qcow2");
  Must(test::Run("qemu-img create -q -f qcow2 " + Quote(img) + " 64M"));
  Must(test::Run("qemu-img create -q -f qcow2 " + Quote(out) + " 64M"));
  const std::string before = ReadFile(out);
  RunResult r = test::Run(Cli() + " check --salvage " + Quote(out) + " " + Quote(img));
  EXPECT_EQ(r.exit_code, 1) << r.Describe();
  EXPECT_NE(r.err.find("exists"), std::string::npos) << r.Describe();
  EXPECT_TRUE(ReadFile(out) == before);
  r = test::Run(Cli() + " check -r all --salvage " + Quote(tmp.Path("c.qcow2")) + " " + Quote(img));
  EXPECT_EQ(r.exit_code, 1) << r.Describe();
  r = test::Run(Cli() + " check --help");
  EXPECT_NE(r.out.find("--salvage=OUTPUT"), std::string::npos) << r.Describe();
}

// Lost clusters of an image with a backing file read as zeros in the output,
// not as the backing file's (stale) data; unallocated ones still read it.
TEST(Salvage, BackingFileKeptAndLostRangesZeroed) {
  ASSERT_TRUE(HaveProgram("qemu-img"));
  TempDir tmp;
  const std::string base = tmp.Path("base.qcow2"), img = tmp.Path("top.qcow2");
  const std::string out = tmp.Path("out.qcow2");
  Must(test::Run("qemu-img create -q -f qcow2 " + Quote(base) + " 64M"));
  Must(test::Run("qemu-io -c 'write -P 7 0 1M' " + Quote(base)));
  Must(test::Run("qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 " + Quote(img)));
  Must(test::Run("qemu-io -c 'write -P 9 0 64k' -c 'write -P 10 64k 64k' " + Quote(img)));
  const uint64_t l2 = PeekBe64(img, PeekBe64(img, 40)) & kMask;
  PokeBe64(img, l2 + 8, (1ull << 48) | kCopied);  // cluster 1: past the end of the file
  RunResult s = test::Run(Cli() + " check --salvage " + Quote(out) + " " + Quote(img));
  EXPECT_EQ(s.exit_code, 2) << s.Describe();
  EXPECT_NE(s.out.find("offset 0x10000 length 0x10000"), std::string::npos) << s.Describe();
  RunResult q = test::Run("qemu-img check " + Quote(out));
  EXPECT_EQ(q.exit_code, 0) << q.Describe();
  RunResult data = test::Run("qemu-io -r -c 'read -P 9 0 64k' -c 'read -P 0 64k 64k' "
                       "-c 'read -P 7 128k 896k' " + Quote(out));
  EXPECT_EQ(data.exit_code, 0) << data.Describe();
  EXPECT_EQ(data.out.find("Pattern verification failed"), std::string::npos) << data.Describe();
}

// Regression (found by fuzz_check): a 72-byte v2 header claiming a 3.9 GiB
// disk of 512-byte clusters, an L1 table past the end of the file and a
// backing file name past it too. Salvage zeroed the whole lost range one
// cluster at a time for a backing file it had only read as NULs (over 10 s
// under ASan). The name cannot be read, so the new image has no backing
// file and the lost range needs no zeros.
TEST(Salvage, UnreadableBackingNameIsDropped) {
  ASSERT_TRUE(HaveProgram("qemu-img"));
  TempDir tmp;
  const std::string img = tmp.Path("fuzz.qcow2"), out = tmp.Path("out.qcow2");
  const unsigned char input[] = {
      0x51, 0x46, 0x49, 0xfb, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
      0x00, 0x00, 0x00, 0x00, 0x31, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0xfb, 0x65,
      0x00, 0xc9, 0x00, 0x00, 0x00, 0x00, 0x00, 0x31, 0x36, 0x36, 0x36, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x36, 0x38, 0x39, 0x39, 0x39};
  WriteFile(img, std::string(reinterpret_cast<const char*>(input), sizeof(input)));
  RunResult s = test::Run("timeout 60 " + Cli() + " check --salvage " + Quote(out) + " " + Quote(img));
  EXPECT_EQ(s.exit_code, 2) << s.Describe();
  EXPECT_NE(s.out.find("offset 0x0 length 0xfb6500c9: the L1 table at 0x3600000000000000 lies past "
                       "the end of the file"),
            std::string::npos)
      << s.Describe();
  EXPECT_NE(s.out.find("the backing file name at 0x100 (49 bytes) runs past the end of the file: "
                       "the new image has no backing file"),
            std::string::npos)
      << s.Describe();
  RunResult info = test::Run("qemu-img info --output=json " + Quote(out));
  ASSERT_EQ(info.exit_code, 0) << info.Describe();
  EXPECT_EQ(info.out.find("backing-filename"), std::string::npos) << info.Describe();
  // 0xfb6500c9 bytes; qemu counts whole 512-byte sectors.
  EXPECT_NE(info.out.find("\"virtual-size\": 4217700352"), std::string::npos) << info.Describe();
  RunResult q = test::Run("qemu-img check " + Quote(out));
  EXPECT_EQ(q.exit_code, 0) << q.Describe();
}

// A lost range far larger than the zeroing budget (1 Mi clusters): the first
// 512 MiB of a 4 GiB disk of 512-byte clusters read as zeros, the rest from
// the backing file, and the report says so. Zeroing goes one L2 slice at a
// time, so this takes a fraction of a second.
TEST(Salvage, ZeroingOfHugeLostRangesIsBudgeted) {
  ASSERT_TRUE(HaveProgram("qemu-img"));
  TempDir tmp;
  const std::string base = tmp.Path("base.raw"), img = tmp.Path("top.qcow2");
  const std::string out = tmp.Path("out.qcow2");
  Must(test::Run("qemu-img create -q -f raw " + Quote(base) + " 4G"));
  Must(test::Run("qemu-io -f raw -c 'write -P 5 0 64k' -c 'write -P 6 1G 64k' " + Quote(base)));
  Must(test::Run("qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw " +
                 Quote(img)));
  PokeBe64(img, 40, 1ull << 40);  // l1_table_offset: far past the end of the file
  RunResult s = test::Run("timeout 120 " + Cli() + " check --salvage " + Quote(out) + " " + Quote(img));
  EXPECT_EQ(s.exit_code, 2) << s.Describe();
  EXPECT_NE(s.out.find("lost ranges past the first 1048576 clusters (512 MiB) were left "
                       "unallocated: in the output they read from the backing file"),
            std::string::npos)
      << s.Describe();
  RunResult q = test::Run("qemu-img check " + Quote(out));
  EXPECT_EQ(q.exit_code, 0) << q.Describe();
  RunResult data = test::Run("qemu-io -r -c 'read -P 0 0 64k' -c 'read -P 0 511M 1M' "
                             "-c 'read -P 6 1G 64k' " + Quote(out));
  EXPECT_EQ(data.exit_code, 0) << data.Describe();
  EXPECT_EQ(data.out.find("Pattern verification failed"), std::string::npos) << data.Describe();
  RunResult map = test::Run("qemu-img map --output=json " + Quote(out));
  ASSERT_EQ(map.exit_code, 0) << map.Describe();
  EXPECT_NE(map.out.find("\"start\": 0, \"length\": 536870912, \"depth\": 0, \"present\": true, "
                         "\"zero\": true, \"data\": false"),
            std::string::npos)
      << map.out.substr(0, 600);
}

// The library takes a smaller budget: exactly that many clusters are
// zeroed, the next one reads from the backing file.
TEST(Salvage, ZeroingBudgetIsAnOption) {
  ASSERT_TRUE(HaveProgram("qemu-img"));
  TempDir tmp;
  const std::string base = tmp.Path("base.raw"), img = tmp.Path("top.qcow2");
  const std::string out = tmp.Path("out.qcow2");
  Must(test::Run("qemu-img create -q -f raw " + Quote(base) + " 64M"));
  Must(test::Run("qemu-io -f raw -c 'write -P 6 0 1M' " + Quote(base)));
  Must(test::Run("qemu-img create -q -f qcow2 -b base.raw -F raw " + Quote(img)));
  PokeBe64(img, 40, 1ull << 40);  // l1_table_offset: far past the end of the file
  SalvageOptions so;
  so.max_zeroed_lost_clusters = 5;
  auto r = SalvageImage(img, out, so);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->notes.size(), 1u);
  EXPECT_EQ(r->notes[0],
            "lost ranges past the first 5 clusters (320 KiB) were left unallocated: in the output "
            "they read from the backing file");
  RunResult data = test::Run("qemu-io -r -c 'read -P 0 0 320k' -c 'read -P 6 320k 64k' " + Quote(out));
  EXPECT_EQ(data.exit_code, 0) << data.Describe();
  EXPECT_EQ(data.out.find("Pattern verification failed"), std::string::npos) << data.Describe();
  EXPECT_EQ(test::Run("qemu-img check " + Quote(out)).exit_code, 0);
}

// Random damage to metadata never crashes salvage, and whatever it produces
// is an image qemu-img check finds clean.
TEST(Salvage, HostileImagesNeverCrash) {
  ASSERT_TRUE(HaveProgram("qemu-img"));
  TempDir tmp;
  const std::string good = tmp.Path("good.qcow2");
  Must(test::Run("qemu-img create -q -f qcow2 " + Quote(good) + " 1G"));
  Must(test::Run("qemu-io -c 'write -P 1 0 256k' -c 'write -c -P 2 1M 64k' -c 'write -P 3 512M 64k' " +
           Quote(good)));
  Must(test::Run("qemu-img snapshot -c s1 " + Quote(good)));
  const std::string bytes = ReadFile(good);
  // Metadata lives in the first clusters and after the data: poke there.
  std::mt19937_64 rng(42);
  for (int round = 0; round < 24; ++round) {
    std::string damaged = bytes;
    const int pokes = 1 + static_cast<int>(rng() % 40);
    for (int i = 0; i < pokes; ++i) {
      size_t at = rng() % damaged.size();
      if (rng() % 2) at = rng() % std::min<size_t>(damaged.size(), 6 * kCs);
      damaged[at] = static_cast<char>(rng());
    }
    const std::string img = tmp.Path("bad" + std::to_string(round) + ".qcow2");
    const std::string out = tmp.Path("out" + std::to_string(round) + ".qcow2");
    WriteFile(img, damaged);
    RunResult s = test::Run("timeout 120 " + Cli() + " check --salvage " + Quote(out) + " " + Quote(img));
    ASSERT_FALSE(s.crashed()) << "round " << round << "\n" << s.Describe();
    ASSERT_TRUE(s.exit_code == 0 || s.exit_code == 1 || s.exit_code == 2) << s.Describe();
    if (s.exit_code == 1) continue;
    RunResult q = test::Run("qemu-img check " + Quote(out));
    EXPECT_EQ(q.exit_code, 0) << "round " << round << "\n" << q.Describe() << s.Describe();
  }
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
