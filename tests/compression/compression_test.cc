// Round trips through both codecs, and clusters compressed by real QEMU
// (qemu-io write -c, qemu-img convert -c) located by walking L1/L2 by hand.
#include "qcow2/compression.h"

#include <stdlib.h>
#include <zlib.h>
#include <zstd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace qcow2j {
namespace {

using Bytes = std::vector<uint8_t>;

// Compressible but not trivial: words from a small vocabulary plus noise.
Bytes TextLike(size_t n, uint32_t seed) {
  static const char* kWords[] = {"qcow2 ", "cluster ", "refcount ", "L2 ", "table ", "\n", "0x5a "};
  std::mt19937 rng(seed);
  Bytes v;
  v.reserve(n);
  while (v.size() < n) {
    const char* w = kWords[rng() % 7];
    for (const char* p = w; *p && v.size() < n; ++p) v.push_back(static_cast<uint8_t>(*p));
    if (rng() % 8 == 0 && v.size() < n) v.push_back(static_cast<uint8_t>(rng()));
  }
  return v;
}

Bytes Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

const char* Name(CompressionType t) { return t == CompressionType::kZlib ? "zlib" : "zstd"; }

class CodecTest : public ::testing::TestWithParam<CompressionType> {};

TEST_P(CodecTest, RoundTripAllClusterSizes) {
  const CompressionType type = GetParam();
  for (size_t cs = 512; cs <= (2u << 20); cs *= 2) {
    for (int kind = 0; kind < 2; ++kind) {
      Bytes src = kind == 0 ? TextLike(cs, static_cast<uint32_t>(cs)) : Bytes(cs, 0);
      Bytes out(cs - 1);
      auto n = CompressCluster(type, src, out);
      ASSERT_TRUE(n.ok()) << n.status().ToString();
      ASSERT_GT(*n, 0u) << Name(type) << " cluster " << cs << " kind " << kind;
      ASSERT_LT(*n, cs - 1);
      // On disk the stream is followed by the rest of its last sector, and
      // possibly more: pad with garbage to the sector end plus a sector.
      Bytes disk(out.begin(), out.begin() + *n);
      Bytes junk = Random((512 - *n % 512) + 512, 77);
      disk.insert(disk.end(), junk.begin(), junk.end());
      Bytes back(cs, 0xee);
      Status s = DecompressCluster(type, disk, back);
      ASSERT_TRUE(s.ok()) << Name(type) << " " << cs << ": " << s.ToString();
      ASSERT_EQ(back, src) << Name(type) << " cluster " << cs;
      // And exactly the stream, nothing after it.
      Bytes exact(out.begin(), out.begin() + *n);
      ASSERT_TRUE(DecompressCluster(type, exact, back).ok());
      ASSERT_EQ(back, src);
    }
  }
}

TEST_P(CodecTest, IncompressibleDataIsReportedAsZero) {
  Bytes src = Random(65536, 3);
  Bytes out(65535);
  auto n = CompressCluster(GetParam(), src, out);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 0u);
}

TEST_P(CodecTest, BrokenStreamsAreCorruptionNotCrashes) {
  const CompressionType type = GetParam();
  Bytes src = TextLike(65536, 9);
  Bytes out(65535);
  auto n = CompressCluster(type, src, out);
  ASSERT_TRUE(n.ok() && *n > 0);
  Bytes dst(65536);
  // Truncated.
  Status s = DecompressCluster(type, std::span<const uint8_t>(out.data(), *n / 2), dst);
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
  // Garbage.
  Bytes junk = Random(4096, 10);
  s = DecompressCluster(type, junk, dst);
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
  // Empty.
  s = DecompressCluster(type, std::span<const uint8_t>(), dst);
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
  // A stream of half a cluster does not fill a cluster.
  Bytes half(32767);
  auto m = CompressCluster(type, std::span<const uint8_t>(src.data(), 32768), half);
  ASSERT_TRUE(m.ok() && *m > 0);
  s = DecompressCluster(type, std::span<const uint8_t>(half.data(), *m), dst);
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
}

INSTANTIATE_TEST_SUITE_P(Codecs, CodecTest,
                         ::testing::Values(CompressionType::kZlib, CompressionType::kZstd),
                         [](const auto& info) { return std::string(Name(info.param)); });

TEST(ZstdTest, SeveralFramesAndTrailingGarbage) {
  Bytes src = TextLike(65536, 11);
  Bytes stream;
  for (size_t part = 0; part < 3; ++part) {  // uneven frames
    size_t from = part * 20000, len = std::min<size_t>(20000 + (part == 2 ? 5536 : 0), 65536 - from);
    Bytes frame(ZSTD_compressBound(len));
    size_t n = ZSTD_compress(frame.data(), frame.size(), src.data() + from, len, 3);
    ASSERT_FALSE(ZSTD_isError(n));
    stream.insert(stream.end(), frame.begin(), frame.begin() + n);
  }
  Bytes junk = Random(300, 12);
  stream.insert(stream.end(), junk.begin(), junk.end());
  Bytes dst(65536);
  Status s = DecompressCluster(CompressionType::kZstd, stream, dst);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(dst, src);
}

TEST(ZstdTest, FrameLargerThanClusterIsCorruption) {
  Bytes src = TextLike(65536, 13);
  Bytes frame(ZSTD_compressBound(src.size()));
  size_t n = ZSTD_compress(frame.data(), frame.size(), src.data(), src.size(), 3);
  ASSERT_FALSE(ZSTD_isError(n));
  Bytes dst(32768);
  Status s = DecompressCluster(CompressionType::kZstd, std::span<const uint8_t>(frame.data(), n), dst);
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
}

TEST(ZlibTest, WritesRawDeflateWithTwelveBitWindow) {
  // Whatever we write, QEMU must read: inflate it with QEMU's parameters.
  Bytes src = TextLike(65536, 14);
  Bytes out(65535);
  auto n = CompressCluster(CompressionType::kZlib, src, out);
  ASSERT_TRUE(n.ok() && *n > 0);
  z_stream z{};
  ASSERT_EQ(inflateInit2(&z, -12), Z_OK);
  Bytes back(65536);
  z.next_in = out.data();
  z.avail_in = static_cast<uInt>(*n);
  z.next_out = back.data();
  z.avail_out = static_cast<uInt>(back.size());
  EXPECT_EQ(inflate(&z, Z_FINISH), Z_STREAM_END);
  inflateEnd(&z);
  EXPECT_EQ(back, src);
}

// --- clusters written by QEMU ---------------------------------------------

uint64_t BE64(const Bytes& b, size_t at) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | b[at + i];
  return v;
}
uint32_t BE32(const Bytes& b, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | b[at + i];
  return v;
}

Bytes Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class QemuCompressedClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Interop tests must run for real: a missing QEMU is a failure, not a skip.
    ASSERT_EQ(std::system("command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1"), 0)
        << "qemu-img/qemu-io not installed (scripts/install-deps.sh)";
    char tmpl[] = "/var/tmp/qcow2j_compression_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  void Sh(const std::string& cmd) {
    ASSERT_EQ(std::system((cmd + " >/dev/null 2>&1").c_str()), 0) << cmd;
  }

  // Decompresses guest cluster `index` of a qcow2 image by walking its L1
  // and L2 tables by hand, checking that QEMU stored it compressed.
  void ReadCompressedCluster(const Bytes& img, uint64_t index, CompressionType want_type,
                             Bytes* out) {
    ASSERT_GE(img.size(), 512u);
    ASSERT_EQ(BE32(img, 0), 0x514649fbu);  // "QFI\xfb"
    const uint32_t cluster_bits = BE32(img, 20);
    const uint64_t cluster_size = 1ull << cluster_bits;
    const uint64_t l1_offset = BE64(img, 40);
    const uint32_t header_length = BE32(img, 100);
    CompressionType type = CompressionType::kZlib;
    if (header_length > 104) type = static_cast<CompressionType>(img[104]);
    ASSERT_EQ(type, want_type);

    const uint64_t l2_entries = cluster_size / 8;
    uint64_t l1e = BE64(img, l1_offset + 8 * (index / l2_entries));
    uint64_t l2_offset = l1e & 0x00fffffffffffe00ull;
    ASSERT_NE(l2_offset, 0u);
    uint64_t l2e = BE64(img, l2_offset + 8 * (index % l2_entries));
    ASSERT_TRUE(l2e & (1ull << 62)) << "cluster " << index << " not compressed";
    const uint32_t x = 62 - (cluster_bits - 8);
    uint64_t host = l2e & ((1ull << x) - 1);
    uint64_t sectors = ((l2e >> x) & ((1ull << (cluster_bits - 8)) - 1)) + 1;
    uint64_t len = sectors * 512 - (host & 511);
    ASSERT_LT(host, img.size());
    len = std::min<uint64_t>(len, img.size() - host);
    out->assign(cluster_size, 0xee);
    Status s = DecompressCluster(type, std::span<const uint8_t>(img.data() + host, len), *out);
    ASSERT_TRUE(s.ok()) << "cluster " << index << ": " << s.ToString();
  }

  std::string dir_;
};

TEST_F(QemuCompressedClusterTest, ClustersWrittenByQemuIo) {
  for (CompressionType type : {CompressionType::kZlib, CompressionType::kZstd}) {
    for (const char* cs : {"4096", "65536", "2M"}) {
      std::string img = dir_ + "/io_" + Name(type) + "_" + cs + ".qcow2";
      Sh(std::string("qemu-img create -f qcow2 -o compression_type=") + Name(type) +
         ",cluster_size=" + cs + " " + img + " 8M");
      // QEMU compresses whole clusters only: write at least one.
      uint64_t cluster_size = std::string(cs) == "2M" ? (2u << 20) : std::stoull(cs);
      uint64_t len = std::max<uint64_t>(65536, cluster_size);
      Sh("qemu-io -f qcow2 -c 'write -c -P 0x5a 0 " + std::to_string(len) + "' " + img);
      Bytes bytes = Slurp(img);
      for (uint64_t i = 0; i < len / cluster_size; ++i) {
        Bytes out;
        ReadCompressedCluster(bytes, i, type, &out);
        if (HasFatalFailure()) return;
        for (size_t j = 0; j < out.size(); ++j) {
          ASSERT_EQ(out[j], 0x5a) << Name(type) << " " << cs << " cluster " << i << " byte " << j;
        }
      }
    }
  }
}

TEST_F(QemuCompressedClusterTest, ClustersWrittenByQemuImgConvert) {
  const size_t kSize = 1 << 20;
  Bytes raw = TextLike(kSize, 21);
  std::string raw_path = dir_ + "/raw.img";
  {
    std::ofstream f(raw_path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
  }
  for (CompressionType type : {CompressionType::kZlib, CompressionType::kZstd}) {
    std::string img = dir_ + "/conv_" + Name(type) + ".qcow2";
    Sh(std::string("qemu-img convert -c -f raw -O qcow2 -o compression_type=") + Name(type) +
       " " + raw_path + " " + img);
    Bytes bytes = Slurp(img);
    for (uint64_t i = 0; i < kSize / 65536; ++i) {
      Bytes out;
      ReadCompressedCluster(bytes, i, type, &out);
      if (HasFatalFailure()) return;
      ASSERT_TRUE(std::equal(out.begin(), out.end(), raw.begin() + i * 65536))
          << Name(type) << " cluster " << i;
    }
  }
}

}  // namespace
}  // namespace qcow2j
