// Why a trial deflate of samples, not a byte histogram: a histogram misses
// repeats (a counter 0..255 over and over has a flat histogram and deflates
// to almost nothing), while a trial deflate sees both skewed bytes and
// matches. Each sample is as long as the 4 KiB window QEMU's clusters allow,
// so data that repeats itself at any distance the real deflate can use shows
// savings in every sample. Four samples, at igzip level 0, cost a fraction
// of deflating a random 64 KiB cluster at our level; a compressible sample
// ends the probe at once, so compressible clusters pay for about one sample.
#include "qcow2/compressibility_probe.h"

#include <isa-l/igzip_lib.h>

#include <array>
#include <memory>

namespace qcow2j {
namespace {

constexpr size_t kSampleBytes = 4096;
constexpr size_t kSamples = 4;
// A sample counts as incompressible when deflate saves it less than 1/32
// (3%): stored blocks of random bytes come out a few bytes larger, a sample
// of text saves 30% or more.
constexpr size_t kMinSavingDivisor = 32;

// igzip's stream is large (its hash table): one per thread, not on the stack.
struct ProbeStream {
  isal_zstream stream;
  std::array<uint8_t, kSampleBytes + 512> out;
};

// The deflated size of `sample` (it fits: stored blocks add 5 bytes per
// 64 KiB, a header a few more), or 0 if igzip fails, so that the real
// deflate decides and reports the error.
size_t DeflatedSize(ProbeStream* p, const uint8_t* sample, size_t n) {
  isal_zstream* s = &p->stream;
  isal_deflate_stateless_init(s);
  s->level = 0;  // no level buffer needed
  s->hist_bits = 12;  // the window of QEMU's clusters, so matches count alike
  s->end_of_stream = 1;
  s->flush = NO_FLUSH;
  s->gzip_flag = IGZIP_DEFLATE;
  s->next_in = const_cast<uint8_t*>(sample);
  s->avail_in = static_cast<uint32_t>(n);
  s->next_out = p->out.data();
  s->avail_out = static_cast<uint32_t>(p->out.size());
  if (isal_deflate_stateless(s) != COMP_OK) return 0;
  return p->out.size() - s->avail_out;
}

}  // namespace

bool LooksIncompressible(std::span<const uint8_t> cluster) {
  if (cluster.size() < kMinProbedCluster) return false;
  thread_local std::unique_ptr<ProbeStream> probe(new ProbeStream);
  // Evenly spread: the first sample at the start, the last at the end.
  const size_t stride = (cluster.size() - kSampleBytes) / (kSamples - 1);
  for (size_t i = 0; i < kSamples; i++) {
    const uint8_t* sample = cluster.data() + i * stride;
    size_t z = DeflatedSize(probe.get(), sample, kSampleBytes);
    if (z < kSampleBytes - kSampleBytes / kMinSavingDivisor) return false;
  }
  return true;
}

}  // namespace qcow2j
