// Salvage: the active L1 table, each L2 table it names, each cluster each L2
// entry names, in guest order. Every pointer is judged before it is
// followed: cluster aligned, inside the file, not the header, and owned (in
// the checker's map) by the kind of structure the pointer says it is. Any
// failure loses the guest range behind the pointer and nothing else; no
// pointer is trusted because a refcount says so (the refcounts may be what
// is destroyed).
#include "recovery/salvage.h"

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "metadata/endian.h"
#include "metadata/l2_entry.h"
#include "metadata/zero_bytes.h"

namespace qcow2j {

namespace {

bool AllZero(const uint8_t* p, size_t n) { return BufferIsZero(p, n); }

uint64_t ClusterBytes(uint64_t clusters, uint32_t cluster_bits) {
  return clusters >= (UINT64_MAX >> cluster_bits) ? UINT64_MAX : clusters << cluster_bits;
}

}  // namespace

struct Salvager::Copy {
  Image* out = nullptr;
  const ClusterDecompressor* decompress = nullptr;
  SalvageReport* report = nullptr;
  bool backing = false;  // unallocated reads the backing file: zeros must be written
  uint64_t size = 0;     // virtual size
  uint64_t zeroed_lost = 0;
  bool unzeroed_lost = false;
  uint64_t last_lost_cluster = UINT64_MAX;
  // Per lost range: clusters merged into it for another reason than its own.
  std::vector<uint64_t> other_reasons;
  std::vector<uint8_t> table, data, packed;
  // Host data already copied once. Two active L2 entries never share a
  // cluster in a sound image (sharing is between the active image and
  // snapshots), so a second reference is damage: only the first is copied.
  // This also bounds the output by the input (one cluster aliased a million
  // times would otherwise be written a million times).
  std::vector<bool> data_seen;
  std::unordered_set<uint64_t> compressed_seen;
};

Result<std::unique_ptr<Salvager>> Salvager::Open(File* src, const SalvageOptions& opts) {
  std::unique_ptr<Salvager> s(new Salvager(src, opts));
  QCOW2J_RETURN_IF_ERROR(s->Init());
  return s;
}

Status Salvager::Init() {
  QCOW2J_ASSIGN_OR_RETURN(file_size_, src_->Size());
  QCOW2J_ASSIGN_OR_RETURN(h_, ReadHeaderAsStored(src_, file_size_));
  if (h_.crypt_method) return Status::NotSupported("salvaging an encrypted image is not supported");
  if (h_.has_data_file()) {
    return Status::NotSupported(
        "the image keeps its guest data in an external data file: copy that file instead");
  }
  cb_ = h_.cluster_bits;
  cs_ = h_.cluster_size();
  if (!h_.backing_file.empty()) {
    if (h_.backing_file_offset > file_size_ ||
        h_.backing_file_size > file_size_ - h_.backing_file_offset) {
      early_notes_.push_back("the backing file name at " + HexStr(h_.backing_file_offset) + " (" +
                             std::to_string(h_.backing_file_size) +
                             " bytes) runs past the end of the file: the new image has no "
                             "backing file");
      h_.backing_file.clear();
      h_.backing_format.reset();
    } else if (size_t nul = h_.backing_file.find('\0'); nul != std::string::npos) {
      // QEMU reads the name as a C string.
      h_.backing_file.resize(nul);
      if (h_.backing_file.empty()) h_.backing_format.reset();
    }
  }
  ScanOptions quiet;
  quiet.keep_messages = false;  // only the cluster owners are used
  auto scan = ScanImage(src_, quiet);
  if (scan.ok()) {
    owners_ = std::move((*scan)->owners);
  } else {
    early_notes_.push_back("the metadata walk failed (" + scan.status().message() +
                           "): data clusters are not checked against other metadata");
  }
  if (h_.nb_snapshots) {
    early_notes_.push_back(std::to_string(h_.nb_snapshots) +
                           " internal snapshot(s) are not salvaged: only the active image is");
  }
  if (h_.bitmaps) early_notes_.push_back("persistent dirty bitmaps are not salvaged");
  return Status::OK();
}

void Salvager::Note(SalvageReport* report, const std::string& line) {
  report->notes.push_back(line);
  if (opts_.on_message) opts_.on_message(line);
}

std::string Salvager::CheckCluster(uint64_t offset, ClusterUse use) const {
  if (offset & (cs_ - 1)) return "is not cluster aligned";
  if (offset < cs_) return "points at the image header";
  if (offset >= file_size_) return "points past the end of the file";
  const uint64_t k = offset >> cb_;
  const ClusterUse owner = k < owners_.size() ? owners_[k] : ClusterUse::kFree;
  if (owner != use && owner != ClusterUse::kFree) {
    return std::string("points at a cluster of the ") + ClusterUseName(owner);
  }
  return "";
}

std::string Salvager::ReadSource(uint64_t offset, uint8_t* dst, size_t len) {
  Status s = src_->Read(offset, dst, len);
  return s.ok() ? "" : s.message();
}

Status Salvager::Lose(Copy& c, uint64_t guest, uint64_t len, std::string reason) {
  if (len == 0) return Status::OK();
  std::vector<LostRange>& lost = c.report->lost;
  if (!lost.empty() && lost.back().guest_offset + lost.back().length == guest) {
    lost.back().length += len;
    if (reason != lost.back().reason) ++c.other_reasons.back();
  } else {
    LostRange r;
    r.guest_offset = guest;
    r.length = len;
    r.reason = std::move(reason);
    lost.push_back(std::move(r));
    c.other_reasons.push_back(0);
  }
  uint64_t first = guest >> cb_;
  const uint64_t last = (guest + len - 1) >> cb_;
  if (first == c.last_lost_cluster) ++first;
  if (first <= last) c.report->lost_clusters += last - first + 1;
  c.last_lost_cluster = last;
  if (!c.backing) return Status::OK();
  // Zeros over lost ranges keep them from reading the backing file's stale
  // data. A hostile header can claim a petabyte disk: the budget counts
  // clusters (L2 entries to write), so it costs the same at any cluster size.
  const uint64_t budget = ClusterBytes(opts_.max_zeroed_lost_clusters, cb_);
  const uint64_t n = std::min(len, budget - std::min(budget, c.zeroed_lost));
  if (n < len) c.unzeroed_lost = true;
  if (n == 0) return Status::OK();
  c.zeroed_lost += n;
  return c.out->WriteZeroes(guest, n, true);
}

Status Salvager::CopyTo(Image* out, const ClusterDecompressor& decompress, SalvageReport* report) {
  for (const std::string& n : early_notes_) Note(report, n);
  Copy c;
  c.out = out;
  c.decompress = &decompress;
  c.report = report;
  c.backing = !h_.backing_file.empty();
  c.size = h_.size;
  c.data_seen.assign((file_size_ >> cb_) + 1, false);
  report->virtual_size = h_.size;
  report->cluster_size = cs_;

  const uint64_t cover = h_.l2_entries() << cb_;  // guest bytes behind one L1 entry
  const uint64_t entries = std::min<uint64_t>(h_.l1_size, (h_.size + cover - 1) / cover);
  if (entries == 0) return Status::OK();
  const uint64_t mapped = std::min(entries * cover, h_.size);
  const uint64_t l1 = h_.l1_table_offset;
  std::string bad;
  if (entries * 8 > kMaxL1Bytes) {
    bad = "the L1 table size " + std::to_string(h_.l1_size) + " exceeds the maximum";
  } else if (l1 & (cs_ - 1)) {
    bad = "the L1 table offset " + HexStr(l1) + " is not cluster aligned";
  } else if (l1 < cs_) {
    bad = "the L1 table offset " + HexStr(l1) + " points at the image header";
  } else if (l1 >= file_size_) {
    bad = "the L1 table at " + HexStr(l1) + " lies past the end of the file";
  }
  std::vector<uint8_t> table;
  uint64_t inside = 0;  // L1 entries that lie inside the file
  if (bad.empty()) {
    inside = std::min(entries, (file_size_ - l1) / 8);
    table.resize(inside * 8);
    std::string err = ReadSource(l1, table.data(), table.size());
    if (!err.empty()) bad = "reading the L1 table at " + HexStr(l1) + ": " + err;
  }
  if (!bad.empty()) {
    QCOW2J_RETURN_IF_ERROR(Lose(c, 0, mapped, bad));
  } else {
    for (uint64_t i = 0; i < entries; ++i) {
      const uint64_t base = i * cover;
      if (i >= inside) {
        QCOW2J_RETURN_IF_ERROR(Lose(c, base, std::min(cover, h_.size - base),
                                    "L1 entry " + std::to_string(i) +
                                        " lies past the end of the file"));
        continue;
      }
      const uint64_t raw = LoadBE64(table.data() + 8 * i);
      if (raw != 0) QCOW2J_RETURN_IF_ERROR(CopyL2Range(c, i, raw));
    }
  }
  for (size_t i = 0; i < c.other_reasons.size(); ++i) {
    if (c.other_reasons[i]) {
      report->lost[i].reason +=
          " (and " + std::to_string(c.other_reasons[i]) + " more entries with other problems)";
    }
  }
  if (c.unzeroed_lost) {
    const uint64_t max = opts_.max_zeroed_lost_clusters;
    const uint64_t bytes = ClusterBytes(max, cb_);
    const std::string size = bytes >= (1 << 20) ? std::to_string(bytes >> 20) + " MiB"
                                                 : std::to_string(bytes >> 10) + " KiB";
    Note(report, "lost ranges past the first " + std::to_string(max) + " clusters (" + size +
                     ") were left unallocated: in the output they read from the backing file");
  }
  return Status::OK();
}

Status Salvager::CopyL2Range(Copy& c, uint64_t l1_index, uint64_t l1_raw) {
  const uint64_t cover = h_.l2_entries() << cb_;
  const uint64_t base = l1_index * cover;
  const uint64_t len = std::min(cover, c.size - base);
  const std::string who = "L1 entry " + std::to_string(l1_index);
  if (l1_raw & kL1ReservedMask) {
    return Lose(c, base, len, who + " (" + HexStr(l1_raw) + ") has reserved bits set");
  }
  const uint64_t l2 = l1_raw & kL1OffsetMask;
  std::string why = CheckCluster(l2, ClusterUse::kL2);
  if (!why.empty()) return Lose(c, base, len, who + ": L2 table " + HexStr(l2) + " " + why);
  c.table.resize(cs_);
  why = ReadSource(l2, c.table.data(), cs_);
  if (!why.empty()) return Lose(c, base, len, "reading the L2 table at " + HexStr(l2) + ": " + why);
  const uint64_t esize = h_.extended_l2() ? 16 : 8;
  for (uint64_t j = 0; j < h_.l2_entries(); ++j) {
    const uint64_t guest = base + (j << cb_);
    if (guest >= c.size) break;
    const uint8_t* p = c.table.data() + j * esize;
    const uint64_t raw = LoadBE64(p);
    const uint64_t bitmap = h_.extended_l2() ? LoadBE64(p + 8) : 0;
    QCOW2J_RETURN_IF_ERROR(CopyCluster(c, guest, l2 + j * esize, raw, bitmap));
  }
  return Status::OK();
}

Status Salvager::CopyCompressed(Copy& c, uint64_t guest, uint64_t where, uint64_t raw) {
  const uint64_t len = std::min(cs_, c.size - guest);
  const CompressedDescriptor d = CompressedDescriptor::Decode(raw, cb_);
  const uint64_t host = d.host_offset, size = d.compressed_size();
  const std::string who = "compressed L2 entry at " + HexStr(where) + ": data at " + HexStr(host);
  if (host < cs_) return Lose(c, guest, len, who + " points at the image header");
  if (host >= file_size_) return Lose(c, guest, len, who + " points past the end of the file");
  if (!c.compressed_seen.insert(host).second) {
    return Lose(c, guest, len, who + " is mapped at another guest offset too");
  }
  for (uint64_t k = host >> cb_; k <= (host + size - 1) >> cb_ && k < owners_.size(); ++k) {
    const ClusterUse owner = owners_[k];
    if (owner != ClusterUse::kCompressed && owner != ClusterUse::kFree) {
      return Lose(c, guest, len, who + " overlaps a cluster of the " + ClusterUseName(owner));
    }
  }
  c.packed.resize(size);
  std::string err = ReadSource(host, c.packed.data(), size);
  if (!err.empty()) return Lose(c, guest, len, who + ": " + err);
  c.data.resize(cs_);
  Status s = (*c.decompress)(h_.compression_type, c.packed, c.data);
  if (!s.ok()) return Lose(c, guest, len, who + " does not decompress: " + s.message());
  ++c.report->data_clusters;
  if (!c.backing && AllZero(c.data.data(), len)) return Status::OK();
  return c.out->Write(guest, c.data.data(), len);
}

Status Salvager::CopyCluster(Copy& c, uint64_t guest, uint64_t where, uint64_t raw,
                             uint64_t bitmap) {
  if (raw == 0 && bitmap == 0) return Status::OK();
  const uint64_t len = std::min(cs_, c.size - guest);
  const bool ext = h_.extended_l2();
  const L2Entry e = L2Entry::Decode(raw, bitmap, ext, false);
  if (e.compressed()) return CopyCompressed(c, guest, where, raw);
  const std::string who = "L2 entry at " + HexStr(where);
  if (e.reserved_bits()) return Lose(c, guest, len, who + " (" + HexStr(raw) + ") has reserved bits set");

  // What each subcluster reads as (a standard entry is one subcluster).
  const unsigned subclusters = ext ? kSubclustersPerCluster : 1;
  const uint64_t sc_size = cs_ / subclusters;
  SubclusterType type[kSubclustersPerCluster];
  bool any_data = false;
  for (unsigned sc = 0; sc < subclusters; ++sc) {
    if (!ext) {
      const ClusterType t = e.type();
      type[sc] = t == ClusterType::kNormal ? SubclusterType::kNormal
                 : t == ClusterType::kUnallocated ? SubclusterType::kUnallocated
                                                  : SubclusterType::kZero;
    } else {
      type[sc] = e.subcluster_type(sc);
    }
    any_data |= type[sc] == SubclusterType::kNormal;
  }
  std::string data_lost;  // why the data subclusters cannot be read
  if (any_data) {
    const uint64_t host = e.host_offset();
    data_lost = CheckCluster(host, ClusterUse::kData);
    if (data_lost.empty() && c.data_seen[host >> cb_]) {
      data_lost = "is mapped at another guest offset too";
    }
    if (!data_lost.empty()) {
      data_lost = who + ": data cluster " + HexStr(host) + " " + data_lost;
    } else {
      c.data_seen[host >> cb_] = true;
      c.data.resize(cs_);
      std::string err = ReadSource(host, c.data.data(), cs_);
      if (!err.empty()) data_lost = who + ": reading data cluster " + HexStr(host) + ": " + err;
    }
  }
  // Runs of subclusters that need the same action, clipped to the disk's end.
  enum Action { kSkip, kData, kZero, kLost };
  auto action = [&](unsigned sc) {
    switch (type[sc]) {
      case SubclusterType::kNormal: return data_lost.empty() ? kData : kLost;
      case SubclusterType::kZero: return kZero;
      case SubclusterType::kUnallocated: return kSkip;
      case SubclusterType::kInvalid: return kLost;
    }
    return kLost;
  };
  bool copied = false, zeroed = false;
  for (unsigned a = 0; a < subclusters;) {
    const Action act = action(a);
    unsigned b = a + 1;
    while (b < subclusters && action(b) == act) ++b;
    const uint64_t from = a * sc_size, to = std::min<uint64_t>(b * sc_size, len);
    a = b;
    if (from >= to) break;
    switch (act) {
      case kSkip: break;
      case kData:
        copied = true;
        if (c.backing || !AllZero(c.data.data() + from, to - from)) {
          QCOW2J_RETURN_IF_ERROR(c.out->Write(guest + from, c.data.data() + from, to - from));
        }
        break;
      case kZero:
        zeroed = true;
        if (c.backing) QCOW2J_RETURN_IF_ERROR(c.out->WriteZeroes(guest + from, to - from, true));
        break;
      case kLost:
        QCOW2J_RETURN_IF_ERROR(Lose(c, guest + from, to - from,
                                    data_lost.empty() ? who + " (bitmap " + HexStr(bitmap) +
                                                            ") has an inconsistent subcluster bitmap"
                                                      : data_lost));
        break;
    }
  }
  if (copied) {
    ++c.report->data_clusters;
  } else if (zeroed) {
    ++c.report->zero_clusters;
  }
  return Status::OK();
}

}  // namespace qcow2j
