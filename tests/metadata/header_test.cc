// The header codec on headers built here: round trips, and every validation
// rule on a malformed header, checking the error names the offending field.
#include "metadata/header.h"

#include <functional>
#include <random>

#include <gtest/gtest.h>

#include "metadata/endian.h"

namespace qcow2j {
namespace {

// A valid image layout: header in cluster 0, refcount table in 1, L1 table
// in 2, snapshot table space in 3; the file is 4 clusters long.
Header ValidHeader(uint32_t cluster_bits = 16) {
  Header h;
  h.version = 3;
  h.cluster_bits = cluster_bits;
  h.size = 1ull << 30;
  const uint64_t cs = h.cluster_size();
  h.l1_size = static_cast<uint32_t>((h.size + cs * h.l2_entries() - 1) / (cs * h.l2_entries()));
  h.refcount_table_offset = cs;
  h.refcount_table_clusters = 1;
  h.l1_table_offset = 2 * cs;
  h.header_length = 112;
  h.feature_names = DefaultFeatureNames();
  return h;
}

uint64_t FileSize(const Header& h) { return 4 * h.cluster_size(); }

std::vector<uint8_t> ImageBytes(const Header& h) {
  Result<std::vector<uint8_t>> bytes = SerializeHeader(h);
  EXPECT_TRUE(bytes.ok()) << bytes.status().ToString();
  std::vector<uint8_t> out = bytes.ok() ? *bytes : std::vector<uint8_t>();
  out.resize(h.cluster_size(), 0);
  return out;
}

void ExpectSameHeader(const Header& a, const Header& b) {
  EXPECT_EQ(a.version, b.version);
  EXPECT_EQ(a.cluster_bits, b.cluster_bits);
  EXPECT_EQ(a.size, b.size);
  EXPECT_EQ(a.crypt_method, b.crypt_method);
  EXPECT_EQ(a.l1_size, b.l1_size);
  EXPECT_EQ(a.l1_table_offset, b.l1_table_offset);
  EXPECT_EQ(a.refcount_table_offset, b.refcount_table_offset);
  EXPECT_EQ(a.refcount_table_clusters, b.refcount_table_clusters);
  EXPECT_EQ(a.nb_snapshots, b.nb_snapshots);
  EXPECT_EQ(a.snapshots_offset, b.snapshots_offset);
  EXPECT_EQ(a.incompatible_features, b.incompatible_features);
  EXPECT_EQ(a.compatible_features, b.compatible_features);
  EXPECT_EQ(a.autoclear_features, b.autoclear_features);
  EXPECT_EQ(a.refcount_order, b.refcount_order);
  EXPECT_EQ(a.compression_type, b.compression_type);
  EXPECT_EQ(a.unknown_header_tail, b.unknown_header_tail);
  EXPECT_EQ(a.backing_file, b.backing_file);
  EXPECT_EQ(a.backing_format, b.backing_format);
  ASSERT_EQ(a.feature_names.size(), b.feature_names.size());
  for (size_t i = 0; i < a.feature_names.size(); ++i) {
    EXPECT_EQ(a.feature_names[i].type, b.feature_names[i].type);
    EXPECT_EQ(a.feature_names[i].bit, b.feature_names[i].bit);
    EXPECT_EQ(a.feature_names[i].name, b.feature_names[i].name);
  }
  ASSERT_EQ(a.bitmaps.has_value(), b.bitmaps.has_value());
  if (a.bitmaps) {
    EXPECT_EQ(a.bitmaps->nb_bitmaps, b.bitmaps->nb_bitmaps);
    EXPECT_EQ(a.bitmaps->bitmap_directory_size, b.bitmaps->bitmap_directory_size);
    EXPECT_EQ(a.bitmaps->bitmap_directory_offset, b.bitmaps->bitmap_directory_offset);
  }
  EXPECT_EQ(a.data_file, b.data_file);
  EXPECT_EQ(a.journal, b.journal);
  ASSERT_EQ(a.other_extensions.size(), b.other_extensions.size());
  for (size_t i = 0; i < a.other_extensions.size(); ++i) {
    EXPECT_EQ(a.other_extensions[i].type, b.other_extensions[i].type);
    EXPECT_EQ(a.other_extensions[i].data, b.other_extensions[i].data);
  }
}

TEST(HeaderTest, RoundTripWithEveryExtension) {
  Header h = ValidHeader();
  h.incompatible_features = kIncompatCompression | kIncompatDirty | kIncompatJournal;
  h.compatible_features = kCompatLazyRefcounts | (1ull << 40);  // unknown compatible bit is fine
  h.autoclear_features = kAutoclearBitmaps | kAutoclearJournalValid;
  h.compression_type = kCompressionZstd;
  h.refcount_order = 6;
  h.nb_snapshots = 2;
  h.snapshots_offset = 3 * h.cluster_size();
  h.backing_file = "base image.qcow2";
  h.backing_format = "qcow2";
  h.bitmaps = BitmapsExtension{1, 48, 3 * h.cluster_size()};
  h.journal = std::string("\x01\x02\0\x03jr", 6);
  h.other_extensions.push_back({0x12345678, "unknown payload, 29 bytes !!"});
  h.other_extensions.push_back({kExtCrypto, std::string(16, '\0')});
  // Up to header_length 128: 7 bytes of padding, then a future field.
  h.unknown_header_tail = std::string("\0\0\0\0\0\0\0future-field\x7f\0\0\0", 23);

  std::vector<uint8_t> bytes = ImageBytes(h);
  Result<Header> parsed = ParseHeader(bytes, FileSize(h));
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_FALSE(parsed->probe_only);
  EXPECT_EQ(parsed->header_length, 128u);  // 105 + 23
  EXPECT_EQ(parsed->backing_file_size, h.backing_file.size());
  ExpectSameHeader(h, *parsed);
  Result<std::vector<uint8_t>> again = SerializeHeader(*parsed);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(std::vector<uint8_t>(bytes.begin(), bytes.begin() + again->size()), *again);
}

TEST(HeaderTest, UnknownTailAndExtensionsFromRawBytesSurvive) {
  // Hand-made bytes: header_length 120 with a future field at 112, and an
  // unknown extension between known ones.
  Header h = ValidHeader();
  std::vector<uint8_t> img(h.cluster_size(), 0);
  Result<std::vector<uint8_t>> base = SerializeHeader(h);
  ASSERT_TRUE(base.ok());
  std::copy(base->begin(), base->begin() + 104, img.begin());
  StoreBE32(&img[100], 120);
  for (int i = 112; i < 120; ++i) img[i] = static_cast<uint8_t>(i);
  size_t off = 120;
  auto put_ext = [&](uint32_t type, const std::string& data) {
    StoreBE32(&img[off], type);
    StoreBE32(&img[off + 4], static_cast<uint32_t>(data.size()));
    std::copy(data.begin(), data.end(), img.begin() + off + 8);
    off += 8 + ((data.size() + 7) & ~size_t{7});
  };
  put_ext(kExtBackingFormat, "raw");
  put_ext(0xdeadbeef, "opaque");
  put_ext(kExtDataFile, "data.raw");
  // Marked corrupt-free data-file image.
  StoreBE64(&img[72], kIncompatDataFile);
  Result<Header> p = ParseHeader(img, FileSize(h));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->header_length, 120u);
  ASSERT_EQ(p->unknown_header_tail.size(), 15u);
  EXPECT_EQ(p->unknown_header_tail[7], 112);
  EXPECT_EQ(p->backing_format, "raw");
  EXPECT_EQ(p->data_file, "data.raw");
  EXPECT_TRUE(p->has_data_file());
  ASSERT_EQ(p->other_extensions.size(), 1u);
  EXPECT_EQ(p->other_extensions[0].type, 0xdeadbeefu);
  EXPECT_EQ(p->other_extensions[0].data, "opaque");

  Result<std::vector<uint8_t>> out = SerializeHeader(*p);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(LoadBE32(out->data() + 100), 120u);
  EXPECT_TRUE(std::equal(img.begin() + 104, img.begin() + 120, out->begin() + 104));
  Result<Header> p2 = ParseHeader(*out, out->size());
  // The serialized header alone is a "file" too short for the tables; check
  // the extensions with the real file size instead.
  std::vector<uint8_t> img2(*out);
  img2.resize(h.cluster_size(), 0);
  p2 = ParseHeader(img2, FileSize(h));
  ASSERT_TRUE(p2.ok()) << p2.status().ToString();
  ExpectSameHeader(*p, *p2);
}

TEST(HeaderTest, Version2) {
  Header h = ValidHeader();
  h.version = 2;
  h.header_length = kV2HeaderLength;
  h.feature_names.clear();
  h.backing_file = "base.img";
  std::vector<uint8_t> bytes = ImageBytes(h);
  Result<Header> p = ParseHeader(bytes, FileSize(h));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->version, 2u);
  EXPECT_EQ(p->refcount_order, 4u);
  EXPECT_EQ(p->header_length, 72u);
  EXPECT_EQ(p->backing_file, "base.img");
  EXPECT_EQ(p->backing_file_offset, 80u);  // after the end-of-extensions marker

  // v2 has no features to write.
  h.incompatible_features = kIncompatDirty;
  EXPECT_EQ(SerializeHeader(h).status().code(), Code::kInvalidArgument);
  h.incompatible_features = 0;
  h.refcount_order = 6;
  EXPECT_EQ(SerializeHeader(h).status().code(), Code::kInvalidArgument);
}

TEST(HeaderTest, SerializeRejectsWhatDoesNotFit) {
  Header h = ValidHeader(9);
  h.backing_file = std::string(400, 'b');
  h.other_extensions.push_back({0x1111, std::string(100, 'x')});
  EXPECT_EQ(SerializeHeader(h).status().code(), Code::kInvalidArgument);
  h = ValidHeader();
  h.backing_file = std::string(1024, 'b');
  EXPECT_EQ(SerializeHeader(h).status().code(), Code::kInvalidArgument);
  h = ValidHeader();
  h.other_extensions.push_back({kExtEnd, "x"});
  EXPECT_EQ(SerializeHeader(h).status().code(), Code::kInvalidArgument);
}

TEST(HeaderTest, ProbeOfFirstBytes) {
  Header h = ValidHeader();
  h.other_extensions.push_back({0x1111, std::string(1000, 'x')});
  h.backing_file = "base";
  std::vector<uint8_t> img = ImageBytes(h);
  std::span<const uint8_t> probe(img.data(), kHeaderProbeBytes);
  Result<Header> p = ParseHeader(probe, FileSize(h));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_TRUE(p->probe_only);
  EXPECT_EQ(p->cluster_bits, 16u);
  EXPECT_EQ(p->backing_file, "");
  Result<Header> full = ParseHeader(img, FileSize(h));
  ASSERT_TRUE(full.ok());
  EXPECT_FALSE(full->probe_only);
  EXPECT_EQ(full->backing_file, "base");
  // The same bytes as the whole file are not a probe: the cut is corruption.
  Result<Header> cut = ParseHeader(probe, probe.size());
  EXPECT_FALSE(cut.ok());
}

TEST(HeaderTest, DescribeFeature) {
  EXPECT_EQ(DescribeFeature({}, 0, 0), "dirty bit");
  EXPECT_EQ(DescribeFeature({}, 0, 4), "extended L2 entries");
  EXPECT_EQ(DescribeFeature({}, 1, 0), "lazy refcounts");
  EXPECT_EQ(DescribeFeature({}, 2, 0), "bitmaps");
  EXPECT_EQ(DescribeFeature({{0, 9, "shiny"}}, 0, 9), "shiny");
  EXPECT_EQ(DescribeFeature({{0, 9, "shiny"}}, 1, 9), "unknown compatible feature bit 9");
  EXPECT_EQ(DescribeFeature({}, 0, 33), "unknown incompatible feature bit 33");
  bool has_journal = false;
  for (const FeatureName& f : DefaultFeatureNames()) {
    has_journal |= f.type == 0 && f.bit == 16;
  }
  EXPECT_TRUE(has_journal);
}

// ---- Malformed headers ----------------------------------------------------

struct BadCase {
  std::string name;
  std::function<void(std::vector<uint8_t>&, Header&)> mutate;
  Code code;
  std::vector<std::string> in_message;
  uint32_t cluster_bits = 16;
};

void Put32(std::vector<uint8_t>& b, size_t at, uint32_t v) { StoreBE32(&b[at], v); }
void Put64(std::vector<uint8_t>& b, size_t at, uint64_t v) { StoreBE64(&b[at], v); }

// Re-serializes from a modified Header (for cases where the bytes are easier
// to get right that way).
void Reserialize(std::vector<uint8_t>& b, const Header& h) {
  Result<std::vector<uint8_t>> s = SerializeHeader(h);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  std::fill(b.begin(), b.end(), 0);
  std::copy(s->begin(), s->end(), b.begin());
}

// Offset of the first extension in a ValidHeader image (header_length 112).
constexpr size_t kFirstExt = 112;

std::vector<BadCase> BadCases() {
  const uint64_t cs = 65536;
  return {
      {"magic", [](auto& b, auto&) { b[3] = 0xfc; }, Code::kCorruption, {"magic", "0x514649fc"}},
      {"version1", [](auto& b, auto&) { Put32(b, 4, 1); }, Code::kNotSupported, {"version 1"}},
      {"version4", [](auto& b, auto&) { Put32(b, 4, 4); }, Code::kNotSupported, {"version 4"}},
      {"cluster_bits_small", [](auto& b, auto&) { Put32(b, 20, 8); }, Code::kCorruption,
       {"cluster_bits 8"}},
      {"cluster_bits_big", [](auto& b, auto&) { Put32(b, 20, 22); }, Code::kNotSupported,
       {"cluster_bits 22"}},
      {"header_length_short", [](auto& b, auto&) { Put32(b, 100, 96); }, Code::kCorruption,
       {"header_length 96"}},
      {"header_length_unaligned", [](auto& b, auto&) { Put32(b, 100, 108); }, Code::kCorruption,
       {"header_length", "multiple of 8"}},
      {"header_length_past_cluster", [](auto& b, auto&) { Put32(b, 100, 0x10008); },
       Code::kCorruption, {"header_length 65544", "cluster_size"}},
      {"refcount_order", [](auto& b, auto&) { Put32(b, 96, 7); }, Code::kCorruption,
       {"refcount_order 7"}},
      {"crypt_method", [](auto& b, auto&) { Put32(b, 32, 2); }, Code::kNotSupported,
       {"crypt_method", "encrypted images are not supported"}},
      {"size", [](auto& b, auto&) { Put64(b, 24, (1ull << 61) + 1); }, Code::kNotSupported,
       {"header field size"}},
      {"l1_size_max", [](auto& b, auto&) { Put32(b, 36, (32u << 20) / 8 + 1); },
       Code::kNotSupported, {"l1_size"}},
      {"l1_size_small", [](auto& b, auto&) { Put32(b, 36, 1); }, Code::kCorruption,
       {"l1_size", "too small"}},
      {"l1_table_offset_unaligned", [cs](auto& b, auto&) { Put64(b, 40, 2 * cs + 0x200); },
       Code::kCorruption, {"l1_table_offset 0x20200 is not aligned to cluster_size 65536"}},
      {"l1_table_offset_past_eof", [cs](auto& b, auto&) { Put64(b, 40, 4 * cs); },
       Code::kCorruption, {"l1_table_offset 0x40000", "end of the file"}},
      {"l1_table_offset_overflow", [](auto& b, auto&) { Put64(b, 40, 0xffffffffffff0000ull); },
       Code::kCorruption, {"l1_table_offset"}},
      {"l1_table_offset_zero", [](auto& b, auto&) { Put64(b, 40, 0); }, Code::kCorruption,
       {"l1_table_offset", "overlaps the image header"}},
      {"refcount_table_offset_unaligned", [cs](auto& b, auto&) { Put64(b, 48, cs + 8); },
       Code::kCorruption, {"refcount_table_offset", "aligned"}},
      {"refcount_table_offset_past_eof", [cs](auto& b, auto&) { Put64(b, 48, 10 * cs); },
       Code::kCorruption, {"refcount_table_offset"}},
      {"refcount_table_clusters_zero", [](auto& b, auto&) { Put32(b, 56, 0); }, Code::kCorruption,
       {"refcount_table_clusters"}},
      {"refcount_table_clusters_huge", [](auto& b, auto&) { Put32(b, 56, 129); },
       Code::kNotSupported, {"refcount_table_clusters 129"}},
      {"refcount_table_past_eof", [](auto& b, auto&) { Put32(b, 56, 4); }, Code::kCorruption,
       {"refcount_table_offset", "end of the file"}},
      {"nb_snapshots", [](auto& b, auto&) { Put32(b, 60, 65537); }, Code::kNotSupported,
       {"nb_snapshots 65537"}},
      {"snapshots_offset_unaligned",
       [cs](auto& b, auto&) {
         Put32(b, 60, 1);
         Put64(b, 64, 3 * cs + 512);
       },
       Code::kCorruption, {"snapshots_offset", "aligned"}},
      {"snapshots_offset_past_eof",
       [cs](auto& b, auto&) {
         Put32(b, 60, 1);
         Put64(b, 64, 4 * cs);
       },
       Code::kCorruption, {"snapshots_offset"}},
      {"compression_type_unknown", [](auto& b, auto&) { b[104] = 2; }, Code::kNotSupported,
       {"compression_type 2"}},
      {"compression_type_without_bit", [](auto& b, auto&) { b[104] = 1; }, Code::kCorruption,
       {"compression_type", "bit 3"}},
      {"compression_bit_without_type", [](auto& b, auto&) { Put64(b, 72, kIncompatCompression); },
       Code::kCorruption, {"compression_type", "bit 3"}},
      {"unknown_incompatible_bit", [](auto& b, auto&) { Put64(b, 72, 1ull << 5); },
       Code::kNotSupported,
       {"incompatible_features", "bit 5", "unknown incompatible feature bit 5"}},
      {"unknown_incompatible_bit_named",
       [](auto& b, Header& h) {
         h.incompatible_features = 1ull << 40;
         h.feature_names.push_back({0, 40, "time travel"});
         Reserialize(b, h);
       },
       Code::kNotSupported, {"bit 40", "time travel"}},
      {"extended_l2_small_clusters",
       [](auto& b, Header& h) {
         h.incompatible_features = kIncompatExtendedL2;
         Reserialize(b, h);
       },
       Code::kCorruption, {"cluster_bits", "extended L2"}, 13},
      {"raw_data_without_data_file", [](auto& b, auto&) { Put64(b, 88, kAutoclearDataFileRaw); },
       Code::kCorruption, {"autoclear_features"}},
      {"extension_past_cluster",
       [](auto& b, auto&) {
         Put32(b, kFirstExt, 0x1234);
         Put32(b, kFirstExt + 4, 0x10000);
       },
       Code::kCorruption, {"header extension 0x1234", "offset 0x70", "length 65536"}},
      {"extension_header_straddles_area_end",
       [](auto& b, Header& h) {
         // The backing file name bounds the extension area; an extension
         // header may not straddle it.
         h.feature_names.clear();
         h.other_extensions.push_back({0x1234, ""});
         Reserialize(b, h);
         Put32(b, 0x78, 0x4321);
         Put64(b, 8, 0x7c);
         Put32(b, 16, 4);
       },
       Code::kCorruption, {"header extension at offset 0x78", "extension area 0x7c"}},
      {"feature_table_length",
       [](auto& b, auto&) { Put32(b, kFirstExt + 4, 50); },  // first ext is the feature table
       Code::kCorruption, {"feature name table", "offset 0x70", "multiple of 48"}},
      {"feature_table_bit",
       [](auto& b, auto&) { b[kFirstExt + 8 + 1] = 64; }, Code::kCorruption,
       {"feature name table", "bit number 64"}},
      {"duplicate_extension",
       [](auto& b, Header& h) {
         h.feature_names.clear();
         h.other_extensions.push_back({kExtBackingFormat, "raw"});
         h.backing_format = "qcow2";
         Reserialize(b, h);
       },
       Code::kCorruption, {"backing file format", "offset 0x80", "more than once"}},
      {"bitmaps_length",
       [](auto& b, Header& h) {
         h.feature_names.clear();
         h.other_extensions.push_back({kExtBitmaps, std::string(16, '\0')});
         Reserialize(b, h);
       },
       Code::kCorruption, {"bitmaps", "offset 0x70", "length 16"}},
      {"bitmaps_unaligned_directory",
       [](auto& b, Header& h) {
         h.autoclear_features = kAutoclearBitmaps;
         h.bitmaps = BitmapsExtension{1, 32, 3 * cs + 8};
         Reserialize(b, h);
       },
       Code::kCorruption, {"bitmaps", "bitmap_directory_offset", "aligned"}},
      {"bitmaps_zero_count",
       [](auto& b, Header& h) {
         h.autoclear_features = kAutoclearBitmaps;
         h.bitmaps = BitmapsExtension{0, 32, 3 * cs};
         Reserialize(b, h);
       },
       Code::kCorruption, {"bitmaps", "nb_bitmaps"}},
      {"backing_file_size",
       [](auto& b, auto&) {
         Put64(b, 8, 0x1000);
         Put32(b, 16, 1024);
       },
       Code::kCorruption, {"backing_file_size", "1023"}},
      {"backing_file_offset_past_cluster",
       [](auto& b, auto&) {
         Put64(b, 8, 0xfff0);
         Put32(b, 16, 100);
       },
       Code::kCorruption, {"backing_file_offset 0xfff0"}},
      {"backing_file_offset_in_header",
       [](auto& b, auto&) {
         Put64(b, 8, 40);
         Put32(b, 16, 8);
       },
       Code::kCorruption, {"backing_file_offset 0x28", "overlaps the header"}},
      {"truncated", [](auto& b, auto&) { b.resize(50); }, Code::kCorruption, {"truncated"}},
      {"truncated_v3", [](auto& b, auto&) { b.resize(90); }, Code::kCorruption, {"truncated"}},
  };
}

TEST(HeaderTest, MalformedHeadersNameTheField) {
  for (const BadCase& c : BadCases()) {
    SCOPED_TRACE(c.name);
    Header h = ValidHeader(c.cluster_bits);
    std::vector<uint8_t> img = ImageBytes(h);
    ASSERT_TRUE(ParseHeader(img, FileSize(h)).ok());
    c.mutate(img, h);
    Result<Header> p = ParseHeader(img, FileSize(h));
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), c.code) << p.status().ToString();
    for (const std::string& s : c.in_message) {
      EXPECT_NE(p.status().message().find(s), std::string::npos)
          << "'" << s << "' not in: " << p.status().message();
    }
  }
}

TEST(HeaderTest, AcceptedEdgeCases) {
  // External data file bit without a name: QEMU needs an option, we record it.
  Header h = ValidHeader();
  h.incompatible_features = kIncompatDataFile;
  std::vector<uint8_t> img = ImageBytes(h);
  Result<Header> p = ParseHeader(img, FileSize(h));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_TRUE(p->has_data_file());
  EXPECT_FALSE(p->data_file.has_value());

  // A stale bitmaps extension (autoclear bit cleared by a bitmap-unaware
  // writer) is not used, so its contents are not validated; it is kept.
  h = ValidHeader();
  h.bitmaps = BitmapsExtension{0, 0, 12345};
  h.autoclear_features = 0;
  img = ImageBytes(h);
  p = ParseHeader(img, FileSize(h));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_FALSE(p->bitmaps.has_value());
  ASSERT_EQ(p->other_extensions.size(), 1u);
  EXPECT_EQ(p->other_extensions[0].type, kExtBitmaps);
  EXPECT_EQ(p->other_extensions[0].data.size(), 24u);
  h.autoclear_features = kAutoclearBitmaps;
  img = ImageBytes(h);
  EXPECT_FALSE(ParseHeader(img, FileSize(h)).ok());

  // Empty image: no L1 entries needed, offset only has to be aligned.
  h = ValidHeader();
  h.size = 0;
  h.l1_size = 0;
  h.l1_table_offset = 0;
  img = ImageBytes(h);
  EXPECT_TRUE(ParseHeader(img, FileSize(h)).ok());

  // Extended L2 at 16 KiB clusters: half as many entries per table.
  h = ValidHeader(14);
  h.incompatible_features = kIncompatExtendedL2;
  EXPECT_EQ(h.l2_entries(), 1024u);
  h.l1_size = static_cast<uint32_t>(h.size / (16384ull * 1024));
  img = ImageBytes(h);
  EXPECT_TRUE(ParseHeader(img, FileSize(h)).ok());
  h.l1_size -= 1;
  img = ImageBytes(h);
  EXPECT_FALSE(ParseHeader(img, FileSize(h)).ok());

  // No end-of-extensions marker before the end of the cluster (QEMU accepts it).
  h = ValidHeader(9);
  h.size = 1 << 20;
  h.l1_size = 32;
  h.feature_names.clear();
  h.other_extensions.push_back({0x4242, std::string(512 - 112 - 8 - 8, 'z')});
  img = ImageBytes(h);
  ASSERT_EQ(LoadBE32(&img[504]), 0u);  // where the end marker would be
  StoreBE32(&img[504], 0);
  p = ParseHeader(img, FileSize(h));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->other_extensions.size(), 1u);
}

// Random corruption of a valid header never crashes the parser (ASan/UBSan
// runs make this meaningful) and what it accepts serializes again.
TEST(HeaderTest, RandomCorruptionNeverCrashes) {
  std::mt19937 rng(7);
  Header h = ValidHeader(12);
  h.backing_file = "backing";
  h.backing_format = "qcow2";
  h.other_extensions.push_back({0x5555, "payload"});
  const std::vector<uint8_t> good = ImageBytes(h);
  int accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<uint8_t> img = good;
    const int flips = 1 + rng() % 4;
    for (int i = 0; i < flips; ++i) img[rng() % 400] ^= static_cast<uint8_t>(1u << (rng() % 8));
    Result<Header> p = ParseHeader(img, FileSize(h));
    if (!p.ok()) {
      EXPECT_FALSE(p.status().message().empty());
      continue;
    }
    ++accepted;
    Result<std::vector<uint8_t>> s = SerializeHeader(*p);
    if (s.ok()) {
      std::vector<uint8_t> again = *s;
      again.resize(std::max<size_t>(again.size(), p->cluster_size()), 0);
      EXPECT_TRUE(ParseHeader(again, std::max<uint64_t>(FileSize(*p), FileSize(h))).ok());
    }
  }
  EXPECT_GT(accepted, 0);
}

}  // namespace
}  // namespace qcow2j
