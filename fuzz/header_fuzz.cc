// ParseHeader on arbitrary bytes (the first cluster of an image), with the
// file size taken from the input; a header that parses must serialize, and
// what it serializes to must parse again to the same fields.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "metadata/header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qcow2j;
  std::span<const uint8_t> in(data, size);
  // Sometimes claim the file is much larger than the input, so offsets past
  // the input's end pass the EOF checks and deeper validation runs.
  uint64_t file_size = size;
  if (size > 0 && (data[size - 1] & 1)) file_size = uint64_t{1} << 40;
  auto h = ParseHeader(in, file_size);
  if (!h.ok() || h->probe_only) return 0;
  auto bytes = SerializeHeader(*h);
  if (!bytes.ok()) return 0;
  auto again = ParseHeader(*bytes, std::max<uint64_t>(file_size, bytes->size()));
  if (!again.ok()) return 0;  // e.g. extensions that no longer fit one cluster
  if (again->cluster_bits != h->cluster_bits || again->size != h->size ||
      again->l1_table_offset != h->l1_table_offset || again->l1_size != h->l1_size ||
      again->backing_file != h->backing_file || again->incompatible_features != h->incompatible_features) {
    std::abort();  // the codec does not round-trip
  }
  return 0;
}
