#include "metadata/header.h"
#include "metadata/hex.h"

#include <algorithm>
#include <cstdio>
#include <set>

#include "metadata/endian.h"

namespace qcow2j {

namespace {

std::string Dec(uint64_t v) { return std::to_string(v); }

uint64_t AlignUp8(uint64_t v) { return (v + 7) & ~7ull; }

std::string ExtensionName(uint32_t type) {
  switch (type) {
    case kExtBackingFormat: return "backing file format";
    case kExtFeatureTable: return "feature name table";
    case kExtBitmaps: return "bitmaps";
    case kExtCrypto: return "full disk encryption header pointer";
    case kExtDataFile: return "external data file name";
    case kExtJournal: return "qcow2j journal";
    default: return "unknown";
  }
}

// "header extension 0x6803f857 (feature name table) at offset 0x70"
std::string ExtensionWhere(uint32_t type, uint64_t offset) {
  return "header extension " + Hex(type) + " (" + ExtensionName(type) + ") at offset " +
         Hex(offset);
}

// Offsets and masks are shown in hex, counts and sizes in decimal.
Status FieldError(const std::string& field, const std::string& value, const std::string& what) {
  return Status::Corruption("header field " + field + " " + value + " " + what);
}

// A table named by a header field must be cluster aligned, must not overlap
// the header cluster, and must end inside the file. QEMU only checks the
// alignment and overflow at open; checking the end here turns a truncated
// image into one clear error instead of short reads later.
Status ValidateTable(const std::string& field, uint64_t offset, uint64_t bytes,
                     uint32_t cluster_bits, uint64_t file_size) {
  const uint64_t cs = 1ull << cluster_bits;
  if (offset & (cs - 1)) {
    return FieldError(field, Hex(offset), "is not aligned to cluster_size " + Dec(cs));
  }
  if (bytes == 0) return Status::OK();
  if (offset == 0) return FieldError(field, Hex(offset), "overlaps the image header");
  if (offset > file_size || bytes > file_size - offset) {
    return FieldError(field, Hex(offset),
                      "is past the end of the file: the table of " + Dec(bytes) +
                          " bytes would end beyond file size " + Dec(file_size));
  }
  return Status::OK();
}

const std::vector<FeatureName>& BuiltinFeatureNames() {
  static const std::vector<FeatureName>* names = new std::vector<FeatureName>{
      {0, 0, "dirty bit"},
      {0, 1, "corrupt bit"},
      {0, 2, "external data file"},
      {0, 3, "compression type"},
      {0, 4, "extended L2 entries"},
      {0, 16, "qcow2j journal"},
      {1, 0, "lazy refcounts"},
      {2, 0, "bitmaps"},
      {2, 1, "raw external data"},
      {2, 16, "qcow2j journal valid"},
  };
  return *names;
}

// The parts of the fixed header that the rest of parsing depends on.
Status ParseFixedFields(std::span<const uint8_t> buf, Header* h) {
  const uint8_t* p = buf.data();
  if (buf.size() < kV2HeaderLength) {
    return Status::Corruption("header is truncated: " + Dec(buf.size()) + " bytes, need " +
                              Dec(kV2HeaderLength));
  }
  const uint32_t magic = LoadBE32(p);
  if (magic != kQcowMagic) {
    return FieldError("magic", Hex(magic),
                      "is not " + Hex(kQcowMagic) + " (QFI\\xfb): not a qcow2 image");
  }
  h->version = LoadBE32(p + 4);
  if (h->version != 2 && h->version != 3) {
    return Status::NotSupported("header field version " + Dec(h->version) +
                                " is not supported (only 2 and 3)");
  }
  h->backing_file_offset = LoadBE64(p + 8);
  h->backing_file_size = LoadBE32(p + 16);
  h->cluster_bits = LoadBE32(p + 20);
  h->size = LoadBE64(p + 24);
  h->crypt_method = LoadBE32(p + 32);
  h->l1_size = LoadBE32(p + 36);
  h->l1_table_offset = LoadBE64(p + 40);
  h->refcount_table_offset = LoadBE64(p + 48);
  h->refcount_table_clusters = LoadBE32(p + 56);
  h->nb_snapshots = LoadBE32(p + 60);
  h->snapshots_offset = LoadBE64(p + 64);
  if (h->cluster_bits < kMinClusterBits) {
    return FieldError("cluster_bits", Dec(h->cluster_bits),
                      "is below the minimum " + Dec(kMinClusterBits) + " (512-byte clusters)");
  }
  if (h->cluster_bits > kMaxClusterBits) {
    return Status::NotSupported("header field cluster_bits " + Dec(h->cluster_bits) +
                                " is above the maximum " + Dec(kMaxClusterBits) +
                                " (2 MiB clusters)");
  }
  const uint64_t cs = h->cluster_size();
  if (h->version == 2) {
    // v2 has none of these fields; the spec says to assume these values.
    h->incompatible_features = h->compatible_features = h->autoclear_features = 0;
    h->refcount_order = 4;
    h->header_length = kV2HeaderLength;
    h->compression_type = kCompressionZlib;
    return Status::OK();
  }
  if (buf.size() < kV3HeaderLength) {
    return Status::Corruption("header is truncated: " + Dec(buf.size()) +
                              " bytes, a version 3 header needs " + Dec(kV3HeaderLength));
  }
  h->incompatible_features = LoadBE64(p + 72);
  h->compatible_features = LoadBE64(p + 80);
  h->autoclear_features = LoadBE64(p + 88);
  h->refcount_order = LoadBE32(p + 96);
  h->header_length = LoadBE32(p + 100);
  if (h->header_length < kV3HeaderLength) {
    return FieldError("header_length", Dec(h->header_length),
                      "is less than " + Dec(kV3HeaderLength) + " for version 3");
  }
  if (h->header_length % 8 != 0) {
    return FieldError("header_length", Dec(h->header_length), "is not a multiple of 8");
  }
  if (h->header_length > cs) {
    return FieldError("header_length", Dec(h->header_length),
                      "is larger than cluster_size " + Dec(cs));
  }
  return Status::OK();
}

// The optional v3 fields: compression_type and whatever follows it.
Status ParseAdditionalFields(std::span<const uint8_t> buf, bool buf_is_probe, Header* h) {
  if (h->version < 3) return Status::OK();
  if (h->header_length > buf.size()) {
    if (!buf_is_probe) {
      return FieldError("header_length", Dec(h->header_length),
                        "is past the end of the file (" + Dec(buf.size()) + " bytes)");
    }
    h->probe_only = true;
    if (buf.size() > kV3HeaderLength) h->compression_type = buf[kV3HeaderLength];
    return Status::OK();
  }
  if (h->header_length > kV3HeaderLength) {
    h->compression_type = buf[kV3HeaderLength];
    h->unknown_header_tail.assign(reinterpret_cast<const char*>(buf.data()) + kV3HeaderLength + 1,
                                  h->header_length - kV3HeaderLength - 1);
  }
  return Status::OK();
}

Status ParseBackingFileName(std::span<const uint8_t> buf, bool buf_is_probe, Header* h) {
  if (h->backing_file_offset == 0) {
    // backing_file_size is undefined without a backing file; do not keep it.
    h->backing_file_size = 0;
    return Status::OK();
  }
  const uint64_t cs = h->cluster_size();
  if (h->backing_file_size > kMaxBackingFileNameLength) {
    return FieldError("backing_file_size", Dec(h->backing_file_size),
                      "is longer than " + Dec(kMaxBackingFileNameLength) + " bytes");
  }
  if (h->backing_file_offset < h->header_length) {
    return FieldError("backing_file_offset", Hex(h->backing_file_offset),
                      "overlaps the header (header_length " + Dec(h->header_length) + ")");
  }
  if (h->backing_file_offset > cs || h->backing_file_size > cs - h->backing_file_offset) {
    return FieldError("backing_file_offset", Hex(h->backing_file_offset),
                      "with backing_file_size " + Dec(h->backing_file_size) +
                          " runs past the first cluster (cluster_size " + Dec(cs) + ")");
  }
  const uint64_t end = h->backing_file_offset + h->backing_file_size;
  if (end > buf.size()) {
    if (buf_is_probe) {
      h->probe_only = true;
      return Status::OK();
    }
    return FieldError("backing_file_offset", Hex(h->backing_file_offset),
                      "with backing_file_size " + Dec(h->backing_file_size) +
                          " runs past the end of the file (" + Dec(buf.size()) + " bytes)");
  }
  h->backing_file.assign(reinterpret_cast<const char*>(buf.data()) + h->backing_file_offset,
                         h->backing_file_size);
  return Status::OK();
}

Status ParseFeatureTable(std::string_view data, uint32_t type, uint64_t offset, Header* h) {
  if (data.size() % kFeatureNameEntryBytes != 0) {
    return Status::Corruption(ExtensionWhere(type, offset) + ": length " + Dec(data.size()) +
                              " is not a multiple of " + Dec(kFeatureNameEntryBytes));
  }
  for (size_t i = 0; i < data.size(); i += kFeatureNameEntryBytes) {
    FeatureName f;
    f.type = static_cast<uint8_t>(data[i]);
    f.bit = static_cast<uint8_t>(data[i + 1]);
    if (f.bit > 63) {
      return Status::Corruption(ExtensionWhere(type, offset) + ": entry " +
                                Dec(i / kFeatureNameEntryBytes) + " has bit number " + Dec(f.bit) +
                                " (valid: 0-63)");
    }
    std::string_view name = data.substr(i + 2, kFeatureNameMaxLength);
    f.name.assign(name.substr(0, std::min(name.size(), name.find('\0'))));
    h->feature_names.push_back(std::move(f));
  }
  return Status::OK();
}

Status ParseBitmapsExtension(std::string_view data, uint32_t type, uint64_t offset,
                             uint64_t file_size, Header* h) {
  if (data.size() != 24) {
    return Status::Corruption(ExtensionWhere(type, offset) + ": length " + Dec(data.size()) +
                              " is not 24");
  }
  const auto* p = reinterpret_cast<const uint8_t*>(data.data());
  BitmapsExtension b;
  b.nb_bitmaps = LoadBE32(p);
  const uint32_t reserved = LoadBE32(p + 4);
  b.bitmap_directory_size = LoadBE64(p + 8);
  b.bitmap_directory_offset = LoadBE64(p + 16);
  const std::string where = ExtensionWhere(type, offset) + ": ";
  if (reserved != 0) {
    return Status::Corruption(where + "reserved field " + Hex(reserved) + " is not zero");
  }
  if (b.nb_bitmaps == 0) return Status::Corruption(where + "nb_bitmaps is 0");
  if (b.nb_bitmaps > kMaxBitmaps) {
    return Status::NotSupported(where + "nb_bitmaps " + Dec(b.nb_bitmaps) + " exceeds " +
                                Dec(kMaxBitmaps));
  }
  if (b.bitmap_directory_size == 0) {
    return Status::Corruption(where + "bitmap_directory_size is 0");
  }
  if (b.bitmap_directory_size > kMaxBitmapDirectoryBytes) {
    return Status::NotSupported(where + "bitmap_directory_size " + Dec(b.bitmap_directory_size) +
                                " exceeds " + Dec(kMaxBitmapDirectoryBytes));
  }
  Status s = ValidateTable("bitmap_directory_offset", b.bitmap_directory_offset,
                           b.bitmap_directory_size, h->cluster_bits, file_size);
  if (!s.ok()) return Status::Corruption(where + s.message());
  h->bitmaps = b;
  return Status::OK();
}

Status ParseExtensions(std::span<const uint8_t> buf, bool buf_is_probe, uint64_t file_size,
                       Header* h) {
  const uint64_t cs = h->cluster_size();
  const uint64_t start = h->version == 2 ? kV2HeaderLength : h->header_length;
  // The backing file name, when there is one, follows the extension area
  // (as QEMU reads it).
  const uint64_t area_end = h->backing_file_offset != 0 ? h->backing_file_offset : cs;
  std::set<uint32_t> seen;
  uint32_t count = 0;
  uint64_t off = start;
  while (off < area_end) {
    if (area_end - off < 8) {
      return Status::Corruption("header extension at offset " + Hex(off) +
                                " runs past the end of the extension area " + Hex(area_end));
    }
    if (off + 8 > buf.size()) {
      if (buf_is_probe) {
        h->probe_only = true;
        return Status::OK();
      }
      return Status::Corruption("header extension at offset " + Hex(off) +
                                " runs past the end of the file (" + Dec(buf.size()) + " bytes)");
    }
    const uint32_t type = LoadBE32(buf.data() + off);
    const uint32_t len = LoadBE32(buf.data() + off + 4);
    if (type == kExtEnd) return Status::OK();
    if (++count > kMaxHeaderExtensions) {
      return Status::Corruption(ExtensionWhere(type, off) + ": more than " +
                                Dec(kMaxHeaderExtensions) + " header extensions");
    }
    const uint64_t data_off = off + 8;
    if (len > area_end - data_off) {
      return Status::Corruption(ExtensionWhere(type, off) + ": length " + Dec(len) +
                                " runs past the end of the extension area " + Hex(area_end));
    }
    if (data_off + len > buf.size()) {
      if (buf_is_probe) {
        h->probe_only = true;
        return Status::OK();
      }
      return Status::Corruption(ExtensionWhere(type, off) + ": length " + Dec(len) +
                                " runs past the end of the file (" + Dec(buf.size()) + " bytes)");
    }
    std::string_view data(reinterpret_cast<const char*>(buf.data()) + data_off, len);
    const bool known = type == kExtBackingFormat || type == kExtFeatureTable ||
                       type == kExtBitmaps || type == kExtDataFile || type == kExtJournal;
    if (known && !seen.insert(type).second) {
      return Status::Corruption(ExtensionWhere(type, off) + ": appears more than once");
    }
    switch (type) {
      case kExtBackingFormat:
        if (len > kMaxBackingFileNameLength) {
          return Status::Corruption(ExtensionWhere(type, off) + ": length " + Dec(len) +
                                    " is longer than " + Dec(kMaxBackingFileNameLength));
        }
        h->backing_format = std::string(data);
        break;
      case kExtFeatureTable:
        QCOW2J_RETURN_IF_ERROR(ParseFeatureTable(data, type, off, h));
        break;
      case kExtBitmaps:
        if (!(h->autoclear_features & kAutoclearBitmaps)) {
          // A writer without bitmap support touched the image: the contents
          // are stale and not to be used (QEMU ignores them too). Kept
          // verbatim so that check can still find the clusters they name.
          if (len != 24) {
            return Status::Corruption(ExtensionWhere(type, off) + ": length " + Dec(len) +
                                      " is not 24");
          }
          h->other_extensions.push_back(HeaderExtension{type, std::string(data)});
          break;
        }
        QCOW2J_RETURN_IF_ERROR(ParseBitmapsExtension(data, type, off, file_size, h));
        break;
      case kExtDataFile:
        if (len > kMaxDataFileNameLength) {
          return Status::Corruption(ExtensionWhere(type, off) + ": length " + Dec(len) +
                                    " is longer than " + Dec(kMaxDataFileNameLength));
        }
        h->data_file = std::string(data);
        break;
      case kExtJournal:
        h->journal = std::string(data);
        break;
      default:
        h->other_extensions.push_back(HeaderExtension{type, std::string(data)});
        break;
    }
    off = data_off + AlignUp8(len);
  }
  return Status::OK();
}

Status CheckIncompatibleFeatures(const Header& h) {
  const uint64_t unknown = h.incompatible_features & ~kIncompatKnown;
  if (unknown == 0) return Status::OK();
  std::string list;
  for (uint8_t bit = 0; bit < 64; ++bit) {
    if (!(unknown & (1ull << bit))) continue;
    if (!list.empty()) list += ", ";
    list += "bit " + Dec(bit) + " (" + DescribeFeature(h.feature_names, 0, bit) + ")";
  }
  return Status::NotSupported("Unsupported qcow2 feature(s): header field incompatible_features " +
                              Hex(h.incompatible_features) + " has " + list);
}

// Every field that the engine will use to size or place something.
Status ValidateFields(const Header& h, uint64_t file_size) {
  const uint64_t cs = h.cluster_size();
  if (h.refcount_order > 6) {
    return FieldError("refcount_order", Dec(h.refcount_order), "is above 6 (64-bit refcounts)");
  }
  if (h.crypt_method != 0) {
    return Status::NotSupported("header field crypt_method " + Dec(h.crypt_method) +
                                ": encrypted images are not supported");
  }
  if (h.extended_l2() && h.cluster_bits < kMinExtendedL2ClusterBits) {
    return FieldError("cluster_bits", Dec(h.cluster_bits),
                      "is too small for extended L2 entries (need at least " +
                          Dec(kMinExtendedL2ClusterBits) + ")");
  }
  if (h.size > kMaxVirtualSize) {
    return Status::NotSupported("header field size " + Dec(h.size) + " exceeds the maximum " +
                                Dec(kMaxVirtualSize));
  }
  const uint64_t l1_bytes = uint64_t{h.l1_size} * 8;
  if (l1_bytes > kMaxL1Bytes) {
    return Status::NotSupported("header field l1_size " + Dec(h.l1_size) + " (" + Dec(l1_bytes) +
                                " bytes) exceeds the maximum L1 table size " + Dec(kMaxL1Bytes));
  }
  // Each L1 entry maps one L2 table's worth of guest bytes (at most 2^39).
  const uint64_t bytes_per_l1 = cs * h.l2_entries();
  const uint64_t l1_needed = h.size / bytes_per_l1 + (h.size % bytes_per_l1 != 0);
  if (h.l1_size < l1_needed) {
    return FieldError("l1_size", Dec(h.l1_size),
                      "is too small for size " + Dec(h.size) + " (need " + Dec(l1_needed) +
                          " entries)");
  }
  QCOW2J_RETURN_IF_ERROR(
      ValidateTable("l1_table_offset", h.l1_table_offset, l1_bytes, h.cluster_bits, file_size));
  if (h.refcount_table_clusters == 0) {
    return FieldError("refcount_table_clusters", Dec(0), "is zero");
  }
  const uint64_t rt_bytes = uint64_t{h.refcount_table_clusters} * cs;
  if (rt_bytes > kMaxRefcountTableBytes) {
    return Status::NotSupported("header field refcount_table_clusters " +
                                Dec(h.refcount_table_clusters) + " (" + Dec(rt_bytes) +
                                " bytes) exceeds the maximum refcount table size " +
                                Dec(kMaxRefcountTableBytes));
  }
  QCOW2J_RETURN_IF_ERROR(ValidateTable("refcount_table_offset", h.refcount_table_offset, rt_bytes,
                                       h.cluster_bits, file_size));
  if (h.nb_snapshots > kMaxSnapshots) {
    return Status::NotSupported("header field nb_snapshots " + Dec(h.nb_snapshots) +
                                " exceeds the maximum " + Dec(kMaxSnapshots));
  }
  // Entries have variable size; each is at least the fixed 40 bytes.
  QCOW2J_RETURN_IF_ERROR(ValidateTable("snapshots_offset", h.snapshots_offset,
                                       uint64_t{h.nb_snapshots} * kSnapshotEntryMinBytes,
                                       h.cluster_bits, file_size));
  if (h.compression_type > kCompressionZstd) {
    return Status::NotSupported("header field compression_type " + Dec(h.compression_type) +
                                " is not supported (0 zlib, 1 zstd)");
  }
  const bool compression_bit = h.incompatible_features & kIncompatCompression;
  if (compression_bit && h.compression_type == kCompressionZlib) {
    return FieldError("compression_type", Dec(h.compression_type),
                      "is zero but the compression type bit (incompatible bit 3) is set");
  }
  if (!compression_bit && h.compression_type != kCompressionZlib) {
    return FieldError("compression_type", Dec(h.compression_type),
                      "is nonzero without the compression type bit (incompatible bit 3)");
  }
  if ((h.autoclear_features & kAutoclearDataFileRaw) && !h.has_data_file()) {
    return FieldError("autoclear_features", Hex(h.autoclear_features),
                      "has raw external data (bit 1) without the external data file bit");
  }
  return Status::OK();
}

void PutExtension(std::vector<uint8_t>* out, uint32_t type, std::string_view data) {
  const size_t at = out->size();
  out->resize(at + 8 + AlignUp8(data.size()), 0);
  StoreBE32(out->data() + at, type);
  StoreBE32(out->data() + at + 4, static_cast<uint32_t>(data.size()));
  std::copy(data.begin(), data.end(), out->begin() + at + 8);
}

}  // namespace

Result<Header> ParseHeader(std::span<const uint8_t> buf, uint64_t file_size) {
  Header h;
  QCOW2J_RETURN_IF_ERROR(ParseFixedFields(buf, &h));
  // A buffer shorter than the first cluster is a probe unless it is the
  // whole file; what lies past it is then left unparsed, not called corrupt.
  const bool buf_is_probe = buf.size() < h.cluster_size() && buf.size() < file_size;
  if (buf.size() > h.cluster_size()) buf = buf.first(h.cluster_size());
  QCOW2J_RETURN_IF_ERROR(ParseAdditionalFields(buf, buf_is_probe, &h));
  if (!h.probe_only) {
    QCOW2J_RETURN_IF_ERROR(ParseBackingFileName(buf, buf_is_probe, &h));
  }
  if (!h.probe_only) {
    QCOW2J_RETURN_IF_ERROR(ParseExtensions(buf, buf_is_probe, file_size, &h));
  }
  // Unknown incompatible features first: they may change what the other
  // fields mean, so "unsupported" is the honest answer, not "corrupt".
  QCOW2J_RETURN_IF_ERROR(CheckIncompatibleFeatures(h));
  QCOW2J_RETURN_IF_ERROR(ValidateFields(h, file_size));
  return h;
}

Result<std::vector<uint8_t>> SerializeHeader(const Header& h) {
  if (h.version != 2 && h.version != 3) {
    return Status::InvalidArgument("SerializeHeader: version " + Dec(h.version));
  }
  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
    return Status::InvalidArgument("SerializeHeader: cluster_bits " + Dec(h.cluster_bits));
  }
  const uint64_t cs = h.cluster_size();
  uint32_t header_length = kV2HeaderLength;
  if (h.version == 2) {
    if (h.incompatible_features || h.compatible_features || h.autoclear_features ||
        h.refcount_order != 4 || h.compression_type != 0 || !h.unknown_header_tail.empty()) {
      return Status::InvalidArgument(
          "SerializeHeader: version 2 has no feature bits, refcount_order is 4 and "
          "compression is zlib");
    }
  } else {
    uint64_t len = std::max<uint64_t>(AlignUp8(h.header_length), kV3HeaderLength);
    if (h.compression_type != 0) len = std::max<uint64_t>(len, kV3HeaderLength + 8);
    if (!h.unknown_header_tail.empty()) {
      len = std::max<uint64_t>(len, AlignUp8(kV3HeaderLength + 1 + h.unknown_header_tail.size()));
    }
    if (len > cs) {
      return Status::InvalidArgument("SerializeHeader: header_length " + Dec(len) +
                                     " exceeds cluster_size " + Dec(cs));
    }
    header_length = static_cast<uint32_t>(len);
  }
  if (h.backing_file.size() > kMaxBackingFileNameLength) {
    return Status::InvalidArgument("SerializeHeader: backing file name of " +
                                   Dec(h.backing_file.size()) + " bytes exceeds " +
                                   Dec(kMaxBackingFileNameLength));
  }

  std::vector<uint8_t> out(header_length, 0);
  uint8_t* p = out.data();
  StoreBE32(p, kQcowMagic);
  StoreBE32(p + 4, h.version);
  // 8..19 (backing file offset and size) are filled in at the end.
  StoreBE32(p + 20, h.cluster_bits);
  StoreBE64(p + 24, h.size);
  StoreBE32(p + 32, h.crypt_method);
  StoreBE32(p + 36, h.l1_size);
  StoreBE64(p + 40, h.l1_table_offset);
  StoreBE64(p + 48, h.refcount_table_offset);
  StoreBE32(p + 56, h.refcount_table_clusters);
  StoreBE32(p + 60, h.nb_snapshots);
  StoreBE64(p + 64, h.snapshots_offset);
  if (h.version == 3) {
    StoreBE64(p + 72, h.incompatible_features);
    StoreBE64(p + 80, h.compatible_features);
    StoreBE64(p + 88, h.autoclear_features);
    StoreBE32(p + 96, h.refcount_order);
    StoreBE32(p + 100, header_length);
    if (header_length > kV3HeaderLength) {
      p[kV3HeaderLength] = h.compression_type;
      std::copy(h.unknown_header_tail.begin(), h.unknown_header_tail.end(),
                out.begin() + kV3HeaderLength + 1);
    }
  }

  if (h.backing_format) PutExtension(&out, kExtBackingFormat, *h.backing_format);
  if (!h.feature_names.empty()) {
    std::string table(h.feature_names.size() * kFeatureNameEntryBytes, '\0');
    for (size_t i = 0; i < h.feature_names.size(); ++i) {
      const FeatureName& f = h.feature_names[i];
      char* e = table.data() + i * kFeatureNameEntryBytes;
      e[0] = static_cast<char>(f.type);
      e[1] = static_cast<char>(f.bit);
      std::copy_n(f.name.begin(), std::min<size_t>(f.name.size(), kFeatureNameMaxLength), e + 2);
    }
    PutExtension(&out, kExtFeatureTable, table);
  }
  if (h.bitmaps) {
    uint8_t b[24] = {};
    StoreBE32(b, h.bitmaps->nb_bitmaps);
    StoreBE64(b + 8, h.bitmaps->bitmap_directory_size);
    StoreBE64(b + 16, h.bitmaps->bitmap_directory_offset);
    PutExtension(&out, kExtBitmaps, std::string_view(reinterpret_cast<char*>(b), sizeof(b)));
  }
  if (h.data_file) PutExtension(&out, kExtDataFile, *h.data_file);
  if (h.journal) PutExtension(&out, kExtJournal, *h.journal);
  for (const HeaderExtension& e : h.other_extensions) {
    if (e.type == kExtEnd) {
      return Status::InvalidArgument("SerializeHeader: extension type 0 is the end marker");
    }
    PutExtension(&out, e.type, e.data);
  }
  PutExtension(&out, kExtEnd, {});

  if (!h.backing_file.empty()) {
    StoreBE64(out.data() + 8, out.size());
    StoreBE32(out.data() + 16, static_cast<uint32_t>(h.backing_file.size()));
    out.insert(out.end(), h.backing_file.begin(), h.backing_file.end());
  }
  if (out.size() > cs) {
    return Status::InvalidArgument("SerializeHeader: header, extensions and backing file name "
                                   "take " + Dec(out.size()) + " bytes, more than cluster_size " +
                                   Dec(cs));
  }
  return out;
}

std::vector<FeatureName> DefaultFeatureNames() { return BuiltinFeatureNames(); }

std::string DescribeFeature(const std::vector<FeatureName>& names, uint8_t type, uint8_t bit) {
  for (const FeatureName& f : names) {
    if (f.type == type && f.bit == bit && !f.name.empty()) return f.name;
  }
  for (const FeatureName& f : BuiltinFeatureNames()) {
    if (f.type == type && f.bit == bit) return f.name;
  }
  const char* kind = type == 0 ? "incompatible" : type == 1 ? "compatible" : type == 2 ? "autoclear"
                                                                                       : "unknown-type";
  return std::string("unknown ") + kind + " feature bit " + Dec(bit);
}

}  // namespace qcow2j
