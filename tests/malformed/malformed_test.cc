// Damaged images: each case pokes one corruption into an image qemu-img made
// and expects qcow2j to refuse it cleanly: exit 1, no crash or hang, and ONE
// line on stderr that names the offending field (docs/interop/qcow2.txt's name)
// or the kind of table entry.
#include <functional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

// Header field offsets (docs/interop/qcow2.txt).
constexpr uint64_t kMagicOff = 0;
constexpr uint64_t kVersionOff = 4;
constexpr uint64_t kBackingFileOffsetOff = 8;
constexpr uint64_t kBackingFileSizeOff = 16;
constexpr uint64_t kClusterBitsOff = 20;
constexpr uint64_t kSizeOff = 24;
constexpr uint64_t kCryptMethodOff = 32;
constexpr uint64_t kL1SizeOff = 36;
constexpr uint64_t kL1TableOffsetOff = 40;
constexpr uint64_t kRefcountTableOffsetOff = 48;
constexpr uint64_t kRefcountTableClustersOff = 56;
constexpr uint64_t kNbSnapshotsOff = 60;
constexpr uint64_t kSnapshotsOffsetOff = 64;
constexpr uint64_t kIncompatibleFeaturesOff = 72;
constexpr uint64_t kRefcountOrderOff = 96;
constexpr uint64_t kHeaderLengthOff = 100;
constexpr uint64_t kCompressionTypeOff = 104;

constexpr uint64_t kCopied = 1ull << 63;
constexpr uint64_t kCompressed = 1ull << 62;
constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;
constexpr uint64_t kFarAway = 1ull << 40;  // 1 TiB: past the end of every test image

// The image a case starts from (all 64 KiB clusters, 16 MiB).
enum class Base {
  kPlain,       // data in the first two clusters and at 1 MiB
  kSnapshot,    // kPlain plus internal snapshot s1 (its table is the file's last cluster)
  kCompressed,  // one compressed cluster at 0
  kExtendedL2,  // extended_l2=on, one 4 KiB write at 0 (subclusters 0 and 1)
};

// Which command must fail.
enum class Check {
  kInfo,  // the damage is found at open: `qcow2j info`
  kRead,  // the damage is in a table read on demand: `qcow2j convert -O raw`
  kWrite,  // the damage is in what a read-write open loads: `qcow2j io -c "write 0 4k"`
};

struct Case {
  Case(std::string n, Base b, Check c, std::function<void(const std::string&)> p,
       std::vector<std::string> e, std::string r = "")
      : name(std::move(n)), base(b), check(c), poke(std::move(p)), expect_any(std::move(e)),
        read_opts(std::move(r)) {}

  std::string name;
  Base base;
  Check check;
  std::function<void(const std::string& img)> poke;
  // stderr must contain at least one of these.
  std::vector<std::string> expect_any;
  // Extra convert options (e.g. a snapshot view) for kRead.
  std::string read_opts;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::string BaseName(Base b) {
  switch (b) {
    case Base::kPlain: return "Plain";
    case Base::kSnapshot: return "Snapshot";
    case Base::kCompressed: return "Compressed";
    case Base::kExtendedL2: return "ExtendedL2";
  }
  return "Unknown";
}
void PrintTo(Base b, std::ostream* os) { *os << BaseName(b); }

bool Must(const std::string& cmd) {
  RunResult r = Run(cmd);
  if (!r.ok()) {
    ADD_FAILURE() << "setup command failed: " << r.Describe();
    return false;
  }
  return true;
}

std::string MakeBase(const TempDir& dir, Base base) {
  std::string img = dir.Path("img.qcow2");
  std::string opts = base == Base::kExtendedL2 ? "-o extended_l2=on " : "";
  Must("qemu-img create -q -f qcow2 " + opts + Quote(img) + " 16M");
  std::string io;
  switch (base) {
    case Base::kPlain:
    case Base::kSnapshot:
      io = "-c 'write -P 0x11 0 128k' -c 'write -P 0x12 1M 64k'";
      break;
    case Base::kCompressed:
      io = "-c 'write -c -P 0x11 0 64k'";
      break;
    case Base::kExtendedL2:
      io = "-c 'write -P 0x11 0 4k'";
      break;
  }
  Must("qemu-io -f qcow2 " + io + " " + Quote(img));
  if (base == Base::kSnapshot) Must("qemu-img snapshot -c s1 " + Quote(img));
  return img;
}

uint64_t L1Offset(const std::string& img) { return PeekBe64(img, kL1TableOffsetOff); }
uint64_t L2Offset(const std::string& img) {
  return PeekBe64(img, L1Offset(img)) & kOffsetMask;
}
uint64_t SnapshotTable(const std::string& img) { return PeekBe64(img, kSnapshotsOffsetOff); }

// Header field pokes.
std::function<void(const std::string&)> Set32(uint64_t off, uint32_t v) {
  return [=](const std::string& img) { PokeBe32(img, off, v); };
}
std::function<void(const std::string&)> Set64(uint64_t off, uint64_t v) {
  return [=](const std::string& img) { PokeBe64(img, off, v); };
}
std::function<void(const std::string&)> Add64(uint64_t off, uint64_t delta) {
  return [=](const std::string& img) { PokeBe64(img, off, PeekBe64(img, off) + delta); };
}

// Renumbers the feature-name table's entry for incompatible bit `from` to
// `to`, so that an unknown bit has a name the error can quote.
void RenameFeatureBit(const std::string& img, uint8_t from, uint8_t to) {
  uint64_t off = PeekBe32(img, kHeaderLengthOff);
  for (int i = 0; i < 16; i++) {
    uint32_t type = PeekBe32(img, off), len = PeekBe32(img, off + 4);
    if (type == 0) break;
    if (type == 0x6803f857) {
      for (uint64_t e = off + 8; e + 48 <= off + 8 + len; e += 48) {
        if (PeekBe16(img, e) == from) {  // type 0 (incompatible), bit `from`
          PokeBe8(img, e + 1, to);
          return;
        }
      }
    }
    off += 8 + ((len + 7) & ~7u);
  }
  ADD_FAILURE() << "no feature-name table entry for incompatible bit " << int(from);
}

std::vector<Case> Cases() {
  using B = Base;
  using C = Check;
  using S = const std::string&;
  std::vector<Case> v = {
      // --- the header ---
      {"BadMagic", B::kPlain, C::kInfo, Set32(kMagicOff, 0x12345678), {"magic"}},
      {"Version1", B::kPlain, C::kInfo, Set32(kVersionOff, 1), {"version"}},
      {"Version4", B::kPlain, C::kInfo, Set32(kVersionOff, 4), {"version"}},
      {"ClusterBits8", B::kPlain, C::kInfo, Set32(kClusterBitsOff, 8), {"cluster_bits"}},
      {"ClusterBits22", B::kPlain, C::kInfo, Set32(kClusterBitsOff, 22), {"cluster_bits"}},
      {"SizeHuge", B::kPlain, C::kInfo, Set64(kSizeOff, 1ull << 62), {"size"}},
      // 16 GiB needs 32 L1 entries; the table has 1.
      {"L1SizeTooSmallForSize", B::kPlain, C::kInfo, Set64(kSizeOff, 16ull << 30), {"l1_size"}},
      {"L1SizeHuge", B::kPlain, C::kInfo, Set32(kL1SizeOff, 0x08000000), {"l1_size"}},
      // 8 MiB of L1 table (allowed size) that runs past the end of the file.
      {"L1TablePastEof", B::kPlain, C::kInfo, Set32(kL1SizeOff, 0x100000),
       {"l1_size", "l1_table_offset"}},
      {"L1TableOffsetUnaligned", B::kPlain, C::kInfo, Add64(kL1TableOffsetOff, 8),
       {"l1_table_offset"}},
      {"L1TableOffsetOutsideFile", B::kPlain, C::kInfo, Set64(kL1TableOffsetOff, kFarAway),
       {"l1_table_offset"}},
      {"RefcountTableOffsetUnaligned", B::kPlain, C::kInfo, Add64(kRefcountTableOffsetOff, 512),
       {"refcount_table_offset"}},
      {"RefcountTableOffsetOutsideFile", B::kPlain, C::kInfo,
       Set64(kRefcountTableOffsetOff, kFarAway), {"refcount_table_offset"}},
      {"RefcountTableClustersZero", B::kPlain, C::kInfo, Set32(kRefcountTableClustersOff, 0),
       {"refcount_table_clusters"}},
      {"RefcountTableClustersHuge", B::kPlain, C::kInfo,
       Set32(kRefcountTableClustersOff, 0x10000), {"refcount_table_clusters"}},
      {"RefcountTablePastEof", B::kPlain, C::kInfo, Set32(kRefcountTableClustersOff, 100),
       {"refcount_table"}},
      // A refcount block past the end of the file was never written; appends
      // would follow it to 1 TiB. Found by fuzz_open_read.
      {"RefcountBlockPastEof", B::kPlain, C::kWrite,
       [](S img) { PokeBe64(img, PeekBe64(img, kRefcountTableOffsetOff) + 8, kFarAway); },
       {"refcount table entry 1"}},
      {"RefcountOrder7", B::kPlain, C::kInfo, Set32(kRefcountOrderOff, 7), {"refcount_order"}},
      {"NbSnapshotsHuge", B::kPlain, C::kInfo, Set32(kNbSnapshotsOff, 0x100000),
       {"nb_snapshots"}},
      {"SnapshotsOffsetOutsideFile", B::kSnapshot, C::kInfo,
       Set64(kSnapshotsOffsetOff, kFarAway), {"snapshots_offset"}},
      {"SnapshotsOffsetUnaligned", B::kSnapshot, C::kInfo, Add64(kSnapshotsOffsetOff, 8),
       {"snapshots_offset"}},
      {"HeaderLengthTooSmall", B::kPlain, C::kInfo, Set32(kHeaderLengthOff, 96),
       {"header_length"}},
      {"HeaderLengthUnaligned", B::kPlain, C::kInfo, Set32(kHeaderLengthOff, 106),
       {"header_length"}},
      {"HeaderLengthPastCluster", B::kPlain, C::kInfo, Set32(kHeaderLengthOff, 0x20000),
       {"header_length"}},
      {"BackingFileSizeTooLong", B::kPlain, C::kInfo,
       [](S img) {
         PokeBe64(img, kBackingFileOffsetOff, 0x1000);
         PokeBe32(img, kBackingFileSizeOff, 2000);
       },
       {"backing_file_size"}},
      {"BackingFileOffsetOutsideFirstCluster", B::kPlain, C::kInfo,
       [](S img) {
         PokeBe64(img, kBackingFileOffsetOff, 0x30000);
         PokeBe32(img, kBackingFileSizeOff, 8);
       },
       {"backing_file_offset"}},
      {"ExtensionLengthPastCluster", B::kPlain, C::kInfo,
       [](S img) { PokeBe32(img, PeekBe32(img, kHeaderLengthOff) + 4, 0x20000); },
       {"extension"}},
      {"UnknownIncompatibleBit", B::kPlain, C::kInfo,
       Set64(kIncompatibleFeaturesOff, 1ull << 7), {"bit 7"}},
      // The feature-name table names bit 9 "extended L2 entries": the error quotes it.
      {"NamedUnknownIncompatibleBit", B::kPlain, C::kInfo,
       [](S img) {
         RenameFeatureBit(img, 4, 9);
         PokeBe64(img, kIncompatibleFeaturesOff, 1ull << 9);
       },
       {"extended L2"}},
      {"CryptMethodAes", B::kPlain, C::kInfo, Set32(kCryptMethodOff, 1), {"crypt_method"}},
      {"CompressionTypeWithoutFeatureBit", B::kPlain, C::kInfo,
       [](S img) { PokeBe8(img, kCompressionTypeOff, 1); }, {"compression_type"}},
      {"CompressionTypeUnknown", B::kPlain, C::kInfo,
       [](S img) {
         PokeBe8(img, kCompressionTypeOff, 2);
         PokeBe64(img, kIncompatibleFeaturesOff, 1ull << 3);
       },
       {"compression_type"}},
      // --- the snapshot table ---
      {"SnapshotExtraDataSizeHuge", B::kSnapshot, C::kInfo,
       [](S img) { PokeBe32(img, SnapshotTable(img) + 36, 0xfffffff0u); }, {"snapshot"}},
      {"SnapshotTableTruncated", B::kSnapshot, C::kInfo,
       [](S img) { TruncateFile(img, SnapshotTable(img) + 20); }, {"snapshot"}},
      {"SnapshotNamePastEof", B::kSnapshot, C::kInfo,
       [](S img) { PokeBe16(img, SnapshotTable(img) + 14, 0xffff); }, {"snapshot"}},
      {"SnapshotL1TableOutsideFile", B::kSnapshot, C::kRead,
       [](S img) { PokeBe64(img, SnapshotTable(img), kFarAway); }, {"snapshot"},
       "-l snapshot.name=s1"},
      // --- L1 and L2 entries (found when the range is read) ---
      {"L1EntryPastEof", B::kPlain, C::kRead,
       [](S img) { PokeBe64(img, L1Offset(img), kCopied | kFarAway); }, {"L1 entry"}},
      {"L1EntryUnaligned", B::kPlain, C::kRead,
       [](S img) { PokeBe64(img, L1Offset(img), kCopied | (L2Offset(img) + 512)); },
       {"L1 entry"}},
      {"L2EntryPastEof", B::kPlain, C::kRead,
       [](S img) { PokeBe64(img, L2Offset(img), kCopied | kFarAway); }, {"L2 entry"}},
      {"L2EntryUnaligned", B::kPlain, C::kRead,
       [](S img) {
         uint64_t l2 = L2Offset(img);
         PokeBe64(img, l2, PeekBe64(img, l2) + 512);
       },
       {"L2 entry"}},
      {"L2EntryReservedBits", B::kPlain, C::kRead,
       [](S img) {
         uint64_t l2 = L2Offset(img);
         PokeBe64(img, l2, PeekBe64(img, l2) | 0x1fe);
       },
       {"L2 entry"}},
      {"CompressedDescriptorPastEof", B::kCompressed, C::kRead,
       [](S img) { PokeBe64(img, L2Offset(img), kCompressed | kFarAway); }, {"compressed"}},
      // Subclusters 0 and 1 are allocated; marking them zero as well is invalid.
      {"ExtendedL2AllocAndZeroOverlap", B::kExtendedL2, C::kRead,
       [](S img) { PokeBe64(img, L2Offset(img) + 8, 0x0000000300000003ull); }, {"L2 entry"}},
  };
  return v;
}

// What every refusal must look like.
void ExpectCleanRefusal(const RunResult& r, const std::vector<std::string>& expect_any) {
  EXPECT_NE(r.exit_code, 124) << "timed out: " << r.Describe();
  EXPECT_FALSE(r.crashed()) << "crashed: " << r.Describe();
  EXPECT_EQ(r.exit_code, 1) << r.Describe();
  EXPECT_EQ(r.err.find("Sanitizer"), std::string::npos) << r.Describe();
  EXPECT_EQ(r.err.find("runtime error"), std::string::npos) << r.Describe();
  std::string line = r.err;
  if (!line.empty() && line.back() == '\n') line.pop_back();
  EXPECT_FALSE(line.empty()) << "no error message: " << r.Describe();
  EXPECT_EQ(line.find('\n'), std::string::npos) << "stderr must be one line: " << r.Describe();
  bool named = false;
  for (const std::string& s : expect_any) named = named || line.find(s) != std::string::npos;
  EXPECT_TRUE(named) << "stderr does not name " << ::testing::PrintToString(expect_any) << ": "
                     << line;
}

std::string InfoCmd(const std::string& img) {
  return "timeout 20 " + Cli() + " info -f qcow2 --output=json " + Quote(img);
}

std::string ReadCmd(const TempDir& dir, const std::string& img, const std::string& opts) {
  return "timeout 20 " + Cli() + " convert -f qcow2 -O raw " + opts + " " + Quote(img) + " " +
         Quote(dir.Path("out.raw"));
}

std::string WriteCmd(const std::string& img) {
  return "timeout 20 " + Cli() + " io -f qcow2 -c 'write -P 0x5a 0 4k' " + Quote(img);
}

class MalformedTest : public ::testing::TestWithParam<Case> {};

TEST_P(MalformedTest, RefusedWithOneLineNamingTheField) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img is required (apt-get install qemu-utils)";
  ASSERT_TRUE(HaveProgram("timeout")) << "timeout (coreutils) is required";
  const Case& c = GetParam();
  TempDir dir;
  std::string img = MakeBase(dir, c.base);
  ASSERT_FALSE(HasFailure()) << "image setup failed";
  std::string cmd = c.check == Check::kInfo   ? InfoCmd(img)
                    : c.check == Check::kWrite ? WriteCmd(img)
                                               : ReadCmd(dir, img, c.read_opts);
  // The refusal must come from the damage: the same command succeeds before it.
  RunResult before = test::Run(cmd);
  ASSERT_TRUE(before.ok()) << "the undamaged image is refused: " << before.Describe();
  c.poke(img);
  ASSERT_FALSE(HasFailure()) << "poke failed";
  ExpectCleanRefusal(test::Run(cmd), c.expect_any);
}

INSTANTIATE_TEST_SUITE_P(Corruptions, MalformedTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.name;
                         });

// The refusals above must come from the damage: the undamaged images read fine.
class MalformedBaseTest : public ::testing::TestWithParam<Base> {};

TEST_P(MalformedBaseTest, UndamagedBaseIsReadable) {
  ASSERT_TRUE(HaveProgram("qemu-img")) << "qemu-img is required (apt-get install qemu-utils)";
  TempDir dir;
  std::string img = MakeBase(dir, GetParam());
  ASSERT_FALSE(HasFailure()) << "image setup failed";
  RunResult info = test::Run(InfoCmd(img));
  EXPECT_TRUE(info.ok()) << info.Describe();
  std::string opts = GetParam() == Base::kSnapshot ? "-l snapshot.name=s1" : "";
  RunResult read = test::Run(ReadCmd(dir, img, opts));
  ASSERT_TRUE(read.ok()) << read.Describe();
  std::string ref = dir.Path("ref.raw");
  ASSERT_TRUE(Must("qemu-img convert -f qcow2 -O raw " + opts + " " + Quote(img) + " " +
                   Quote(ref)));
  EXPECT_EQ(CompareFiles(dir.Path("out.raw"), ref), "");
}

INSTANTIATE_TEST_SUITE_P(Bases, MalformedBaseTest,
                         ::testing::Values(Base::kPlain, Base::kSnapshot, Base::kCompressed,
                                           Base::kExtendedL2),
                         [](const ::testing::TestParamInfo<Base>& info) {
                           return BaseName(info.param);
                         });

}  // namespace
}  // namespace test
}  // namespace qcow2j
