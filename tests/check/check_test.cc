// `qcow2j check` against qemu-img check: a corruption suite. Each recipe
// pokes one kind of damage into an image that qemu-img and qemu-io made,
// then requires: our exit code and problem kinds; parity (whatever qemu-img
// check counts as corruptions or leaks, we count too); after
// `qcow2j check -r all`, qemu-img check finds the image clean; and every
// guest cluster the damage did not touch still reads back its pattern.
#include <functional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

constexpr uint64_t kCopied = 1ull << 63;
constexpr uint64_t kZeroFlag = 1;
constexpr uint64_t kMask = 0x00fffffffffffe00ull;
constexpr uint64_t kCs = 65536;

// Guest data the base images hold: (offset, length, pattern).
struct Region {
  uint64_t offset, length;
  int pattern;
};
const std::vector<Region> kRegions = {
    {0, 256 << 10, 0x11}, {1 << 20, 64 << 10, 0x22}, {32 << 20, 128 << 10, 0x33},
    {1ull << 30, 64 << 10, 0x44}};
const Region kSnapRegion = {2 << 20, 64 << 10, 0x55};  // written after the snapshot

// Where things are in an image (read from it, not assumed).
struct Layout : ImageLayout {
  uint64_t snaps = 0, file_size = 0;
  // Persistent bitmaps (0 when absent): the bitmaps extension's payload, the
  // bitmap directory and the bitmap table of its first entry.
  uint64_t bm_ext = 0, bm_dir = 0, bm_table = 0;
  uint64_t Data(int i) const { return L2(i) & kMask; }
  // Refcount entry of a host offset (refcount_order 4, first block).
  uint64_t Ref(uint64_t host) const { return rb + 2 * (host / kCs); }
};

Layout Read(const std::string& path) {
  Layout l;
  static_cast<ImageLayout&>(l) = ReadImageLayout(path);
  l.snaps = PeekBe64(path, 64);
  l.file_size = FileSize(path);
  if (PeekBe32(path, 4) >= 3) {
    uint64_t at = PeekBe32(path, 100);  // header_length: the extensions follow
    for (uint32_t type; (type = PeekBe32(path, at)) != 0 && at < kCs;) {
      const uint32_t len = PeekBe32(path, at + 4);
      if (type == 0x23852875) l.bm_ext = at + 8;
      at += 8 + ((len + 7) & ~7u);
    }
  }
  if (l.bm_ext) {
    l.bm_dir = PeekBe64(path, l.bm_ext + 16);
    l.bm_table = PeekBe64(path, l.bm_dir);
  }
  return l;
}

enum Base { kPlain, kSnapshot, kSnapshotLast, kCompressedBase, kExtendedL2, kBitmaps };

struct Recipe {
  const char* name;
  Base base;
  std::function<void(const Layout&)> poke;
  int exit_code;                    // of `qcow2j check`
  std::vector<std::string> kinds;   // must all be among the problems
  std::set<uint64_t> damaged;       // guest clusters whose data may be lost
  bool repairable = true;
};

void Must(const RunResult& r) { ASSERT_EQ(r.exit_code, 0) << r.Describe(); }

class CheckSuite : public ::testing::TestWithParam<Recipe> {
 public:
  static void SetUpTestSuite() {
    ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img is required";
    ASSERT_TRUE(HaveProgram("qemu-io")) << "qemu-io is required";
    dir_ = new TempDir();
    std::string writes;
    for (const Region& r : kRegions) {
      writes += " -c " + Quote("write -P " + std::to_string(r.pattern) + " " +
                               std::to_string(r.offset) + " " + std::to_string(r.length));
    }
    const std::string plain = dir_->Path("plain.qcow2");
    Must(test::Run("qemu-img create -q -f qcow2 " + Quote(plain) + " 4G"));
    Must(test::Run("qemu-io" + writes + " " + Quote(plain)));
    const std::string last = dir_->Path("snaplast.qcow2");
    Must(test::Run("cp " + Quote(plain) + " " + Quote(last)));
    Must(test::Run("qemu-img snapshot -c s1 " + Quote(last)));
    const std::string snap = dir_->Path("snap.qcow2");
    Must(test::Run("cp " + Quote(last) + " " + Quote(snap)));
    Must(test::Run("qemu-io -c " + Quote("write -P 85 2M 64k") + " " + Quote(snap)));
    const std::string comp = dir_->Path("comp.qcow2");
    Must(test::Run("qemu-img create -q -f qcow2 " + Quote(comp) + " 4G"));
    Must(test::Run("qemu-io" + writes + " -c " + Quote("write -c -P 102 4M 64k") + " " + Quote(comp)));
    const std::string ext = dir_->Path("ext.qcow2");
    Must(test::Run("qemu-img create -q -f qcow2 -o extended_l2=on " + Quote(ext) + " 4G"));
    Must(test::Run("qemu-io" + writes + " " + Quote(ext)));
    // Two persistent dirty bitmaps, dirtied by the writes (so each has a
    // bitmap table pointing at a data cluster).
    const std::string bm = dir_->Path("bitmaps.qcow2");
    Must(test::Run("qemu-img create -q -f qcow2 " + Quote(bm) + " 4G"));
    Must(test::Run("qemu-img bitmap --add " + Quote(bm) + " b0"));
    Must(test::Run("qemu-img bitmap --add -g 1M " + Quote(bm) + " b1"));
    Must(test::Run("qemu-io" + writes + " " + Quote(bm)));
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

 protected:
  static std::string BasePath(Base b) {
    switch (b) {
      case kPlain: return dir_->Path("plain.qcow2");
      case kSnapshot: return dir_->Path("snap.qcow2");
      case kSnapshotLast: return dir_->Path("snaplast.qcow2");
      case kCompressedBase: return dir_->Path("comp.qcow2");
      case kExtendedL2: return dir_->Path("ext.qcow2");
      case kBitmaps: return dir_->Path("bitmaps.qcow2");
    }
    return "";
  }
  static TempDir* dir_;
};
TempDir* CheckSuite::dir_ = nullptr;

std::string Kinds(const Json& doc) {
  std::string s;
  if (const Json* p = doc.Get("problems")) {
    for (const Json& e : p->arr) {
      if (const Json* k = e.Get("kind")) s += k->str + " ";
    }
  }
  return s;
}

uint64_t Num(const Json& doc, const char* key) {
  const Json* v = doc.Get(key);
  return v ? std::stoull(v->str) : 0;
}

TEST_P(CheckSuite, DetectRepairAndKeepData) {
  const Recipe& r = GetParam();
  TempDir tmp;
  const std::string img = tmp.Path("img.qcow2");
  ASSERT_TRUE(test::Run("cp " + Quote(BasePath(r.base)) + " " + Quote(img)).ok());
  {
    // The undamaged image must be clean for both tools.
    RunResult ours = test::Run(Cli() + " check " + Quote(img));
    ASSERT_EQ(ours.exit_code, 0) << ours.Describe();
  }
  r.poke(Read(img));

  // Ours: exit code and problem kinds.
  RunResult ours = test::Run(Cli() + " check --output=json " + Quote(img));
  ASSERT_FALSE(ours.crashed()) << ours.Describe();
  EXPECT_EQ(ours.exit_code, r.exit_code) << ours.Describe();
  std::string err;
  auto doc = ParseJson(ours.out, &err);
  if (r.exit_code == 1) {
    EXPECT_FALSE(ours.err.empty());
    return;
  }
  ASSERT_TRUE(doc.has_value()) << err << "\n" << ours.Describe();
  const std::string kinds = Kinds(*doc);
  for (const std::string& k : r.kinds) {
    EXPECT_NE(kinds.find(k + " "), std::string::npos) << "missing kind " << k << " in: " << kinds;
  }

  // Parity with qemu-img check.
  RunResult qemu = test::Run("qemu-img check --output=json " + Quote(img));
  ASSERT_FALSE(qemu.crashed()) << qemu.Describe();
  if (qemu.exit_code == 2 || qemu.exit_code == 3) {
    auto q = ParseJson(qemu.out);
    ASSERT_TRUE(q.has_value()) << qemu.Describe();
    if (Num(*q, "corruptions") > 0) {
      EXPECT_GT(Num(*doc, "corruptions"), 0u) << qemu.Describe() << ours.Describe();
    }
    if (Num(*q, "leaks") > 0) {
      EXPECT_GT(Num(*doc, "leaks") + Num(*doc, "corruptions"), 0u) << qemu.Describe();
    }
  }
  if (qemu.exit_code != 0) {
    EXPECT_NE(ours.exit_code, 0) << qemu.Describe();
  }

  if (!r.repairable) return;
  RunResult fix = test::Run(Cli() + " check -r all " + Quote(img));
  ASSERT_FALSE(fix.crashed()) << fix.Describe();
  EXPECT_EQ(fix.exit_code, 0) << fix.Describe();
  RunResult after = test::Run("qemu-img check " + Quote(img));
  EXPECT_EQ(after.exit_code, 0) << after.Describe() << "\nrepair:\n" << fix.Describe();
  RunResult again = test::Run(Cli() + " check " + Quote(img));
  EXPECT_EQ(again.exit_code, 0) << again.Describe();
  EXPECT_EQ(PeekBe64(img, 72) & 3, 0u) << "dirty/corrupt bits left set";

  // Data the damage did not touch reads back.
  std::vector<Region> regions = kRegions;
  if (r.base == kSnapshot) regions.push_back(kSnapRegion);
  std::string reads;
  for (const Region& g : regions) {
    for (uint64_t off = g.offset; off < g.offset + g.length; off += kCs) {
      if (r.damaged.count(off / kCs)) continue;
      reads += " -c " + Quote("read -P " + std::to_string(g.pattern) + " " + std::to_string(off) +
                              " 65536");
    }
  }
  RunResult data = test::Run("qemu-io -r" + reads + " " + Quote(img));
  EXPECT_EQ(data.exit_code, 0) << data.Describe();
  EXPECT_EQ(data.out.find("Pattern verification failed"), std::string::npos) << data.Describe();
}

// Guest clusters: 0-3 (0x11), 16 (0x22), 512-513 (0x33), 16384 (0x44, second L2 table).
const std::set<uint64_t> kFirstL2 = {0, 1, 2, 3, 16, 512, 513};

std::vector<Recipe> Recipes() {
  std::vector<Recipe> v;
  auto add = [&](Recipe r) { v.push_back(std::move(r)); };
  add({"Leak", kPlain, [](const Layout& l) {
         TruncateFile(l.path, (l.file_size + kCs - 1) / kCs * kCs + kCs);
         PokeBe16(l.path, l.Ref(((l.file_size + kCs - 1) / kCs) * kCs), 1);
       }, 3, {"leak"}, {}});
  add({"RefcountTooHighOnData", kPlain, [](const Layout& l) { PokeBe16(l.path, l.Ref(l.Data(0)), 2); },
       2, {"leak", "copied-flag"}, {}});
  add({"RefcountZeroOnData", kPlain, [](const Layout& l) { PokeBe16(l.path, l.Ref(l.Data(1)), 0); },
       2, {"refcount-mismatch", "copied-flag"}, {}});
  add({"RefcountZeroOnL2", kPlain, [](const Layout& l) { PokeBe16(l.path, l.Ref(l.l2), 0); }, 2,
       {"refcount-mismatch", "copied-flag"}, {}});
  add({"RefcountZeroOnL1", kPlain, [](const Layout& l) { PokeBe16(l.path, l.Ref(l.l1), 0); }, 2,
       {"refcount-mismatch"}, {}});
  add({"RefcountTooHighOnRefTable", kPlain, [](const Layout& l) { PokeBe16(l.path, l.Ref(l.rt), 5); },
       3, {"leak"}, {}});
  add({"RefcountZeroOnRefBlock", kPlain, [](const Layout& l) { PokeBe16(l.path, l.Ref(l.rb), 0); },
       2, {"refcount-mismatch"}, {}});
  add({"RefcountTooHighOnL2", kPlain, [](const Layout& l) { PokeBe16(l.path, l.Ref(l.l2), 2); }, 2,
       {"leak", "copied-flag"}, {}});
  add({"L1PointsAtItself", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l1 + 8 * 4, l.l1 | kCopied); }, 2, {"overlap"}, {}});
  add({"DataPointsAtRefcountBlock", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l2, l.rb | kCopied); }, 2, {"overlap"}, {0}});
  add({"DataPointsAtL1", kPlain, [](const Layout& l) { PokeBe64(l.path, l.l2 + 8, l.l1 | kCopied); },
       2, {"overlap"}, {1}});
  add({"DataPointsAtRefTable", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l2 + 16, l.rt | kCopied); }, 2, {"overlap"}, {2}});
  add({"DataPointsAtOtherL2", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l2 + 24, l.l2b | kCopied); }, 2, {"overlap"}, {3}});
  add({"UnalignedL1Entry", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l1, (l.l2 + 0x200) | kCopied); }, 2, {"unaligned"},
       kFirstL2});
  add({"UnalignedL2DataEntry", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l2 + 8, (l.Data(1) + 0x200) | kCopied); }, 2,
       {"unaligned"}, {1}});
  add({"UnalignedPreallocatedZero", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l2 + 8 * 5, 0x70200 | kZeroFlag); }, 2,
       {"unaligned"}, {}});
  add({"UnalignedRefTableEntry", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.rt, l.rb + 0x200); }, 2, {"unaligned"}, {}});
  add({"RefTableEntryOutsideImage", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.rt + 8, 1ull << 44); }, 2, {"past-eof"}, {}});
  add({"RefTableEntryReservedBits", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.rt, l.rb | 1); }, 2, {"reserved-bits"}, {}});
  add({"EmptyRefcountTable", kPlain, [](const Layout& l) { PokeBe32(l.path, 56, 0); }, 2,
       {"refcount-table"}, {}});
  add({"UnalignedRefcountTableOffset", kPlain,
       [](const Layout& l) { PokeBe64(l.path, 48, l.rt + 512); }, 2, {"refcount-table"}, {}});
  add({"L2CopiedMissing", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l2, l.L2(0) & ~kCopied); }, 2, {"copied-flag"}, {}});
  add({"L1CopiedMissing", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l1, PeekBe64(l.path, l.l1) & ~kCopied); }, 2,
       {"copied-flag"}, {}});
  add({"CopiedOnSharedCluster", kSnapshot,
       [](const Layout& l) { PokeBe64(l.path, l.l2, l.L2(0) | kCopied); }, 2, {"copied-flag"}, {}});
  add({"L1ReservedBits", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l1, PeekBe64(l.path, l.l1) | (1ull << 56)); }, 2,
       {"reserved-bits"}, {}});
  add({"L2ReservedBits", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l2, l.L2(0) | (1ull << 57)); }, 2,
       {"reserved-bits"}, {}});
  add({"L2EntryAt32PB", kPlain, [](const Layout& l) { PokeBe64(l.path, l.l2 + 16, (1ull << 55) | kCopied); },
       2, {"past-eof"}, {2}});
  add({"L1EntryPastEof", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l1 + 8 * 3, (1ull << 50) | kCopied); }, 2,
       {"past-eof"}, {}});
  add({"TwoL2EntriesShareCluster", kPlain,
       [](const Layout& l) { PokeBe64(l.path, l.l2 + 8, l.L2(0)); }, 2, {"refcount-mismatch"}, {1}});
  add({"DirtyAndCorruptBitsWithLeak", kPlain, [](const Layout& l) {
         PokeBe64(l.path, 72, PeekBe64(l.path, 72) | 3);
         PokeBe16(l.path, l.Ref(l.Data(0)), 2);
       }, 2, {"leak"}, {}});
  add({"DirtyAndCorruptBitsOnly", kPlain,
       [](const Layout& l) { PokeBe64(l.path, 72, PeekBe64(l.path, 72) | 3); }, 0, {}, {}});
  add({"TruncatedImage", kPlain,
       [](const Layout& l) { TruncateFile(l.path, l.file_size - 2 * kCs); }, 2, {"past-eof"},
       {16384, 513}});
  add({"SnapshotEntryIncomplete", kSnapshotLast,
       [](const Layout& l) { PokeBe16(l.path, l.snaps + 12, 0xffff); }, 2, {"snapshot"}, {}});
  add({"SnapshotHugeExtraData", kSnapshot,
       [](const Layout& l) { PokeBe32(l.path, l.snaps + 36, 0x100000); }, 2, {"snapshot"}, {}});
  add({"SnapshotL1Unaligned", kSnapshot, [](const Layout& l) {
         PokeBe64(l.path, l.snaps, PeekBe64(l.path, l.snaps) + 0x200);
       }, 2, {"snapshot"}, {}});
  add({"SnapshotL1TooLarge", kSnapshot,
       [](const Layout& l) { PokeBe32(l.path, l.snaps + 8, 0x1000000); }, 2, {"snapshot"}, {}});
  add({"SnapshotL1PointsAtRefBlock", kSnapshot,
       [](const Layout& l) { PokeBe64(l.path, l.snaps, l.rb); }, 2, {"overlap"}, {}});
  add({"TooManySnapshots", kSnapshot, [](const Layout& l) { PokeBe32(l.path, 60, 70000); }, 2,
       {"snapshot"}, {}});
  add({"CompressedWithCopied", kCompressedBase, [](const Layout& l) {
         const uint64_t e = PeekBe64(l.path, l.l2 + 8 * 64);
         PokeBe64(l.path, l.l2 + 8 * 64, e | kCopied);
       }, 2, {"copied-flag"}, {}});
  add({"CompressedPastEof", kCompressedBase, [](const Layout& l) {
         const uint64_t e = PeekBe64(l.path, l.l2 + 8 * 64);
         PokeBe64(l.path, l.l2 + 8 * 64, (e & ~((1ull << 54) - 1)) | (1ull << 50));
       }, 2, {"past-eof"}, {64}});
  add({"ExtendedL2AllocAndZero", kExtendedL2, [](const Layout& l) {
         const uint64_t bm = PeekBe64(l.path, l.l2 + 8);
         PokeBe64(l.path, l.l2 + 8, bm | (0xfull << 32));
       }, 2, {"subcluster-bitmap"}, {}});
  add({"ExtendedL2UnallocatedWithBitmap", kExtendedL2,
       [](const Layout& l) { PokeBe64(l.path, l.l2 + 16 * 7 + 8, 0xff); }, 2,
       {"subcluster-bitmap"}, {}});
  // Persistent bitmaps: check names the structure; repair marks every bitmap
  // inconsistent (clears the bitmaps autoclear bit, as a writer that does not
  // know bitmaps must) and frees their clusters as leaks. Guest data is
  // never touched.
  add({"BitmapTableUnaligned", kBitmaps,
       [](const Layout& l) { PokeBe64(l.path, l.bm_dir, l.bm_table + 512); }, 2, {"bitmap"}, {}});
  add({"BitmapTablePastEof", kBitmaps,
       [](const Layout& l) { PokeBe64(l.path, l.bm_dir, 1ull << 40); }, 2, {"bitmap"}, {}});
  add({"BitmapTableEntryPointsAtL1", kBitmaps,
       [](const Layout& l) { PokeBe64(l.path, l.bm_table, l.l1); }, 2, {"overlap"}, {}});
  add({"BitmapTableEntryReservedBits", kBitmaps,
       [](const Layout& l) { PokeBe64(l.path, l.bm_table, PeekBe64(l.path, l.bm_table) | 2); }, 2,
       {"bitmap"}, {}});
  add({"BitmapDirectoryPastEof", kBitmaps,
       [](const Layout& l) { PokeBe64(l.path, l.bm_ext + 16, 1ull << 40); }, 2, {"past-eof"}, {}});
  add({"BitmapDirectoryAtRefcountBlock", kBitmaps,
       [](const Layout& l) { PokeBe64(l.path, l.bm_ext + 16, l.rb); }, 2, {"overlap"}, {}});
  add({"BitmapDirectoryNameSizeGarbage", kBitmaps,
       [](const Layout& l) { PokeBe16(l.path, l.bm_dir + 18, 0xffff); }, 2, {"bitmap"}, {}});
  // The refcount table's entries all cleared: every refcount is lost.
  add({"RefcountTableZeroed", kPlain,
       [](const Layout& l) { PokeBytes(l.path, l.rt, std::string(kCs, '\0')); }, 2,
       {"refcount-mismatch"}, {}});
  add({"UnalignedL1TableOffset", kPlain,
       [](const Layout& l) { PokeBe64(l.path, 40, l.l1 + 512); }, 1, {}, {}, false});
  return v;
}

INSTANTIATE_TEST_SUITE_P(Recipes, CheckSuite, ::testing::ValuesIn(Recipes()),
                         [](const ::testing::TestParamInfo<Recipe>& i) { return i.param.name; });

// Output format parity on clean and leaking images: the human text and the
// JSON document are byte-for-byte qemu-img's.
TEST(CheckOutput, MatchesQemuImg) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img is required";
  TempDir tmp;
  const std::string img = tmp.Path("a.qcow2");
  ASSERT_TRUE(test::Run("qemu-img create -q -f qcow2 " + Quote(img) + " 64M").ok());
  ASSERT_TRUE(test::Run("qemu-io -c 'write -P 1 0 1M' -c 'write -P 2 10M 64k' " + Quote(img)).ok());
  for (int round = 0; round < 2; ++round) {
    for (const char* mode : {"", "--output=json "}) {
      RunResult q = test::Run("cd " + Quote(tmp.path()) + " && qemu-img check " + mode + "a.qcow2");
      RunResult o = test::Run("cd " + Quote(tmp.path()) + " && " + Cli() + " check " + mode + "a.qcow2");
      EXPECT_EQ(o.exit_code, q.exit_code) << o.Describe() << q.Describe();
      if (round == 0) {
        EXPECT_EQ(o.out, q.out) << mode;
      }
    }
    // Round 2: a leak (refcount of a cluster past the data raised to 1).
    const uint64_t size = FileSize(img);
    TruncateFile(img, size + kCs);
    const uint64_t rb = PeekBe64(img, PeekBe64(img, 48)) & kMask;
    PokeBe16(img, rb + 2 * (size / kCs), 1);
  }
  RunResult q = test::Run("cd " + Quote(tmp.path()) + " && qemu-img check a.qcow2");
  RunResult o = test::Run("cd " + Quote(tmp.path()) + " && " + Cli() + " check a.qcow2");
  EXPECT_EQ(o.exit_code, 3);
  EXPECT_EQ(o.out, q.out);
  const std::string copy = tmp.Path("b.qcow2");
  ASSERT_TRUE(test::Run("cp " + Quote(img) + " " + Quote(copy)).ok());
  q = test::Run("cd " + Quote(tmp.path()) + " && qemu-img check -r leaks a.qcow2");
  o = test::Run("cd " + Quote(tmp.path()) + " && " + Cli() + " check -r leaks b.qcow2");
  EXPECT_EQ(o.exit_code, q.exit_code);
  EXPECT_EQ(o.out, q.out);
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
