// LooksIncompressible, and CompressCluster's use of it: random clusters are
// reported as not worth compressing without a full deflate; anything with
// compressible samples, or too small to probe, is deflated as before.
#include "qcow2/compressibility_probe.h"

#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "qcow2/compression.h"

namespace qcow2j {
namespace {

using Bytes = std::vector<uint8_t>;

Bytes Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Words and spaces: skewed bytes and many repeats, as in the benchmark.
Bytes Text(size_t n, uint32_t seed) {
  static const char* kWords[] = {"journal ", "refcount ", "cluster ", "deflate ", "snapshot ", "\n"};
  std::mt19937 rng(seed);
  Bytes v;
  while (v.size() < n) {
    for (const char* p = kWords[rng() % 6]; *p && v.size() < n; ++p) v.push_back(static_cast<uint8_t>(*p));
  }
  return v;
}

TEST(CompressibilityProbeTest, RandomClustersLookIncompressible) {
  for (size_t cs : {32768u, 65536u, 2u << 20}) {
    EXPECT_TRUE(LooksIncompressible(Random(cs, static_cast<uint32_t>(cs)))) << cs;
  }
  // The histogram's threshold is far above its sampling noise.
  for (uint32_t seed = 0; seed < 300; seed++) {
    ASSERT_TRUE(LooksIncompressible(Random(65536, 1000 + seed))) << seed;
  }
}

TEST(CompressibilityProbeTest, CompressibleClustersDoNot) {
  EXPECT_FALSE(LooksIncompressible(Text(65536, 1)));
  EXPECT_FALSE(LooksIncompressible(Bytes(65536, 0)));
  EXPECT_FALSE(LooksIncompressible(Bytes(65536, 0xab)));
  // Every byte value equally often, so a byte histogram would call it
  // random, but deflate's matches make it tiny.
  Bytes counter(65536);
  for (size_t i = 0; i < counter.size(); i++) counter[i] = static_cast<uint8_t>(i);
  EXPECT_FALSE(LooksIncompressible(counter));
  // A random block repeated: flat histogram again, matches 3000 bytes back.
  Bytes block = Random(3000, 5), repeated;
  while (repeated.size() < 65536) repeated.insert(repeated.end(), block.begin(), block.end());
  repeated.resize(65536);
  EXPECT_FALSE(LooksIncompressible(repeated));
}

TEST(CompressibilityProbeTest, SkewedBytesAnywhereAreSeen) {
  // Random bytes with 4 KiB of text at the end (deflate saves ~4% on it).
  Bytes c = Random(65536, 7);
  Bytes t = Text(4096, 8);
  std::copy(t.begin(), t.end(), c.end() - 4096);
  EXPECT_FALSE(LooksIncompressible(c));
  // Zeros in a stretch away from the middle.
  c = Random(65536, 9);
  std::fill(c.begin() + 6000, c.begin() + 16000, 0);
  EXPECT_FALSE(LooksIncompressible(c));
}

// The price of a guess: repeats of random bytes (a flat histogram) away
// from the deflated middle sample go unseen, and the cluster is stored
// whole (never wrongly).
TEST(CompressibilityProbeTest, RepeatsAwayFromTheMiddleAreMissed) {
  Bytes c = Random(65536, 10);
  Bytes block = Random(3001, 11);  // longer than the histogram's stride: it counts no byte of it twice
  for (size_t i = 0; i < 24000; i++) c[i] = block[i % block.size()];
  EXPECT_TRUE(LooksIncompressible(c));
  Bytes out(65535);
  auto n = CompressCluster(CompressionType::kZlib, c, out);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 0u);
}

TEST(CompressibilityProbeTest, SmallClustersAreNeverGuessed) {
  for (size_t cs = 512; cs < kMinProbedCluster; cs *= 2) {
    EXPECT_FALSE(LooksIncompressible(Random(cs, static_cast<uint32_t>(cs)))) << cs;
  }
  EXPECT_FALSE(LooksIncompressible(Bytes()));
}

// Through the codec: zlib skips the deflate of random clusters (0: store
// uncompressed) and still compresses a cluster that is half random, half
// text, which the probe must not reject.
TEST(CompressibilityProbeTest, ZlibStoresRandomUncompressedAndMixedCompressed) {
  Bytes out(65535);
  auto n = CompressCluster(CompressionType::kZlib, Random(65536, 11), out);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 0u);
  Bytes mixed = Random(32768, 12), text = Text(32768, 13);
  mixed.insert(mixed.end(), text.begin(), text.end());
  n = CompressCluster(CompressionType::kZlib, mixed, out);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  ASSERT_GT(*n, 0u);
  EXPECT_LT(*n, 50000u);
  Bytes back(65536);
  ASSERT_TRUE(DecompressCluster(CompressionType::kZlib, std::span<const uint8_t>(out.data(), *n), back).ok());
  EXPECT_EQ(back, mixed);
}

}  // namespace
}  // namespace qcow2j
