// `qcow2j commit`, `rebase`, `amend` and `measure` against qemu-img on the
// same inputs. Images are made by qemu-img/qemu-io; what the guest reads is
// taken by qemu-img convert -O raw before and after, and qemu-img check must
// be clean on every image we wrote. measure's output must equal qemu-img
// measure's, byte for byte, across cluster sizes, sizes and sparse sources.
#include <gtest/gtest.h>

#include <cctype>
#include <string>
#include <vector>

#include "util/test_util.h"

namespace qcow2j {
namespace test {
namespace {

RunResult Ours(const std::string& args) { return test::Run(Quote(Cli()) + " " + args); }

void Must(const RunResult& r) { ASSERT_EQ(r.exit_code, 0) << r.Describe(); }

void ExpectClean(const std::string& img) {
  RunResult r = test::Run("qemu-img check " + Quote(img));
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
}

// The guest view of `img` (its whole chain), as qemu-img reads it.
std::string GuestBytes(const TempDir& dir, const std::string& img) {
  const std::string out = dir.Path("guest.raw");
  RunResult r = test::Run("qemu-img convert -U -O raw " + Quote(img) + " " + Quote(out));
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  return ReadFile(out);
}

// A field of the JSON document `cmd` prints ("<absent>" when missing).
std::string JsonField(const std::string& cmd, const std::string& dotted) {
  RunResult r = test::Run(cmd);
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  auto j = ParseJson(r.out);
  if (!j) return "<bad json>";
  const Json* v = j->At(dotted);
  if (!v) return "<absent>";
  return v->type == Json::Type::kString ? v->str : v->ToString();
}

std::string Info(const std::string& img, const std::string& dotted) {
  return JsonField("qemu-img info -U --output=json " + Quote(img), dotted);
}

// base (4 MiB, pattern 1 at [0,1M), 5 at [3M,3.5M)) <- top (pattern 2 over
// [512k,1.5M), zeros at 3M, a small unaligned write), with `cluster`.
void MakeChain(const TempDir& d, const std::string& cluster = "65536") {
  Must(test::Run("qemu-img create -q -f qcow2 -o cluster_size=" + cluster + " " +
           Quote(d.Path("base.qcow2")) + " 4M"));
  Must(test::Run("qemu-io -c 'write -P 1 0 1M' -c 'write -P 5 3M 512k' " + Quote(d.Path("base.qcow2"))));
  Must(test::Run("qemu-img create -q -f qcow2 -o cluster_size=" + cluster + " -b base.qcow2 -F qcow2 " +
           Quote(d.Path("top.qcow2"))));
  Must(test::Run("qemu-io -c 'write -P 2 512k 1M' -c 'write -z 3M 64k' -c 'write -P 7 2000000 3000' " +
           Quote(d.Path("top.qcow2"))));
}

// ---------------------------------------------------------------- commit

class CommitTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CommitTest, BaseGetsTheTopsDataAndTheTopEmpties) {
  TempDir d;
  MakeChain(d, GetParam());
  const std::string top = d.Path("top.qcow2"), base = d.Path("base.qcow2");
  const std::string expect = GuestBytes(d, top);
  WriteFile(d.Path("expect.raw"), expect);
  RunResult r = Ours("commit " + Quote(top));
  Must(r);
  EXPECT_EQ(r.out, "Image committed.\n");
  RunResult cmp = test::Run("qemu-img compare -U " + Quote(base) + " " + Quote(d.Path("expect.raw")));
  EXPECT_EQ(cmp.exit_code, 0) << cmp.Describe();
  ExpectClean(base);
  ExpectClean(top);
  // Emptied: nothing of the top is allocated any more, and it still reads
  // the same through the base.
  RunResult map = test::Run("qemu-img map -U --output=json " + Quote(top));
  Must(map);
  EXPECT_EQ(map.out.find("\"depth\": 0, \"present\": true"), std::string::npos) << map.out;
  EXPECT_EQ(GuestBytes(d, top), expect);
}

INSTANTIATE_TEST_SUITE_P(ClusterSizes, CommitTest, ::testing::Values("512", "65536", "2097152"));

TEST(Commit, DropKeepsTheTop) {
  TempDir d;
  MakeChain(d);
  const std::string top = d.Path("top.qcow2");
  RunResult before = test::Run("qemu-img map -U --output=json " + Quote(top));
  Must(Ours("commit -d -q " + Quote(top)));
  RunResult after = test::Run("qemu-img map -U --output=json " + Quote(top));
  // The top's own clusters stay (offsets are the same: nothing moved).
  EXPECT_EQ(before.out, after.out);
  ExpectClean(top);
  ExpectClean(d.Path("base.qcow2"));
}

TEST(Commit, ThroughAnIntermediateToADeeperBase) {
  TempDir d;
  MakeChain(d);
  // base <- top(now mid) <- upper: commit upper into base with -b.
  Must(test::Run("mv " + Quote(d.Path("top.qcow2")) + " " + Quote(d.Path("mid.qcow2"))));
  Must(test::Run("qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 " + Quote(d.Path("upper.qcow2"))));
  Must(test::Run("qemu-io -c 'write -P 9 1M 128k' " + Quote(d.Path("upper.qcow2"))));
  const std::string expect = GuestBytes(d, d.Path("upper.qcow2"));
  WriteFile(d.Path("expect.raw"), expect);
  Must(Ours("commit -b base.qcow2 " + Quote(d.Path("upper.qcow2"))));
  RunResult cmp = test::Run("qemu-img compare -U " + Quote(d.Path("base.qcow2")) + " " +
                      Quote(d.Path("expect.raw")));
  EXPECT_EQ(cmp.exit_code, 0) << cmp.Describe();
  ExpectClean(d.Path("base.qcow2"));
  // -b implies -d: the top still reads what it did.
  EXPECT_EQ(GuestBytes(d, d.Path("upper.qcow2")), expect);
}

TEST(Commit, GrowsASmallerBase) {
  TempDir d;
  MakeChain(d);
  Must(test::Run("qemu-img resize -q " + Quote(d.Path("top.qcow2")) + " 6M"));
  Must(test::Run("qemu-io -c 'write -P 3 5M 64k' " + Quote(d.Path("top.qcow2"))));
  const std::string expect = GuestBytes(d, d.Path("top.qcow2"));
  Must(Ours("commit -q " + Quote(d.Path("top.qcow2"))));
  EXPECT_EQ(GuestBytes(d, d.Path("base.qcow2")), expect);
  ExpectClean(d.Path("base.qcow2"));
}

TEST(Commit, ProgressIsQemusLine) {
  TempDir d;
  MakeChain(d);
  RunResult r = Ours("commit -p " + Quote(d.Path("top.qcow2")));
  Must(r);
  EXPECT_EQ(r.out.rfind("    (0.00/100%)\r", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("    (100.00/100%)\r\nImage committed.\n"), std::string::npos) << r.out;
}

TEST(Commit, BadInputExitCodes) {
  TempDir d;
  MakeChain(d);
  RunResult r = Ours("commit " + Quote(d.Path("base.qcow2")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Image does not have a backing file"), std::string::npos) << r.err;
  r = Ours("commit -b nothere.qcow2 " + Quote(d.Path("top.qcow2")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Did not find 'nothere.qcow2' in the backing chain"), std::string::npos)
      << r.err;
  EXPECT_EQ(Ours("commit " + Quote(d.Path("missing.qcow2"))).exit_code, 1);
  EXPECT_EQ(Ours("commit").exit_code, 1);
  EXPECT_EQ(Ours("commit -t bogus " + Quote(d.Path("top.qcow2"))).exit_code, 1);
}

// ---------------------------------------------------------------- rebase

// A third image to rebase onto: different data where the old base has some.
void MakeOther(const TempDir& d) {
  Must(test::Run("qemu-img create -q -f qcow2 " + Quote(d.Path("other.qcow2")) + " 3M"));
  Must(test::Run("qemu-io -c 'write -P 9 256k 1M' -c 'write -P 1 0 64k' " + Quote(d.Path("other.qcow2"))));
}

TEST(Rebase, SafeModeKeepsTheGuestViewLikeQemu) {
  for (const std::string target : {"other.qcow2", ""}) {
    TempDir d;
    MakeChain(d, "4096");
    MakeOther(d);
    const std::string top = d.Path("top.qcow2");
    const std::string expect = GuestBytes(d, top);
    const std::string f = target.empty() ? "" : " -F qcow2";
    RunResult r = Ours("rebase -b " + Quote(target) + f + " " + Quote(top));
    Must(r);
    EXPECT_EQ(r.out, "");
    EXPECT_EQ(Info(top, "backing-filename"), target.empty() ? "<absent>" : target);
    EXPECT_EQ(GuestBytes(d, top), expect) << "rebase onto '" << target << "'";
    ExpectClean(top);
    // qemu-img rebase on a copy of the same chain reads the same.
    TempDir q;
    MakeChain(q, "4096");
    MakeOther(q);
    Must(test::Run("qemu-img rebase -b " + Quote(target) + f + " " + Quote(q.Path("top.qcow2"))));
    EXPECT_EQ(GuestBytes(q, q.Path("top.qcow2")), expect);
  }
}

TEST(Rebase, UnsafeOnlyRenames) {
  TempDir d;
  MakeChain(d);
  MakeOther(d);
  const std::string top = d.Path("top.qcow2");
  Must(test::Run("cp " + Quote(d.Path("base.qcow2")) + " " + Quote(d.Path("renamed.qcow2"))));
  const std::string expect = GuestBytes(d, top);
  Must(Ours("rebase -u -b renamed.qcow2 -F qcow2 " + Quote(top)));
  EXPECT_EQ(Info(top, "backing-filename"), "renamed.qcow2");
  EXPECT_EQ(Info(top, "backing-filename-format"), "qcow2");
  EXPECT_EQ(GuestBytes(d, top), expect);
  ExpectClean(top);
  // Unsafe onto different data: the guest view changes, as with qemu-img.
  Must(Ours("rebase -u -b other.qcow2 -F qcow2 " + Quote(top)));
  EXPECT_NE(GuestBytes(d, top), expect);
  ExpectClean(top);
}

TEST(Rebase, ProgressAndBadInput) {
  TempDir d;
  MakeChain(d);
  MakeOther(d);
  const std::string top = d.Path("top.qcow2");
  RunResult r = Ours("rebase -p -b other.qcow2 -F qcow2 " + Quote(top));
  Must(r);
  EXPECT_EQ(r.out.rfind("    (0.00/100%)\r", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("(100.00/100%)\r\n"), std::string::npos) << r.out;

  r = Ours("rebase " + Quote(top));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Must specify backing file (-b) or use unsafe mode (-u)"), std::string::npos);
  r = Ours("rebase -b base.qcow2 " + Quote(top));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("backing format must be specified"), std::string::npos) << r.err;
  EXPECT_EQ(Info(top, "backing-filename"), "other.qcow2");  // unchanged
  r = Ours("rebase -b nothere.qcow2 -F qcow2 " + Quote(top));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Could not open new backing file"), std::string::npos) << r.err;
  EXPECT_EQ(Ours("rebase -u -b x -F qcow2").exit_code, 1);
  ExpectClean(top);
}

// ---------------------------------------------------------------- amend

struct AmendCase {
  std::string create_opts;
  std::string amend;
  std::string field;     // qemu-img info JSON path that must change
  std::string expected;  // its value afterwards
};

class AmendTest : public ::testing::TestWithParam<AmendCase> {};

TEST_P(AmendTest, QemuSeesTheChange) {
  const AmendCase& c = GetParam();
  TempDir d;
  const std::string img = d.Path("a.qcow2");
  Must(test::Run("qemu-img create -q -f qcow2 -o " + c.create_opts + " " + Quote(img) + " 8M"));
  Must(test::Run("qemu-io -c 'write -P 3 0 1M' -c 'write -z 2M 1M' -c 'write -P 4 5M 70k' " + Quote(img)));
  const std::string expect = GuestBytes(d, img);
  RunResult r = Ours("amend -o " + c.amend + " " + Quote(img));
  Must(r);
  EXPECT_EQ(Info(img, c.field), c.expected);
  EXPECT_EQ(GuestBytes(d, img), expect);
  ExpectClean(img);
}

INSTANTIATE_TEST_SUITE_P(
    Options, AmendTest,
    ::testing::Values(
        AmendCase{"compat=1.1", "compat=0.10", "format-specific.data.compat", "0.10"},
        AmendCase{"compat=1.1,cluster_size=4k", "compat=v2", "format-specific.data.compat", "0.10"},
        AmendCase{"compat=0.10", "compat=1.1", "format-specific.data.compat", "1.1"},
        AmendCase{"compat=1.1", "lazy_refcounts=on", "format-specific.data.lazy-refcounts", "true"},
        AmendCase{"compat=1.1,lazy_refcounts=on", "lazy_refcounts=off",
                  "format-specific.data.lazy-refcounts", "false"},
        AmendCase{"compat=0.10", "compat=1.1,lazy_refcounts=on",
                  "format-specific.data.lazy-refcounts", "true"},
        AmendCase{"compat=1.1", "refcount_bits=16", "format-specific.data.refcount-bits", "16"},
        AmendCase{"compat=1.1", "refcount_bits=1", "format-specific.data.refcount-bits", "1"},
        AmendCase{"compat=1.1", "refcount_bits=8", "format-specific.data.refcount-bits", "8"},
        AmendCase{"compat=1.1,cluster_size=4k", "refcount_bits=64",
                  "format-specific.data.refcount-bits", "64"},
        AmendCase{"compat=0.10", "compat=1.1,refcount_bits=4", "format-specific.data.refcount-bits",
                  "4"},
        AmendCase{"compat=1.1,refcount_bits=2", "compat=0.10,refcount_bits=16",
                  "format-specific.data.compat", "0.10"}),
    [](const ::testing::TestParamInfo<AmendCase>& p) {
      std::string name = std::to_string(p.index) + "_" + p.param.amend;
      for (char& ch : name)
        if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
      return name;
    });

TEST(Amend, DowngradeExpandsZeroClustersOverABackingFile) {
  TempDir d;
  MakeChain(d);
  const std::string top = d.Path("top.qcow2");
  Must(test::Run("qemu-io -c 'write -z 1M 1M' " + Quote(top)));
  const std::string expect = GuestBytes(d, top);
  RunResult r = Ours("amend -p -o compat=0.10 " + Quote(top));
  Must(r);
  EXPECT_EQ(r.out.rfind("    (0.00/100%)\r", 0), 0u) << r.out;
  EXPECT_EQ(Info(top, "format-specific.data.compat"), "0.10");
  EXPECT_EQ(GuestBytes(d, top), expect);
  ExpectClean(top);
}

// A refcount-width change keeps every cluster's count: shared clusters of a
// snapshot and host clusters holding several compressed clusters too. QEMU
// reads the result (active image and snapshot) and finds it clean; a width
// too narrow for a count is refused with QEMU's message, image untouched.
TEST(Amend, RefcountWidthChangeKeepsEveryCount) {
  TempDir d;
  const std::string img = d.Path("a.qcow2");
  Must(test::Run("qemu-img create -q -f qcow2 " + Quote(img) + " 16M"));
  Must(test::Run("qemu-io -c 'write -P 3 0 1M' -c 'write -c -P 5 2M 256k' " + Quote(img)));
  Must(test::Run("qemu-img snapshot -c s1 " + Quote(img)));
  Must(test::Run("qemu-io -c 'write -P 4 512k 64k' " + Quote(img)));
  const std::string active = GuestBytes(d, img);
  const std::string io_active = "qemu-io -r -c 'read -P 3 0 512k' -c 'read -P 4 512k 64k' "
                                "-c 'read -P 3 576k 448k' -c 'read -P 5 2M 256k' "
                                "-c 'read -P 0 4M 12M' ";
  Must(test::Run("qemu-img check " + Quote(img)));
  auto snapshot_bytes = [&] {
    const std::string out = d.Path("s1.raw");
    Must(test::Run("qemu-img convert -U -l snapshot.name=s1 -O raw " + Quote(img) + " " + Quote(out)));
    return ReadFile(out);
  };
  const std::string s1 = snapshot_bytes();
  ASSERT_EQ(s1.substr(0, 1 << 20), std::string(1 << 20, '\3'));
  // Four compressed clusters share a host cluster, and s1 shares them all:
  // refcounts of up to 8.
  for (const char* bits : {"4", "64", "8", "16"}) {
    SCOPED_TRACE(std::string("refcount_bits=") + bits);
    Must(Ours("amend -o refcount_bits=" + std::string(bits) + " " + Quote(img)));
    EXPECT_EQ(Info(img, "format-specific.data.refcount-bits"), bits);
    ExpectClean(img);
    RunResult r = test::Run(io_active + Quote(img));
    Must(r);
    EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.out;
    EXPECT_EQ(snapshot_bytes(), s1);
    EXPECT_EQ(GuestBytes(d, img), active);
  }
  // Two bits cannot count that; QEMU refuses too.
  RunResult r = Ours("amend -o refcount_bits=2 " + Quote(img));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Cannot decrease refcount entry width to 2 bits: Cluster at offset 0x"),
            std::string::npos) << r.err;
  EXPECT_NE(r.err.find("has a refcount of 8"), std::string::npos) << r.err;
  EXPECT_EQ(test::Run("qemu-img amend -o refcount_bits=2 " + Quote(img)).exit_code, 1);
  EXPECT_EQ(Info(img, "format-specific.data.refcount-bits"), "16");
  ExpectClean(img);
  // Our engine writes on with the new width (journal session and all).
  Must(Ours("amend -o refcount_bits=8 " + Quote(img)));
  Must(Ours("io -f qcow2 -c 'write -P 7 8M 1M' " + Quote(img)));
  ExpectClean(img);
  r = test::Run("qemu-io -r -c 'read -P 7 8M 1M' " + Quote(img));
  Must(r);
  EXPECT_EQ(r.out.find("Pattern verification failed"), std::string::npos) << r.out;
}

TEST(Amend, BackingFileIsRewritten) {
  TempDir d;
  MakeChain(d);
  const std::string top = d.Path("top.qcow2");
  Must(test::Run("cp " + Quote(d.Path("base.qcow2")) + " " + Quote(d.Path("copy.qcow2"))));
  Must(Ours("amend -o backing_file=copy.qcow2,backing_fmt=qcow2 " + Quote(top)));
  EXPECT_EQ(Info(top, "backing-filename"), "copy.qcow2");
  EXPECT_EQ(Info(top, "backing-filename-format"), "qcow2");
  ExpectClean(top);
}

TEST(Amend, RefusalsUseQemusMessages) {
  TempDir d;
  const std::string img = d.Path("a.qcow2");
  Must(test::Run("qemu-img create -q -f qcow2 " + Quote(img) + " 8M"));
  struct Refusal {
    std::string opts, message;
  };
  const std::vector<Refusal> refusals = {
      {"cluster_size=4k", "Invalid parameter 'cluster_size'\nThis option is only supported for image creation"},
      {"foo=bar", "Invalid parameter 'foo'"},
      {"compat=2", "Unknown compatibility level 2"},
      {"refcount_bits=3", "Refcount width must be a power of two and may not exceed 64 bits"},
      {"compat=0.10,refcount_bits=8", "Refcount widths other than 16 bits require compatibility level 1.1"},
      {"lazy_refcounts=on,compat=0.10", "Lazy refcounts only supported with compatibility level 1.1"},
      {"lazy_refcounts=maybe", "Parameter 'lazy_refcounts' expects 'on' or 'off'"},
  };
  for (const Refusal& x : refusals) {
    RunResult r = Ours("amend -o " + Quote(x.opts) + " " + Quote(img));
    EXPECT_EQ(r.exit_code, 1) << x.opts;
    EXPECT_NE(r.err.find(x.message), std::string::npos) << x.opts << ": " << r.err;
  }
  // qemu-img agrees that each of those is refused.
  for (const Refusal& x : refusals) {
    EXPECT_EQ(test::Run("qemu-img amend -o " + Quote(x.opts) + " " + Quote(img)).exit_code, 1) << x.opts;
  }
  EXPECT_EQ(Info(img, "format-specific.data.compat"), "1.1");
  ExpectClean(img);
  RunResult r = Ours("amend " + Quote(img));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Must specify options (-o)"), std::string::npos);
  Must(test::Run("qemu-img create -q -f raw " + Quote(d.Path("r.raw")) + " 1M"));
  r = Ours("amend -o compat=1.1 " + Quote(d.Path("r.raw")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Format driver 'raw' does not support option amendment"), std::string::npos);
  // Downgrades v2 cannot express are refused and change nothing.
  Must(test::Run("qemu-img create -q -f qcow2 -o extended_l2=on " + Quote(d.Path("e.qcow2")) + " 8M"));
  r = Ours("amend -o compat=0.10 " + Quote(d.Path("e.qcow2")));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Cannot downgrade an image with incompatible features 0x10 set"),
            std::string::npos) << r.err;
  EXPECT_EQ(Info(d.Path("e.qcow2"), "format-specific.data.compat"), "1.1");
}

// A field of our own info JSON ("<absent>" when missing).
std::string OurInfo(const std::string& img, const std::string& dotted) {
  return JsonField(Quote(Cli()) + " info --output=json " + Quote(img), dotted);
}

TEST(Amend, JournalOnAndOff) {
  test::TempDir d;
  const std::string img = d.Path("q.qcow2");
  Must(test::Run("qemu-img create -q -f qcow2 " + Quote(img) + " 64M"));
  EXPECT_EQ(OurInfo(img, "format-specific.data.journal"), "<absent>");
  Must(Ours("amend -o journal=on " + Quote(img)));
  EXPECT_EQ(OurInfo(img, "format-specific.data.journal"), "true");
  // The journal is used from the next read-write open on, and a clean close
  // leaves plain qcow2 again.
  Must(Ours("io -c 'write -P 0x3c 0 64k' -c flush " + Quote(img)));
  Must(test::Run("qemu-img check " + Quote(img)));
  Must(Ours("amend -o journal=on,lazy_refcounts=on " + Quote(img)));
  EXPECT_EQ(OurInfo(img, "format-specific.data.journal-refcounts"), "dirty");
  Must(Ours("amend -o journal=off " + Quote(img)));
  EXPECT_EQ(OurInfo(img, "format-specific.data.journal"), "<absent>");
  RunResult r = Ours("amend -o journal=maybe " + Quote(img));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("Parameter 'journal' expects 'on' or 'off'"), std::string::npos) << r.err;
  r = Ours("amend -o journal=on,compat=0.10 " + Quote(img));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("journal=on requires compat=1.1"), std::string::npos) << r.err;
  // A downgrade drops an idle journal (v2 cannot lock QEMU out).
  Must(Ours("amend -o journal=on " + Quote(img)));
  Must(Ours("amend -o compat=0.10 " + Quote(img)));
  EXPECT_EQ(Info(img, "format-specific.data.compat"), "0.10");
  Must(test::Run("qemu-io -r -c 'read -P 0x3c 0 64k' " + Quote(img)));
}

// ---------------------------------------------------------------- measure

// Runs measure with `args` through both tools: same stdout, same exit code.
void ExpectSameMeasure(const std::string& dir, const std::string& args) {
  RunResult q = test::Run("cd " + Quote(dir) + " && qemu-img measure " + args);
  RunResult o = test::Run("cd " + Quote(dir) + " && " + Quote(Cli()) + " measure " + args);
  EXPECT_EQ(o.exit_code, q.exit_code) << args << "\n" << q.Describe() << "\n" << o.Describe();
  EXPECT_EQ(o.out, q.out) << args;
  if (q.exit_code != 0) {
    // The message after the program name.
    auto strip = [](std::string s, const std::string& prefix) {
      size_t p;
      while ((p = s.find(prefix)) != std::string::npos) s.erase(p, prefix.size());
      return s;
    };
    EXPECT_EQ(strip(o.err, "qcow2j: "), strip(q.err, "qemu-img: ")) << args;
  }
}

TEST(Measure, SizesMatchQemu) {
  TempDir d;
  for (const char* args :
       {"--size 1G", "--size 1001", "-O qcow2 --size 1G", "-O qcow2 --size 0", "-O qcow2 --size 1001",
        "-O qcow2 -o cluster_size=512 --size 3G", "-O qcow2 -o cluster_size=2M --size 1T",
        "-O qcow2 -o cluster_size=2M,extended_l2=on --size 100G",
        "-O qcow2 -o refcount_bits=1 --size 10G", "-O qcow2 -o refcount_bits=64,cluster_size=16k --size 10G",
        "-O qcow2 -o compat=0.10 --size 5G", "-O qcow2 -o preallocation=full --size 1G",
        "--output=json -O qcow2 --size 7G", "--output=json --size 7G"}) {
    ExpectSameMeasure(d.path(), args);
  }
}

TEST(Measure, SourcesMatchQemu) {
  TempDir d;
  const std::string dir = d.path();
  Must(test::Run("cd " + Quote(dir) + " && qemu-img create -q -f qcow2 m.qcow2 100M && qemu-io -c "
           "'write 0 1M' -c 'write 3000000 5000' -c 'write -z 10M 1M' -c 'write 50M 70k' m.qcow2"));
  Must(test::Run("cd " + Quote(dir) + " && qemu-img create -q -f qcow2 -o cluster_size=4k m4.qcow2 20M && "
           "qemu-io -c 'write 0 100k' -c 'write 7777 1' m4.qcow2"));
  // A sparse raw file: a few data blocks in holes.
  Must(test::Run("cd " + Quote(dir) + " && truncate -s 30M sp.raw && "
           "dd if=/dev/urandom of=sp.raw bs=4k seek=100 count=3 conv=notrunc status=none && "
           "dd if=/dev/urandom of=sp.raw bs=1k seek=20000 count=1 conv=notrunc status=none"));
  // Persistent bitmaps and an internal snapshot.
  Must(test::Run("cd " + Quote(dir) + " && qemu-img create -q -f qcow2 bm.qcow2 64M && "
           "qemu-io -c 'write 0 1M' bm.qcow2 && qemu-img bitmap --add bm.qcow2 b0 && "
           "qemu-img bitmap --add -g 4k bm.qcow2 bitmap-two && qemu-img snapshot -c s1 bm.qcow2 && "
           "qemu-io -c 'write 5M 1M' bm.qcow2"));
  for (const char* args :
       {"m.qcow2", "-O qcow2 m.qcow2", "-O qcow2 -o cluster_size=4k m.qcow2",
        "-O qcow2 -o cluster_size=2M m.qcow2", "-O qcow2 -o cluster_size=512 m.qcow2",
        "-O qcow2 m4.qcow2", "-O qcow2 -o cluster_size=512 m4.qcow2", "-O qcow2 sp.raw",
        "-O qcow2 -o cluster_size=1M sp.raw", "-O qcow2 -o cluster_size=512 sp.raw", "-O raw sp.raw",
        "-O qcow2 -f raw m.qcow2", "-O qcow2 bm.qcow2", "--output=json -O qcow2 bm.qcow2",
        "-O qcow2 -l s1 bm.qcow2", "-O qcow2 -l snapshot.name=s1 bm.qcow2",
        "-O qcow2 -o compat=0.10 bm.qcow2", "-O qcow2 -o preallocation=full m.qcow2",
        "-O qcow2 -o backing_file=x m.qcow2"}) {
    ExpectSameMeasure(dir, args);
  }
}

TEST(Measure, BadInputMatchesQemu) {
  TempDir d;
  Must(test::Run("qemu-img create -q -f qcow2 " + Quote(d.Path("m.qcow2")) + " 1M"));
  for (const char* args :
       {"", "--size 1G m.qcow2", "a b", "--size foo", "--output=xml --size 1G",
        "-O vmdkx --size 1G", "-O qcow2 -o foo=1 --size 1G", "-O qcow2 -o cluster_size=3k --size 1G",
        "-O qcow2 -o cluster_size=512 --size 1P", "-O qcow2 -l nosuch m.qcow2",
        "-O qcow2 -o extended_l2=on,cluster_size=4k --size 1G"}) {
    ExpectSameMeasure(d.path(), args);
  }
}

// ---------------------------------------------------------------- check -p

TEST(Check, ProgressOnlyWhenAsked) {
  TempDir d;
  MakeChain(d);
  RunResult r = Ours("check -p " + Quote(d.Path("top.qcow2")));
  Must(r);
  EXPECT_EQ(r.out.rfind("    (0.00/100%)\r", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("    (100.00/100%)\r\nNo errors were found on the image.\n"),
            std::string::npos) << r.out;
  r = Ours("check " + Quote(d.Path("top.qcow2")));
  Must(r);
  EXPECT_EQ(r.out.find('\r'), std::string::npos) << r.out;
}

}  // namespace
}  // namespace test
}  // namespace qcow2j
