#include "qcow2/offline_image.h"

#include <algorithm>
#include <cerrno>

#include "metadata/endian.h"
#include "metadata/hex.h"
#include "metadata/l2_entry.h"
#include "metadata/refcount_block.h"
#include "journal/journal_ring.h"

namespace qcow2j {

namespace {

uint64_t AlignUp8(uint64_t v) { return (v + 7) & ~7ull; }

}  // namespace

Status ReadL1(OfflineImage& im, uint64_t offset, uint32_t size, const std::string& what,
              std::vector<uint64_t>* out) {
  uint64_t bytes = uint64_t{size} * 8;
  if (bytes > kMaxL1Bytes)
    return Status::Corruption(what + " l1_size " + std::to_string(size) + " exceeds the maximum");
  if (bytes && ((offset & (im.cs - 1)) || offset == 0 || offset > im.file_size ||
                bytes > im.file_size - offset))
    return Status::Corruption(what + " at " + Hex(offset) + " (l1_size " + std::to_string(size) +
                              ") is unaligned or outside the file");
  std::vector<uint8_t> raw(bytes);
  if (bytes) QCOW2J_RETURN_IF_ERROR(im.file->Read(offset, raw.data(), bytes));
  out->resize(size);
  for (uint32_t i = 0; i < size; i++) (*out)[i] = LoadBE64(raw.data() + 8 * uint64_t{i});
  return Status::OK();
}

Result<OfflineImage> OpenOffline(const std::string& path, Env* env, bool writable) {
  OfflineImage im;
  im.path = path;
  if (!env) env = Env::Default();
  QCOW2J_ASSIGN_OR_RETURN(im.file, env->Open(path, writable ? 0u : unsigned{kOpenReadOnly}));
  QCOW2J_ASSIGN_OR_RETURN(im.file_size, im.file->Size());
  std::vector<uint8_t> buf(std::min<uint64_t>(im.file_size, kHeaderProbeBytes));
  QCOW2J_RETURN_IF_ERROR(im.file->Read(0, buf.data(), buf.size()));
  if (buf.size() < 4 || LoadBE32(buf.data()) != kQcowMagic)
    return Status::NotSupported("'" + path + "' is not a qcow2 image");
  if (buf.size() >= 24) {
    uint32_t bits = LoadBE32(buf.data() + 20);
    if (bits >= kMinClusterBits && bits <= kMaxClusterBits) {
      buf.resize(std::min<uint64_t>(im.file_size, 1ull << bits));
      QCOW2J_RETURN_IF_ERROR(im.file->Read(0, buf.data(), buf.size()));
    }
  }
  QCOW2J_ASSIGN_OR_RETURN(im.h, ParseHeader(buf, im.file_size));
  im.cb = im.h.cluster_bits;
  im.cs = im.h.cluster_size();
  im.l2_entry_bytes = im.h.extended_l2() ? 16 : 8;

  if (writable) {
    uint64_t inc = im.h.incompatible_features;
    if (inc & kIncompatJournal)
      return Status::Busy("image '" + path +
                          "' has journal transactions that are not checkpointed (incompatible "
                          "bit 16); open it read-write with qcow2j to recover it first");
    if (inc & kIncompatDirty)
      return Status::Busy("image '" + path +
                          "' has the dirty bit set (lazy refcounts); its refcounts must be "
                          "rebuilt first (check -r all)");
    if (inc & kIncompatCorrupt)
      return Status::Corruption("image '" + path +
                                "' is marked corrupt (incompatible bit 1); repair it first "
                                "(check -r all)");
  }

  if (im.h.nb_snapshots) {
    uint64_t max_entry = 40 + kMaxSnapshotExtraData + 2 * 65535 + 8;
    if (im.h.snapshots_offset >= im.file_size)
      return Status::Corruption("header field snapshots_offset " + Hex(im.h.snapshots_offset) +
                                " is outside the file");
    uint64_t want = std::min<uint64_t>({uint64_t{im.h.nb_snapshots} * max_entry,
                                        kMaxSnapshotTableBytes,
                                        im.file_size - im.h.snapshots_offset});
    std::vector<uint8_t> table(want);
    QCOW2J_RETURN_IF_ERROR(im.file->Read(im.h.snapshots_offset, table.data(), table.size()));
    QCOW2J_ASSIGN_OR_RETURN(im.snapshots,
                            ParseSnapshotTable(table, im.h.nb_snapshots, im.cb, im.file_size));
    // The table's size as QEMU counts it (entries 8-aligned, the last one
    // without padding); the parser has checked every entry is inside.
    uint64_t off = 0;
    for (uint32_t i = 0; i < im.h.nb_snapshots; i++) {
      off = AlignUp8(off);
      const uint8_t* p = table.data() + off;
      off += 40 + uint64_t{LoadBE32(p + 36)} + LoadBE16(p + 12) + LoadBE16(p + 14);
    }
    im.table_bytes = off;
    // Entries from before QEMU 2.x have no disk size: QEMU takes the current
    // size and writes it back with the table, and so do we.
    for (SnapshotEntry& e : im.snapshots)
      if (e.disk_size == 0) e.disk_size = im.h.size;
  }
  QCOW2J_RETURN_IF_ERROR(ReadL1(im, im.h.l1_table_offset, im.h.l1_size, "active L1 table", &im.l1));
  return im;
}

// Writes `bytes` at header offset `at` and syncs: the fields of one switch
// share a sector, so the switch is atomic.
Status WriteHeaderField(OfflineImage& im, uint64_t at, const std::vector<uint8_t>& bytes) {
  QCOW2J_RETURN_IF_ERROR(im.file->Write(at, bytes.data(), bytes.size()));
  return im.file->Sync();
}

Status RewriteHeader(OfflineImage& im, const Header& h) {
  auto bytes = SerializeHeader(h);
  if (!bytes.ok()) {
    return Status::FromErrno(ENOSPC, "the header of '" + im.path + "' does not fit in its first "
                                     "cluster: " + bytes.status().message());
  }
  // One write of the whole first cluster: the bytes past the new header are
  // zeros, so nothing of a longer old header (extensions, backing name)
  // stays behind for a reader to misparse.
  std::vector<uint8_t> cluster = std::move(bytes).value();
  cluster.resize(std::max<uint64_t>(cluster.size(), im.cs), 0);
  QCOW2J_RETURN_IF_ERROR(im.file->Write(0, cluster.data(), cluster.size()));
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  im.h = h;
  return Status::OK();
}

// A RefcountManager for allocations (appended at the end of the file). It
// may grow the refcount table; the header follows through the callback.
std::unique_ptr<RefcountManager> NewAllocator(OfflineImage& im) {
  RefcountManager::Config c;
  c.file = im.file.get();
  c.cluster_bits = im.cb;
  c.refcount_order = im.h.refcount_order;
  c.refcount_table_offset = im.h.refcount_table_offset;
  c.refcount_table_clusters = im.h.refcount_table_clusters;
  c.file_size = im.file_size;
  c.update_header = [&im](uint64_t offset, uint32_t clusters) {
    std::vector<uint8_t> b(12);
    StoreBE64(b.data(), offset);
    StoreBE32(b.data() + 8, clusters);
    QCOW2J_RETURN_IF_ERROR(WriteHeaderField(im, kHdrRefcountTable, b));
    im.h.refcount_table_offset = offset;
    im.h.refcount_table_clusters = clusters;
    return Status::OK();
  };
  return std::make_unique<RefcountManager>(c);
}

// Allocates runs of clusters for each byte count in `sizes` (0: none, offset
// 0), makes their refcounts durable and returns their offsets.
Result<std::vector<uint64_t>> AllocateRuns(OfflineImage& im, const std::vector<uint64_t>& sizes) {
  auto rm = NewAllocator(im);
  QCOW2J_RETURN_IF_ERROR(rm->Load());
  std::vector<uint64_t> out;
  for (uint64_t bytes : sizes) {
    if (!bytes) {
      out.push_back(0);
      continue;
    }
    QCOW2J_ASSIGN_OR_RETURN(uint64_t off, rm->Allocate(im.Clusters(bytes)));
    out.push_back(off);
  }
  QCOW2J_RETURN_IF_ERROR(rm->WriteBack());
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  QCOW2J_ASSIGN_OR_RETURN(im.file_size, im.file->Size());
  return out;
}

// Gives back what AllocateRuns took, after a later step failed (best effort:
// the original error is what the caller reports).
void UndoAllocation(OfflineImage& im, const std::vector<uint64_t>& offsets,
                    const std::vector<uint64_t>& sizes) {
  auto rm = NewAllocator(im);
  if (!rm->Load().ok()) return;
  for (size_t i = 0; i < offsets.size(); i++) {
    if (!offsets[i]) continue;
    for (uint64_t c = 0; c < im.Clusters(sizes[i]); c++)
      if (!rm->Update(offsets[i] + (c << im.cb), -1).ok()) return;
  }
  if (rm->WriteBack().ok()) (void)im.file->Sync();
}

Result<RefcountModel> NewModel(OfflineImage& im) {
  uint64_t bytes = uint64_t{im.h.refcount_table_clusters} << im.cb;
  std::vector<uint8_t> raw(bytes);
  QCOW2J_RETURN_IF_ERROR(im.file->Read(im.h.refcount_table_offset, raw.data(), bytes));
  std::vector<uint64_t> table(bytes / 8);
  for (size_t i = 0; i < table.size(); i++) table[i] = LoadBE64(raw.data() + 8 * i);
  return RefcountModel(im.file.get(), im.cb, im.h.refcount_order, std::move(table));
}


// The L2 tables an L1 table points at, validated, sorted, with how many L1
// entries point at each (more than one only in a corrupt image, but the
// refcounts count every reference).
Result<std::vector<std::pair<uint64_t, uint32_t>>> L2Tables(const OfflineImage& im,
                                                            const std::vector<uint64_t>& l1,
                                                            const std::string& what) {
  std::vector<uint64_t> offs;
  for (size_t i = 0; i < l1.size(); i++) {
    uint64_t off = l1[i] & kL1OffsetMask;
    if (!off) continue;
    if ((off & (im.cs - 1)) || off > im.file_size - std::min(im.file_size, im.cs))
      return Status::Corruption(what + " entry " + std::to_string(i) + ": L2 table offset " +
                                Hex(off) + " is unaligned or outside the file");
    offs.push_back(off);
  }
  std::sort(offs.begin(), offs.end());
  std::vector<std::pair<uint64_t, uint32_t>> out;
  for (uint64_t o : offs) {
    if (!out.empty() && out.back().first == o)
      out.back().second++;
    else
      out.push_back({o, 1});
  }
  return out;
}

std::vector<uint64_t> Offsets(const std::vector<std::pair<uint64_t, uint32_t>>& tables) {
  std::vector<uint64_t> v;
  v.reserve(tables.size());
  for (auto& t : tables) v.push_back(t.first);
  return v;
}

// Adds `delta` to the refcount of every cluster the tree under `l1`
// references: its L2 tables, their data clusters (zero-allocated ones too)
// and every host cluster a compressed cluster's bytes touch. Collects the
// L2 tables holding an entry with COPIED set in *copied_tables.
Status AddTree(OfflineImage& im, RefcountModel& rc, const std::vector<uint64_t>& l1,
               int64_t delta, const std::string& what, std::vector<uint64_t>* copied_tables) {
  QCOW2J_ASSIGN_OR_RETURN(auto tables, L2Tables(im, l1, what));
  for (auto& [off, n] : tables) QCOW2J_RETURN_IF_ERROR(rc.Add(off >> im.cb, delta * n));
  size_t t = 0;
  const uint64_t entries = im.cs / im.l2_entry_bytes;
  const uint64_t step = im.l2_entry_bytes;
  const uint64_t last_cluster = (im.file_size + im.cs - 1) >> im.cb;
  return VisitL2Tables(im, Offsets(tables), false,
                       [&](uint64_t off, uint8_t* table) -> Result<bool> {
    int64_t d = delta * tables[t++].second;
    bool copied = false;
    for (uint64_t j = 0; j < entries; j++) {
      uint64_t raw = LoadBE64(table + j * step);
      if (!raw) continue;
      if (raw & kOflagCompressed) {
        CompressedDescriptor c = CompressedDescriptor::Decode(raw, im.cb);
        uint64_t first = c.host_offset >> im.cb;
        uint64_t last = (c.host_offset + c.compressed_size() - 1) >> im.cb;
        if (last > last_cluster)
          return Status::Corruption("L2 table at " + Hex(off) + " entry " + std::to_string(j) +
                                    ": compressed cluster at " + Hex(c.host_offset) +
                                    " is outside the file");
        for (uint64_t ci = first; ci <= last; ci++) QCOW2J_RETURN_IF_ERROR(rc.Add(ci, d));
        continue;
      }
      copied |= (raw & kOflagCopied) != 0;
      uint64_t host = raw & kL2OffsetMask;
      if (!host) continue;
      if (host & (im.cs - 1))
        return Status::Corruption("L2 table at " + Hex(off) + " entry " + std::to_string(j) +
                                  ": host offset " + Hex(host) +
                                  " is not aligned to the cluster size");
      QCOW2J_RETURN_IF_ERROR(rc.Add(host >> im.cb, d));
    }
    if (copied && copied_tables) copied_tables->push_back(off);
    return false;
  });
}

// Clears COPIED in every entry of the L2 tables at `offsets` (sorted).
Status ClearCopied(OfflineImage& im, const std::vector<uint64_t>& offsets) {
  const uint64_t entries = im.cs / im.l2_entry_bytes;
  return VisitL2Tables(im, offsets, true, [&](uint64_t, uint8_t* table) -> Result<bool> {
    bool changed = false;
    for (uint64_t j = 0; j < entries; j++) {
      uint8_t* p = table + j * im.l2_entry_bytes;
      if (p[0] & 0x80) {
        p[0] &= 0x7f;
        changed = true;
      }
    }
    return changed;
  });
}

// Sets COPIED exactly where the refcount is 1, in the active tree (L1 entries
// and the data entries of its L2 tables), as QEMU's pass with addend 0 does.
// Writes what changed, the L1 table last.
Status FixCopied(OfflineImage& im, RefcountModel& rc) {
  QCOW2J_ASSIGN_OR_RETURN(auto tables, L2Tables(im, im.l1, "active L1 table"));
  const uint64_t entries = im.cs / im.l2_entry_bytes;
  QCOW2J_RETURN_IF_ERROR(VisitL2Tables(im, Offsets(tables), true,
                                       [&](uint64_t, uint8_t* table) -> Result<bool> {
    bool changed = false;
    for (uint64_t j = 0; j < entries; j++) {
      uint8_t* p = table + j * im.l2_entry_bytes;
      uint64_t raw = LoadBE64(p);
      if (raw & kOflagCompressed) continue;
      uint64_t host = raw & kL2OffsetMask;
      if (!host) continue;
      QCOW2J_ASSIGN_OR_RETURN(uint64_t r, rc.Get(host >> im.cb));
      uint64_t want = r == 1 ? (raw | kOflagCopied) : (raw & ~kOflagCopied);
      if (want != raw) {
        StoreBE64(p, want);
        changed = true;
      }
    }
    return changed;
  }));
  bool l1_changed = false;
  for (uint64_t& e : im.l1) {
    uint64_t off = e & kL1OffsetMask;
    if (!off) continue;
    QCOW2J_ASSIGN_OR_RETURN(uint64_t r, rc.Get(off >> im.cb));
    uint64_t want = r == 1 ? (e | kOflagCopied) : (e & ~kOflagCopied);
    l1_changed |= want != e;
    e = want;
  }
  if (l1_changed) {
    QCOW2J_RETURN_IF_ERROR(im.file->Sync());
    std::vector<uint8_t> raw(im.l1.size() * 8);
    for (size_t i = 0; i < im.l1.size(); i++) StoreBE64(raw.data() + 8 * i, im.l1[i]);
    QCOW2J_RETURN_IF_ERROR(im.file->Write(im.h.l1_table_offset, raw.data(), raw.size()));
  }
  return im.file->Sync();
}

// Punches the clusters whose refcount ended at 0 out of the file (QEMU
// discards them too); a failure here costs space, not consistency.
void PunchFreed(OfflineImage& im, RefcountModel& rc) {
  std::vector<uint64_t> freed;
  for (uint64_t ci : rc.zeroed()) {
    auto r = rc.Get(ci);
    if (r.ok() && *r == 0) freed.push_back(ci);
  }
  std::sort(freed.begin(), freed.end());
  freed.erase(std::unique(freed.begin(), freed.end()), freed.end());
  for (size_t i = 0; i < freed.size();) {
    size_t j = i + 1;
    while (j < freed.size() && freed[j] == freed[j - 1] + 1) j++;
    (void)im.file->PunchHole(freed[i] << im.cb, (j - i) << im.cb);
    i = j;
  }
}

std::vector<uint8_t> EncodeL1(const std::vector<uint64_t>& l1) {
  std::vector<uint8_t> raw(l1.size() * 8);
  for (size_t i = 0; i < l1.size(); i++) StoreBE64(raw.data() + 8 * i, l1[i]);
  return raw;
}

// ---------------------------------------------------------------------------
// One journal transaction for an offline operation

namespace {

constexpr uint64_t kDefaultAreaBytes = 8ull << 20;  // the engine's default

// The header as it is, with the journal extension `ext` and the session bits.
Status WriteSessionHeader(OfflineImage& im, const JournalExtension& ext, bool open) {
  Header h = im.h;
  h.journal = EncodeJournalExtension(ext);
  if (open) {
    h.incompatible_features |= kIncompatJournal;
    h.autoclear_features |= kAutoclearJournalValid;
  } else {
    h.incompatible_features &= ~kIncompatJournal;
    h.autoclear_features &= ~kAutoclearJournalValid;
  }
  QCOW2J_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, SerializeHeader(h));
  if (bytes.size() > im.cs)
    return Status::FromErrno(ENOSPC, "the header of '" + im.path + "' does not fit in its first cluster");
  QCOW2J_RETURN_IF_ERROR(im.file->Write(0, bytes.data(), bytes.size()));
  im.h = h;
  return Status::OK();
}

}  // namespace

std::optional<JournalExtension> OfflineJournalExtension(const OfflineImage& im) {
  if (!im.h.journal || im.h.version < 3) return std::nullopt;
  auto ext = DecodeJournalExtension(*im.h.journal, im.cb);
  if (!ext.ok() || ext->dirty_refcounts() || ext->has_area()) return std::nullopt;
  return *ext;
}

JournalExtension OfflineJournalArea(const OfflineImage& im, JournalExtension ext,
                                    uint64_t area_offset) {
  ext.area_size = std::max<uint64_t>(ext.area_size ? ext.area_size : kDefaultAreaBytes, 4 * im.cs);
  ext.sector_size = im.file->alignment() > 512 ? 4096 : 512;
  ext.area_offset = area_offset;
  return ext;
}

Result<OfflineJournal> BeginOfflineJournal(OfflineImage& im, const JournalExtension& ext,
                                           uint64_t idle_area_size) {
  QCOW2J_RETURN_IF_ERROR(ValidateJournalExtension(ext, im.cb));
  OfflineJournal j;
  j.ext = ext;
  j.idle_area_size = idle_area_size;
  QCOW2J_ASSIGN_OR_RETURN(j.sb, FormatJournal(im.file.get(), ext));
  return j;
}

bool OfflineJournalFits(const JournalExtension& ext, const std::vector<JournalRecord>& recs) {
  uint64_t bytes = kJournalFrameHeaderBytes;
  for (const JournalRecord& r : recs) bytes += EncodedRecordBytes(r);
  bytes = (bytes + ext.sector_size - 1) / ext.sector_size * ext.sector_size;
  return bytes <= kJournalMaxFrameBytes && bytes <= ext.ring_bytes();
}

Status CommitOfflineJournal(OfflineImage& im, const OfflineJournal& j,
                            const std::vector<JournalRecord>& recs) {
  TransactionBuilder b;
  for (const JournalRecord& r : recs) QCOW2J_RETURN_IF_ERROR(b.Add(r));
  JournalWriter w(im.file.get(), j.ext, j.sb);
  QCOW2J_ASSIGN_OR_RETURN(std::vector<uint8_t> frame,
                          b.Finish(w.next_sequence(), w.synced_through(), w.generation(),
                                   w.sector_size()));
  QCOW2J_RETURN_IF_ERROR(WriteSessionHeader(im, j.ext, true));
  uint64_t at = 0;
  QCOW2J_RETURN_IF_ERROR(w.Append(frame, &at));
  return w.Sync();  // the commit
}

Status EndOfflineJournal(OfflineImage& im, const OfflineJournal& j) {
  JournalExtension idle = j.ext;
  idle.area_offset = 0;
  idle.area_size = j.idle_area_size;  // the size the next session allocates
  QCOW2J_RETURN_IF_ERROR(WriteSessionHeader(im, idle, false));
  QCOW2J_RETURN_IF_ERROR(im.file->Sync());
  // The area's refcounts are 0 already (written in place with the rest).
  QCOW2J_ASSIGN_OR_RETURN(uint64_t size, im.file->Size());
  if (j.ext.area_offset + j.ext.area_size >= size) {
    QCOW2J_RETURN_IF_ERROR(im.file->Truncate(j.ext.area_offset));
  } else {
    (void)im.file->PunchHole(j.ext.area_offset, j.ext.area_size);
  }
  QCOW2J_ASSIGN_OR_RETURN(im.file_size, im.file->Size());
  return Status::OK();
}

}  // namespace qcow2j
