// The qcow2 image header (v2 and v3), its extensions and feature bits, as a
// pure codec: bytes in, validated struct out, and back. See docs/interop/qcow2.txt
// in the QEMU tree for the layout.
#ifndef QCOW2J_METADATA_HEADER_H_
#define QCOW2J_METADATA_HEADER_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "qcow2j/status.h"

namespace qcow2j {

inline constexpr uint32_t kQcowMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr uint32_t kMinClusterBits = 9;
inline constexpr uint32_t kMaxClusterBits = 21;
inline constexpr uint32_t kV2HeaderLength = 72;
inline constexpr uint32_t kV3HeaderLength = 104;  // includes compression_type + padding
inline constexpr uint32_t kMaxBackingFileNameLength = 1023;
inline constexpr uint32_t kMaxSnapshots = 65536;
inline constexpr uint64_t kMaxL1Bytes = 32ull << 20;               // QCOW_MAX_L1_SIZE
inline constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;     // QCOW_MAX_REFTABLE_SIZE
inline constexpr uint64_t kMaxVirtualSize = 1ull << 61;
inline constexpr uint32_t kMinExtendedL2ClusterBits = 14;  // QEMU: 16 KiB for extended L2
inline constexpr uint32_t kMaxBitmaps = 65535;                 // QEMU's limit
inline constexpr uint64_t kMaxBitmapDirectoryBytes = 1024ull * kMaxBitmaps;
inline constexpr uint32_t kMaxDataFileNameLength = 4095;       // PATH_MAX - 1
inline constexpr uint32_t kMaxHeaderExtensions = 1024;         // sanity bound per image
inline constexpr uint32_t kFeatureNameEntryBytes = 48;
inline constexpr uint32_t kFeatureNameMaxLength = 46;
inline constexpr uint32_t kSnapshotEntryMinBytes = 40;         // fixed part of an entry

// Header extension types.
inline constexpr uint32_t kExtEnd = 0;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureTable = 0x6803f857;
inline constexpr uint32_t kExtBitmaps = 0x23852875;
inline constexpr uint32_t kExtCrypto = 0x0537be77;
inline constexpr uint32_t kExtDataFile = 0x44415441;
// qcow2j's own: the metadata journal (docs/journal-format.md).
inline constexpr uint32_t kExtJournal = 0x716a6a6c;  // "qjjl"

// Incompatible feature bits.
inline constexpr uint64_t kIncompatDirty = 1ull << 0;
inline constexpr uint64_t kIncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kIncompatDataFile = 1ull << 2;
inline constexpr uint64_t kIncompatCompression = 1ull << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
inline constexpr uint64_t kIncompatJournal = 1ull << 16;  // qcow2j: journal holds un-checkpointed transactions
inline constexpr uint64_t kIncompatKnown = kIncompatDirty | kIncompatCorrupt | kIncompatDataFile |
                                          kIncompatCompression | kIncompatExtendedL2 | kIncompatJournal;
// Compatible feature bits.
inline constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;
// Autoclear feature bits.
inline constexpr uint64_t kAutoclearBitmaps = 1ull << 0;
inline constexpr uint64_t kAutoclearDataFileRaw = 1ull << 1;
inline constexpr uint64_t kAutoclearJournalValid = 1ull << 16;  // qcow2j: cleared by journal-unaware writers

inline constexpr uint8_t kCompressionZlib = 0;
inline constexpr uint8_t kCompressionZstd = 1;

struct FeatureName {
  uint8_t type = 0;  // 0 incompatible, 1 compatible, 2 autoclear
  uint8_t bit = 0;
  std::string name;  // up to 46 bytes
};

struct BitmapsExtension {
  uint32_t nb_bitmaps = 0;
  uint64_t bitmap_directory_size = 0;
  uint64_t bitmap_directory_offset = 0;
};

struct HeaderExtension {
  uint32_t type = 0;
  std::string data;  // payload without padding
};

struct Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 16;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  // v3 (v2 images read as: features 0, refcount_order 4, header_length 72)
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;
  uint32_t header_length = kV3HeaderLength;
  uint8_t compression_type = kCompressionZlib;
  // Header bytes from offset 105 (after compression_type) up to
  // header_length: padding or fields newer than this code. Kept verbatim and
  // written back.
  std::string unknown_header_tail;
  // Set when `buf` was a probe that ended before the header extensions or the
  // backing file name did: the fixed fields are valid, the rest is not
  // parsed. Read the whole first cluster and parse again.
  bool probe_only = false;

  // Extensions, parsed.
  std::string backing_file;                  // read from backing_file_offset
  std::optional<std::string> backing_format; // kExtBackingFormat
  std::vector<FeatureName> feature_names;    // kExtFeatureTable
  // kExtBitmaps, when the autoclear bitmaps bit says it is consistent;
  // otherwise the extension is kept unparsed in other_extensions.
  std::optional<BitmapsExtension> bitmaps;
  std::optional<std::string> data_file;      // kExtDataFile
  std::optional<std::string> journal;        // kExtJournal payload, parsed by journal/
  std::vector<HeaderExtension> other_extensions;  // unknown, crypto, stale bitmaps: verbatim

  uint64_t cluster_size() const { return 1ull << cluster_bits; }
  uint32_t refcount_bits() const { return 1u << refcount_order; }
  bool extended_l2() const { return incompatible_features & kIncompatExtendedL2; }
  // Guest clusters per L2 table (extended entries take 16 bytes).
  uint64_t l2_entries() const { return cluster_size() / (extended_l2() ? 16 : 8); }
  // The external-data-file bit. `data_file` may still be empty: QEMU then
  // needs the data file named by an option.
  bool has_data_file() const { return incompatible_features & kIncompatDataFile; }
};

// Parses and validates the header from the start of the image file. `buf`
// holds the first bytes of the file (the whole first cluster when the file is
// that large). `file_size` is the image file's size, used to check that every
// table lies inside it. Errors name the field, its value and, for
// extensions, the byte offset: "header field l1_table_offset 0x1234 is not
// aligned to the cluster size 65536".
// An unknown incompatible feature bit gives NotSupported naming the bit and,
// where the feature-name table has it, the feature's name.
Result<Header> ParseHeader(std::span<const uint8_t> buf, uint64_t file_size);

// Minimum number of bytes ParseHeader needs to learn cluster_bits (the
// caller then reads the whole first cluster and parses again).
inline constexpr size_t kHeaderProbeBytes = 512;

// The version 3 header_length is max(h.header_length rounded up to 8, 104),
// raised to hold a nonzero compression_type (112) and unknown_header_tail.
// Serializes the header, its extensions (backing format, feature table,
// bitmaps, data file, journal, then the unknown ones in their original
// order, each padded to 8 bytes, then the end marker) and the backing file
// name, which is placed right after the extensions and whose offset/size are
// filled in. The result fits in one cluster or this returns InvalidArgument.
Result<std::vector<uint8_t>> SerializeHeader(const Header& h);

// The feature-name table qcow2j writes: QEMU's names plus ours.
std::vector<FeatureName> DefaultFeatureNames();

// "dirty bit", "corrupt bit", ... for a bit, from `names` or a built-in table;
// "unknown incompatible feature bit N" when nobody names it.
std::string DescribeFeature(const std::vector<FeatureName>& names, uint8_t type, uint8_t bit);

}  // namespace qcow2j

#endif  // QCOW2J_METADATA_HEADER_H_
