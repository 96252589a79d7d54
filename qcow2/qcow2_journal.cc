// The engine's side of the metadata journal: sessions, commit, checkpoint
// and replay. The format is docs/journal-format.md; why each ordering is
// safe is docs/crash-safety.md ("With the journal").
//
// A session starts at the first commit of a read-write open: an area is
// allocated (append), formatted, and the header gets the extension pointing
// at it plus the incompatible bit "journal" (QEMU then refuses the image)
// and the autoclear bit "journal valid". A flush commits one transaction
// holding the final values of every L2 entry, L1 entry and refcount changed
// since the last commit, and XXH64 checksums of the data those entries
// expose, and syncs once: the data and the transaction become durable
// together, and recovery drops the last transaction if its data did not
// land. The tables themselves stay dirty in the caches until a checkpoint
// writes them in place and empties the ring. A clean close checkpoints,
// frees the area and clears both bits: the file is plain qcow2 again.
#define XXH_STATIC_LINKING_ONLY  // XXH64_state_t on the stack
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "metadata/endian.h"
#include "metadata/hex.h"
#include "qcow2/qcow2_image.h"
#include "recovery/journal_replay.h"

namespace qcow2j {
namespace {

constexpr uint64_t kJournalAreaBytes = 8ull << 20;
// Past these the open transaction is committed with a data sync first
// instead of carrying checksums.
constexpr size_t kMaxChecksumRanges = 1u << 16;
constexpr uint64_t kMaxChecksumBytes = 256ull << 20;
// Encoded size bounds used to decide whether a transaction fits the ring.
constexpr uint64_t kRecordBytesBound = 48;

}  // namespace

Status Qcow2Image::RewriteHeader(const Header& h) {
  QCOW2J_ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, SerializeHeader(h));
  return file_->Write(0, bytes.data(), bytes.size());
}

void Qcow2Image::NoteChecksumLocked(uint64_t host, uint64_t len, uint64_t hash) {
  if (!jsums_ok_ || len == 0) return;
  if (jsums_.size() >= kMaxChecksumRanges || jsum_bytes_ + len > kMaxChecksumBytes) {
    NoteDataLossLocked();
    return;
  }
  auto next = jsums_.lower_bound(host);
  if (next != jsums_.end() && next->first == host && next->second.len == len &&
      next->second.hash == hash)
    return;  // the same bytes again (a reader and a flush both filled a COW range)
  bool overlap = next != jsums_.end() && next->first < host + len;
  if (next != jsums_.begin()) {
    auto prev = std::prev(next);
    overlap |= prev->first + prev->second.len > host;
  }
  if (overlap) {
    // Two writes to the same bytes in one transaction: the first one's
    // checksum no longer holds. Fall back to syncing the data first.
    NoteDataLossLocked();
    return;
  }
  jsums_.emplace(host, SumRange{host, len, hash});
  jsum_bytes_ += len;
}

bool Qcow2Image::OverlapsUnconfirmedLocked(uint64_t host, uint64_t len) const {
  if (junconfirmed_.empty()) return false;
  auto next = junconfirmed_.lower_bound(host);
  if (next != junconfirmed_.end() && next->first < host + len) return true;
  if (next == junconfirmed_.begin()) return false;
  auto prev = std::prev(next);
  return prev->first + prev->second.len > host;
}

Status Qcow2Image::StartJournalSessionLocked() {
  JournalExtension ext = *jext_;
  // The idle extension's area_size is the size asked for at create (0: default).
  ext.area_size = std::max<uint64_t>(ext.area_size ? ext.area_size : kJournalAreaBytes, 4 * cluster_size_);
  ext.sector_size = file_->alignment() > 512 ? 4096 : 512;
  QCOW2J_ASSIGN_OR_RETURN(ext.area_offset, refcounts_->Allocate(ext.area_size >> cluster_bits_));
  Status s = [&]() -> Status {
    QCOW2J_RETURN_IF_ERROR(ValidateJournalExtension(ext, cluster_bits_));
    QCOW2J_ASSIGN_OR_RETURN(JournalSuperblock sb, FormatJournal(file_.get(), ext));
    // From here on QEMU refuses the image until a clean close (or recovery)
    // clears the bit; in dirty-refcount mode the dirty bit says the
    // refcounts on disk may be stale. (header_ itself stays as it is:
    // readers look at it without the lock.)
    Header h = header_;
    h.journal = EncodeJournalExtension(ext);
    h.incompatible_features |= kIncompatJournal;
    if (jdirty_refcounts_) h.incompatible_features |= kIncompatDirty;
    h.autoclear_features |= kAutoclearJournalValid;
    QCOW2J_RETURN_IF_ERROR(RewriteHeader(h));
    QCOW2J_RETURN_IF_ERROR(file_->Sync());
    jwriter_ = std::make_unique<JournalWriter>(file_.get(), ext, sb);
    return Status::OK();
  }();
  if (!s.ok()) {
    // Nothing references the area yet (a header that did land names an
    // empty ring, which recovery closes): give its clusters back, or the
    // retry would allocate another and this one would leak.
    (void)refcounts_->ReplaySet(ext.area_offset >> cluster_bits_, ext.area_size >> cluster_bits_, 0);
    return s;
  }
  jext_ = ext;
  jpending_ = true;
  (void)metadata_map_->Add(ext.area_offset, ext.area_size, MetadataKind::kJournal);  // overlap-guard
  return Status::OK();
}

Status Qcow2Image::ConfirmLocked() {
  if (junconfirmed_.empty() || !jwriter_) return Status::OK();
  TransactionBuilder b;
  QCOW2J_ASSIGN_OR_RETURN(std::vector<uint8_t> frame,
                          b.Finish(jwriter_->next_sequence(), jwriter_->synced_through(),
                                   jwriter_->generation(), jwriter_->sector_size()));
  if (!jwriter_->Fits(frame.size())) return CheckpointLocked();  // the tail move confirms too
  uint64_t at = 0;
  QCOW2J_RETURN_IF_ERROR(jwriter_->Append(frame, &at));
  QCOW2J_RETURN_IF_ERROR(jwriter_->Sync());
  junconfirmed_.clear();
  jcommits_++;
  return Status::OK();
}

Status Qcow2Image::CheckpointLocked() {
  // In-place writes may cover bytes that the last transaction's checksums
  // describe (a copied L2 table): confirm it first, or a crash before the
  // tail moves would make recovery drop an acknowledged transaction.
  if (jwriter_ && !junconfirmed_.empty()) {
    TransactionBuilder b;
    QCOW2J_ASSIGN_OR_RETURN(std::vector<uint8_t> frame,
                            b.Finish(jwriter_->next_sequence(), jwriter_->synced_through(),
                                     jwriter_->generation(), jwriter_->sector_size()));
    uint64_t at = 0;
    if (jwriter_->Fits(frame.size())) {
      QCOW2J_RETURN_IF_ERROR(jwriter_->Append(frame, &at));
      QCOW2J_RETURN_IF_ERROR(jwriter_->Sync());
    } else {
      // No room even for an empty frame: the data itself must be durable
      // before anything is overwritten in place.
      QCOW2J_RETURN_IF_ERROR(data_file_->Sync());
    }
    junconfirmed_.clear();
  }
  // Whatever is written here either was committed already (replay rewrites
  // the same values) or, when a transaction was too large for the ring,
  // follows the journal-less order.
  QCOW2J_RETURN_IF_ERROR(WriteTablesInPlaceLocked(/*replayed=*/false));
  if (jwriter_) QCOW2J_RETURN_IF_ERROR(jwriter_->AdvanceTail(jwriter_->next_sequence()));
  // Everything is in place: nothing left to journal.
  jl2_.clear();
  jl1_.clear();
  jnew_tables_.clear();
  jnew_hosts_.clear();
  jheader_changed_ = false;
  jsums_.clear();
  jsum_bytes_ = 0;
  jsums_ok_ = true;
  return Status::OK();
}

Status Qcow2Image::WriteStaleHeaderFieldsLocked() {
  if (header_fields_stale_) {  // a resize: its L1 table was made durable before it was named
    uint8_t fields[kResizeFieldsBytes];
    EncodeResizeFields(fields);
    QCOW2J_RETURN_IF_ERROR(WriteHeaderField(kResizeFieldsOffset, fields, sizeof fields));
    header_fields_stale_ = false;
  }
  if (snapshot_fields_stale_) {  // a replayed snapshot operation: its new table was synced before it
    uint8_t fields[kSnapshotFieldsBytes];
    StoreBE32(fields, header_.nb_snapshots);
    StoreBE64(fields + 4, header_.snapshots_offset);
    QCOW2J_RETURN_IF_ERROR(WriteHeaderField(kSnapshotFieldsOffset, fields, sizeof fields));
    snapshot_fields_stale_ = false;
  }
  return Status::OK();
}

Status Qcow2Image::WriteTablesInPlaceLocked(bool replayed) {
  // Like the flush without a journal: refcounts (and the data) first, then
  // the tables that reference them, with a sync after each step. After a
  // replay neither sync is needed: every byte written is a committed record
  // that the ring keeps until the header write that ends the session, so a
  // crash anywhere before it replays the same values again.
  QCOW2J_ASSIGN_OR_RETURN(uint64_t size, file_->Size());
  if (size < refcounts_->end_offset()) QCOW2J_RETURN_IF_ERROR(file_->Truncate(refcounts_->end_offset()));
  if (data_file_ != file_.get()) QCOW2J_RETURN_IF_ERROR(data_file_->Sync());
  QCOW2J_RETURN_IF_ERROR(refcounts_->WriteBack(replayed));
  if (!replayed) QCOW2J_RETURN_IF_ERROR(file_->Sync());
  QCOW2J_RETURN_IF_ERROR(l2_cache_->FlushDirty());
  QCOW2J_RETURN_IF_ERROR(WriteL1Locked());
  QCOW2J_RETURN_IF_ERROR(WriteStaleHeaderFieldsLocked());
  if (!replayed) QCOW2J_RETURN_IF_ERROR(file_->Sync());
  refcounts_->ForgetChanges();
  jcheckpoints_++;
  return Status::OK();
}

Status Qcow2Image::JournalFlushLocked() {
  const bool meta = !jl2_.empty() || !jl1_.empty() || refcounts_->has_changes() ||
                    !decrements_.empty() || !jnew_tables_.empty() || jheader_changed_;
  if (!meta) {
    if (data_file_ != file_.get()) return data_file_->Sync();
    return file_->Sync();
  }
  if (!jwriter_) QCOW2J_RETURN_IF_ERROR(StartJournalSessionLocked());

  // Too large for the ring (a bounded estimate): write everything in place
  // instead, in the order that is safe without a journal.
  const bool with_sums = jsums_ok_ && JournalChecksums();
  uint64_t estimate = 2 * kJournalFrameHeaderBytes;
  for (const JournalRecord& r : jnew_tables_) estimate += EncodedRecordBytes(r);
  estimate += kRecordBytesBound * (jl1_.size() + jl2_.size() + (with_sums ? jsums_.size() : 0));
  if (!jdirty_refcounts_) estimate += kRecordBytesBound * (decrements_.size() + refcounts_->change_count() + 2);
  if (estimate > jwriter_->free_bytes()) {
    QCOW2J_RETURN_IF_ERROR(CheckpointLocked());
    return Status::OK();  // decrements stay queued for the next transaction
  }

  // The references dropped by this transaction go in the same transaction:
  // replay applies both or neither.
  std::vector<Decrement> dec;
  dec.swap(decrements_);
  std::vector<uint64_t> punch;
  for (const Decrement& d : dec) {
    QCOW2J_ASSIGN_OR_RETURN(uint64_t rc, refcounts_->Update(d.host, -1));
    // overlap-guard: a cluster still in use as metadata must not be freed (nor punched).
    if (rc == 0) QCOW2J_RETURN_IF_ERROR(GuardWrite(d.host, cluster_size_, MetadataKind::kData));
    if (rc == 0) {
      l2_epoch_++;
      for (uint64_t off = d.host; off < d.host + cluster_size_; off += slice_bytes_) l2_cache_->Erase(off);
      if (d.punch) punch.push_back(d.host);
      // Nothing references the cluster after this transaction: its bytes
      // need no checksum (and may be punched or reused right after).
      for (auto it = jsums_.lower_bound(d.host); it != jsums_.end() && it->first < d.host + cluster_size_;)
        it = jsums_.erase(it);
    }
  }

  // Records, in replay order: new L2 tables (zeroed first), L1 entries, L2
  // entries, then refcounts (table moves and new blocks before the counts).
  std::vector<JournalRecord> recs;
  recs.reserve(jnew_tables_.size() + jl1_.size() + jsums_.size() + 8);
  if (jheader_changed_) {  // first: the L1 entries below name the table it switches to
    HeaderUpdate h;
    h.offset = kResizeFieldsOffset;
    h.bytes.resize(kResizeFieldsBytes);
    EncodeResizeFields(h.bytes.data());
    recs.push_back(std::move(h));
  }
  for (const JournalRecord& r : jnew_tables_) recs.push_back(r);
  for (uint64_t idx : jl1_)
    recs.push_back(L1Update{header_.l1_table_offset, static_cast<uint32_t>(idx), l1_[idx]});
  const bool ext = header_.extended_l2();
  for (auto it = jl2_.begin(); it != jl2_.end();) {
    uint64_t table = *it & ~(cluster_size_ - 1);
    uint64_t slice_off = *it & ~uint64_t{slice_bytes_ - 1};
    TableCache::Table* slice = l2_cache_->Get(slice_off);
    if (!slice) {  // the table was freed meanwhile: its entries do not matter
      ++it;
      continue;
    }
    L2Update u;
    u.table_offset = table;
    u.first_index = static_cast<uint32_t>((*it - table) / l2_entry_bytes_);
    u.extended = ext;
    uint64_t expect = *it;
    while (it != jl2_.end() && *it == expect && (*it & ~uint64_t{slice_bytes_ - 1}) == slice_off) {
      const uint8_t* e = slice->data() + (*it - slice_off);
      u.entries.push_back(LoadBE64(e));
      if (ext) u.entries.push_back(LoadBE64(e + 8));
      expect += l2_entry_bytes_;
      ++it;
    }
    l2_cache_->Release(slice);
    recs.push_back(std::move(u));
  }
  if (with_sums)
    for (auto& [host, r] : jsums_) recs.push_back(DataChecksum{r.host, r.len, r.hash});
  if (!jdirty_refcounts_) QCOW2J_RETURN_IF_ERROR(refcounts_->JournalRecords(&recs));
  TransactionBuilder b;
  for (const JournalRecord& r : recs) QCOW2J_RETURN_IF_ERROR(b.Add(r));
  QCOW2J_ASSIGN_OR_RETURN(std::vector<uint8_t> frame,
                          b.Finish(jwriter_->next_sequence(), jwriter_->synced_through(),
                                   jwriter_->generation(), jwriter_->sector_size()));
  // Without checksums the data must be durable before the transaction is.
  // (Copied L2 tables live in the image file even with a data file.)
  if (!with_sums || data_file_ != file_.get()) QCOW2J_RETURN_IF_ERROR(data_file_->Sync());
  if (!with_sums && data_file_ != file_.get()) QCOW2J_RETURN_IF_ERROR(file_->Sync());
  // Clusters allocated at the end but never written must lie inside the
  // file before anything points at them (a reader past EOF would fail).
  QCOW2J_ASSIGN_OR_RETURN(uint64_t size, file_->Size());
  if (size < refcounts_->end_offset()) QCOW2J_RETURN_IF_ERROR(file_->Truncate(refcounts_->end_offset()));
  uint64_t at = 0;
  QCOW2J_RETURN_IF_ERROR(jwriter_->Append(frame, &at));
  QCOW2J_RETURN_IF_ERROR(jwriter_->Sync());  // the one sync: data, transaction, file size
  jcommits_++;
  // Until here a failure left every change tracked: a retry commits it all.
  refcounts_->ForgetChanges();

  // Committed. The freed clusters may be reused, and holes punched.
  refcounts_->ReleasePendingFrees();
  QCOW2J_RETURN_IF_ERROR(PunchClusters(std::move(punch)));
  jl2_.clear();
  jl1_.clear();
  jnew_tables_.clear();
  jnew_hosts_.clear();
  jheader_changed_ = false;
  if (with_sums) {
    junconfirmed_.swap(jsums_);
  } else {
    junconfirmed_.clear();  // synced_through covers the previous one now
  }
  jsums_.clear();
  jsum_bytes_ = 0;
  jsums_ok_ = true;

  // Checkpoint once the ring is half full, or the caches hold more dirty
  // tables than their capacity (they cannot evict dirty ones): in the
  // background, unless the ring or the caches are far past that.
  const uint64_t ring = jext_->ring_bytes();
  const uint64_t free_bytes = jwriter_->free_bytes();
  const size_t l2_dirty = l2_cache_->dirty_count(), rc_dirty = refcounts_->dirty_blocks();
  const bool soft = free_bytes < ring / 2 || l2_dirty > l2_cache_->capacity() ||
                    rc_dirty > refcounts_->cache_capacity();
  const bool hard = free_bytes < ring / 4 || l2_dirty > 2 * l2_cache_->capacity() ||
                    rc_dirty > 2 * refcounts_->cache_capacity();
  if (hard || (soft && !opts_.background_checkpoints)) return CheckpointLocked();
  if (soft) RequestCheckpointLocked();
  return Status::OK();
}

void Qcow2Image::RequestCheckpointLocked() {
  if (checkpointer_stop_) return;
  if (!checkpointer_.joinable()) checkpointer_ = std::thread([this] { CheckpointerMain(); });
  checkpoint_wanted_ = true;
  checkpoint_cv_.notify_one();
}

void Qcow2Image::CheckpointerMain() {
  std::unique_lock<std::mutex> lk(meta_mu_);
  for (;;) {
    checkpoint_cv_.wait(lk, [&] { return checkpoint_wanted_ || checkpointer_stop_; });
    if (checkpointer_stop_) return;
    checkpoint_wanted_ = false;
    if (!failed_.ok() || !jwriter_) continue;
    // A flush first: it waits for the writes under way, fills their delayed
    // COW and commits them, as a checkpoint from a guest flush would find
    // them. Then, with meta_mu_ held throughout, the checkpoint.
    Status s = FlushLocked(lk);
    if (s.ok() && jwriter_ && !jwriter_->empty()) s = CheckpointLocked();
    // A failed flush has marked the image failed (or, for ENOSPC, will be
    // retried by the next commit, which checkpoints inline past the hard
    // threshold and reports the error to its caller).
    if (s.ok()) jbackground_checkpoints_++;
    checkpoint_wanted_ = false;  // this flush may have asked again
  }
}

void Qcow2Image::StopCheckpointer() {
  {
    std::lock_guard<std::mutex> lk(meta_mu_);
    checkpointer_stop_ = true;
    checkpoint_cv_.notify_all();
  }
  if (checkpointer_.joinable()) checkpointer_.join();
}

Status Qcow2Image::EndJournalSessionLocked(bool refcounts_clean, bool after_replay) {
  // The ring is empty (CheckpointLocked ran), or after a replay everything
  // it holds was just written in place. Free the area, sync, then clear the
  // bits and the area in one header write: a crash before that write leaves
  // an empty journal that recovery closes the same way, or (after a replay)
  // the whole journal, which replay applies again (idempotent; the area's
  // clusters are not reused before the header write, and refcount 0 on disk
  // does not stop replay from reading them).
  if (jext_->has_area()) {
    if (metadata_map_) metadata_map_->Remove(jext_->area_offset, MetadataKind::kJournal);  // overlap-guard
    QCOW2J_RETURN_IF_ERROR(
        refcounts_->ReplaySet(jext_->area_offset >> cluster_bits_, jext_->area_size >> cluster_bits_, 0));
    QCOW2J_RETURN_IF_ERROR(refcounts_->WriteBack(after_replay));
    refcounts_->ForgetChanges();
  }
  if (jext_->has_area() || after_replay) QCOW2J_RETURN_IF_ERROR(file_->Sync());
  const JournalExtension area = *jext_;
  JournalExtension idle = *jext_;
  idle.area_offset = 0;  // area_size stays: the size the next session allocates
  Header h = header_;
  h.journal = EncodeJournalExtension(idle);
  h.incompatible_features &= ~kIncompatJournal;
  // Dirty-refcount mode: every refcount was just written in place (unless
  // recovery is closing the journal of a crashed session: then the dirty
  // bit stays for the refcount rebuild).
  if (refcounts_clean) h.incompatible_features &= ~kIncompatDirty;
  h.autoclear_features &= ~kAutoclearJournalValid;
  QCOW2J_RETURN_IF_ERROR(RewriteHeader(h));
  QCOW2J_RETURN_IF_ERROR(file_->Sync());
  // No request runs now (open-time recovery, or close): header_ may follow.
  header_ = h;
  jpending_ = false;
  jext_ = idle;
  jwriter_.reset();
  junconfirmed_.clear();
  if (area.has_area()) {
    // Give the space back: the area was mostly written ring.
    QCOW2J_ASSIGN_OR_RETURN(uint64_t size, file_->Size());
    if (area.area_offset + area.area_size >= size && area.area_offset + area.area_size >= refcounts_->end_offset()) {
      QCOW2J_RETURN_IF_ERROR(file_->Truncate(area.area_offset));
    } else if (after_replay && opts_.background_checkpoints) {
      // Punching a long ring drops its cached pages and extents, which cost
      // as much as the rest of the open: a thread does it while the image
      // is in use. Nothing else may write those bytes meanwhile: their
      // refcounts are 0, so appends would reuse them, and are told to start
      // past the area instead (a later open reuses the hole); they are not
      // in the free list (only clusters this session frees are), and Close
      // joins the thread. An error costs only space.
      refcounts_->AppendPast(area.area_offset + area.area_size);
      jpunch_ = std::thread([f = file_.get(), area] { (void)f->PunchHole(area.area_offset, area.area_size); });
    } else {
      // (After a replay with background_checkpoints off too, so that the
      // crash kit sees the same I/O sequence every run.)
      Status s = file_->PunchHole(area.area_offset, area.area_size);
      if (!s.ok() && s.code() != Code::kNotSupported) return s;
    }
  }
  return Status::OK();
}

Status Qcow2Image::ApplyJournalRecord(const JournalRecord& rec) {
  // Most records of a long journal are data checksums (one per write):
  // used when reading, nothing to apply.
  if (std::holds_alternative<DataChecksum>(rec)) return Status::OK();
  if (const auto* u = std::get_if<L2Update>(&rec)) {
    if (u->extended != header_.extended_l2())
      return Status::Corruption("journal: L2 update of table " + Hex(u->table_offset) +
                                (u->extended ? " uses" : " does not use") +
                                " extended entries, unlike the image");
    if (u->table_offset == 0 || (u->table_offset & (cluster_size_ - 1)) ||
        uint64_t{u->first_index} + u->count() > (1ull << l2_bits_))
      return Status::Corruption("journal: L2 update of table " + Hex(u->table_offset) +
                                " entries " + std::to_string(u->first_index) + "+" +
                                std::to_string(u->count()) + " is outside an L2 table");
    // One cache lookup per slice, not per entry.
    const uint32_t words = u->extended ? 2 : 1;
    for (uint32_t i = 0; i < u->count();) {
      const uint64_t off = u->table_offset + (uint64_t{u->first_index} + i) * l2_entry_bytes_;
      const uint64_t slice_off = off & ~uint64_t{slice_bytes_ - 1};
      const uint32_t in_slice = std::min<uint64_t>(u->count() - i, (slice_off + slice_bytes_ - off) / l2_entry_bytes_);
      QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * t, l2_cache_->GetOrRead(slice_off, file_.get()));
      uint8_t* e = t->data() + (off - slice_off);
      const uint64_t* src = u->entries.data() + size_t{i} * words;
      for (uint32_t k = 0; k < in_slice * words; k++) StoreBE64(e + 8 * k, src[k]);
      l2_cache_->MarkDirty(t);
      l2_cache_->Release(t);
      i += in_slice;
    }
    return Status::OK();
  }
  if (const auto* u = std::get_if<L1Update>(&rec)) {
    if (u->table_offset != header_.l1_table_offset) {
      // An update of a table a later resize record replaces (its copy holds
      // this value already); checked when the replay ends.
      jreplay_stale_l1_.insert(u->table_offset);
      return Status::OK();
    }
    if (u->index >= l1_.size())
      return Status::Corruption("journal: L1 update of entry " + std::to_string(u->index) +
                                " in table " + Hex(u->table_offset) + " does not match the L1 table at " +
                                Hex(header_.l1_table_offset) + " (" + std::to_string(l1_.size()) +
                                " entries)");
    l1_[u->index] = u->value;
    l1_dirty_.insert(u->index);
    return Status::OK();
  }
  if (const auto* n = std::get_if<NewTable>(&rec)) {
    if (n->host_offset == 0 || (n->host_offset & (cluster_size_ - 1)))
      return Status::Corruption("journal: new table at " + Hex(n->host_offset) + " is not cluster aligned");
    if (n->kind == JournalTableKind::kRefcountBlock)
      return refcounts_ ? refcounts_->ReplayNewBlock(n->host_offset) : Status::OK();
    return l2_cache_->ZeroTables(n->host_offset, cluster_size_);
  }
  if (const auto* u = std::get_if<HeaderUpdate>(&rec);
      u && u->offset == kResizeFieldsOffset && u->bytes.size() == kResizeFieldsBytes)
    return ApplyResizeFields(u->bytes.data());
  if (const auto* u = std::get_if<HeaderUpdate>(&rec);
      u && u->offset == kSnapshotFieldsOffset && u->bytes.size() == kSnapshotFieldsBytes)
    return ApplySnapshotFields(u->bytes.data());
  if (const auto* u = std::get_if<L2CopiedRun>(&rec)) return ApplyL2CopiedRun(*u);
  // Refcounts matter only to a writer (and not at all in dirty-refcount
  // mode, where they are rebuilt).
  if (!refcounts_ || jdirty_refcounts_) return Status::OK();
  if (const auto* u = std::get_if<RefcountUpdate>(&rec)) return refcounts_->ReplaySet(u->cluster_index, 1, u->value);
  if (const auto* u = std::get_if<RefcountRun>(&rec))
    return refcounts_->ReplaySet(u->first_cluster, u->count, u->value);
  if (const auto* u = std::get_if<RefcountTableUpdate>(&rec))
    return refcounts_->ReplayTableEntry(u->index, u->block_offset);
  if (const auto* u = std::get_if<HeaderUpdate>(&rec)) {
    if (u->offset != 48 || u->bytes.size() != 12)
      return Status::Corruption("journal: header update of bytes " + std::to_string(u->offset) + "+" +
                                std::to_string(u->bytes.size()) + " is not supported");
    return refcounts_->ReplayTableMove(LoadBE64(u->bytes.data()), LoadBE32(u->bytes.data() + 8));
  }
  return Status::OK();  // DataChecksum: used when reading, nothing to apply
}

void Qcow2Image::EncodeResizeFields(uint8_t* out) const {
  StoreBE64(out, header_.size);
  StoreBE32(out + 8, header_.crypt_method);
  StoreBE32(out + 12, header_.l1_size);
  StoreBE64(out + 16, header_.l1_table_offset);
}

Status Qcow2Image::ApplyResizeFields(const uint8_t* fields) {
  const uint64_t size = LoadBE64(fields);
  const uint32_t crypt = LoadBE32(fields + 8);
  const uint64_t l1_size = LoadBE32(fields + 12);
  const uint64_t l1_offset = LoadBE64(fields + 16);
  auto bad = [&](const std::string& why) {
    return Status::Corruption("journal: header update to size " + std::to_string(size) + ", l1_size " +
                              std::to_string(l1_size) + ", l1_table_offset " + Hex(l1_offset) + ": " + why);
  };
  if (crypt != header_.crypt_method) return bad("crypt_method " + std::to_string(crypt) + " differs from the image's");
  if (size > kMaxVirtualSize) return bad("the size is too large");
  const uint64_t per_l1 = cluster_size_ << l2_bits_;
  if ((size + per_l1 - 1) / per_l1 > l1_size) return bad("the L1 table is too small for the size");
  if (l1_size * 8 > kMaxL1Bytes) return bad("the L1 table exceeds 32 MiB");
  QCOW2J_ASSIGN_OR_RETURN(uint64_t file_size, file_->Size());
  if (l1_offset == 0 || l1_offset % cluster_size_ || l1_offset > file_size || l1_size * 8 > file_size - l1_offset)
    return bad("the L1 table lies outside the image file");
  // Every table replaced by this one is no longer the image's.
  std::erase_if(jreplay_stale_l1_, [&](uint64_t t) { return t != l1_offset; });
  if (l1_offset != header_.l1_table_offset || l1_size != l1_.size()) {
    // The resize wrote and synced the new table before committing this.
    QCOW2J_RETURN_IF_ERROR(ReadL1Table(l1_offset, l1_size));
    l1_dirty_.clear();
  }
  header_.size = size;
  header_.l1_size = static_cast<uint32_t>(l1_size);
  header_.l1_table_offset = l1_offset;
  virtual_size_ = size;
  header_fields_stale_ = true;  // a read-write replay writes them in place
  return Status::OK();
}

Status Qcow2Image::ApplySnapshotFields(const uint8_t* fields) {
  const uint32_t nb = LoadBE32(fields);
  const uint64_t offset = LoadBE64(fields + 4);
  if (nb > kMaxSnapshots || (nb && (offset == 0 || offset % cluster_size_)))
    return Status::Corruption("journal: header update to nb_snapshots " + std::to_string(nb) +
                              ", snapshots_offset " + Hex(offset) + ": too many snapshots or an "
                              "unaligned table");
  QCOW2J_ASSIGN_OR_RETURN(uint64_t file_size, file_->Size());
  if (nb && offset >= file_size)
    return Status::Corruption("journal: header update to snapshots_offset " + Hex(offset) +
                              " is outside the image file");
  header_.nb_snapshots = nb;
  header_.snapshots_offset = nb ? offset : 0;
  snapshot_fields_stale_ = true;
  return Status::OK();
}

Status Qcow2Image::ApplyL2CopiedRun(const L2CopiedRun& r) {
  if (r.table_offset == 0 || (r.table_offset & (cluster_size_ - 1)) ||
      uint64_t{r.first_index} + r.count > (1ull << l2_bits_))
    return Status::Corruption("journal: L2 COPIED run of table " + Hex(r.table_offset) + " entries " +
                              std::to_string(r.first_index) + "+" + std::to_string(r.count) +
                              " is outside an L2 table");
  uint64_t off = r.table_offset + uint64_t{r.first_index} * l2_entry_bytes_;
  const uint64_t end = off + uint64_t{r.count} * l2_entry_bytes_;
  while (off < end) {
    const uint64_t slice_off = off & ~uint64_t{slice_bytes_ - 1};
    const uint64_t stop = std::min(end, slice_off + slice_bytes_);
    QCOW2J_ASSIGN_OR_RETURN(TableCache::Table * t, l2_cache_->GetOrRead(slice_off, file_.get()));
    bool changed = false;
    for (; off < stop; off += l2_entry_bytes_) {
      uint8_t* e = t->data() + (off - slice_off);
      const uint64_t raw = LoadBE64(e);
      // Set: only entries that map a host cluster of their own (the
      // others are left alone); clear: every entry.
      const bool maps = !(raw & kOflagCompressed) && (raw & kL2OffsetMask);
      const uint64_t want = !r.set ? raw & ~kOflagCopied : maps ? raw | kOflagCopied : raw;
      if (want != raw) {
        StoreBE64(e, want);
        changed = true;
      }
    }
    if (changed) l2_cache_->MarkDirty(t);
    l2_cache_->Release(t);
  }
  return Status::OK();
}

Status Qcow2Image::RecordVerdictLocked() {
  if (!jverdict_) return Status::OK();
  // The data was read, but after a killed process it may sit in the page
  // cache only: durable before the superblock vouches for it.
  if (data_file_ != file_.get()) QCOW2J_RETURN_IF_ERROR(data_file_->Sync());
  QCOW2J_RETURN_IF_ERROR(file_->Sync());  // copied L2 tables live in the image file
  QCOW2J_RETURN_IF_ERROR(MarkJournalVerified(file_.get(), *jext_, jverdict_->sb, jverdict_->through).status());
  jverdict_.reset();
  return Status::OK();
}

bool Qcow2Image::VerdictNeededLocked() {
  // Every write of the recovery from here on: dirty L2 slices, refcount
  // blocks and table (the area's release included), the L1 table, the
  // header's cluster. (Slices written back midway were written after
  // RecordVerdictLocked, or before the checksums were verified.)
  const uint64_t l1_end = header_.l1_table_offset + l1_.size() * 8;
  for (auto [off, len] : jverdict_->ranges) {
    if (off < cluster_size_ || (off < l1_end && header_.l1_table_offset < off + len)) return true;
    for (uint64_t s = off & ~uint64_t{slice_bytes_ - 1}; s < off + len; s += slice_bytes_) {
      TableCache::Table* t = l2_cache_->Get(s);
      if (!t) continue;
      const bool dirty = t->dirty();
      l2_cache_->Release(t);
      if (dirty) return true;
    }
  }
  return refcounts_->MeetsRefcountMetadata(jverdict_->ranges);
}

Status Qcow2Image::ReplayJournal() {
  if (!jext_ || !(header_.incompatible_features & kIncompatJournal) || snapshot_index_ >= 0)
    return Status::OK();
  std::string report;
  if (jext_->has_area()) {
    // A writer records the data-checksum verdict in the superblock before
    // it writes in place anything those checksums describe (a copied L2
    // table, which the same transaction updates): a crash before the header
    // write would otherwise make the next replay drop an acknowledged
    // transaction. Decided once everything is applied (RecordVerdictLocked
    // before a write-back midway, to be safe): data clusters alone, the
    // usual case, need no verdict.
    JournalVerifiedFn verified;
    if (!read_only_)
      verified = [&](const JournalSuperblock& sb, uint64_t through, const std::vector<DataChecksum>& sums) {
        jverdict_ = PendingVerdict{sb, through, {}};
        for (const DataChecksum& d : sums) jverdict_->ranges.emplace_back(d.host_offset, d.length);
        return Status::OK();
      };
    auto plan = ReplayJournalRing(
        file_.get(), data_file_, *jext_, [&](const JournalTransaction& t) -> Status {
          for (const JournalRecord& r : t.records) {
            Status s = ApplyJournalRecord(r);
            if (!s.ok())
              return s.Annotate("image '" + path_ + "': replaying journal transaction " +
                                std::to_string(t.sequence));
          }
          // The replayed tables are held dirty in memory. A writer puts them
          // in place when they pile up (replay is idempotent, so a crash
          // meanwhile just replays again); a reader has nowhere to put them.
          if (l2_cache_->dirty_count() > std::max<size_t>(4 * l2_cache_->capacity(), 1024)) {
            if (read_only_)
              return Status::NotSupported(
                  "image '" + path_ + "': replaying its journal needs more than " +
                  std::to_string(l2_cache_->dirty_count() * slice_bytes_ >> 20) +
                  " MiB of memory; open it read-write to replay it in place");
            QCOW2J_RETURN_IF_ERROR(RecordVerdictLocked());
            QCOW2J_RETURN_IF_ERROR(WriteTablesInPlaceLocked(/*replayed=*/true));
          }
          return Status::OK();
        },
        verified);
    if (!plan.ok())
      return plan.status().Annotate("image '" + path_ + "': journal recovery failed; `qcow2j check -r all` "
                                    "rebuilds the metadata without it");
    if (!jreplay_stale_l1_.empty())
      return Status::Corruption("image '" + path_ + "': journal: L1 updates of table " +
                                Hex(*jreplay_stale_l1_.begin()) + ", which is not the L1 table at " +
                                Hex(header_.l1_table_offset) + " and which no resize replaced; `qcow2j "
                                "check -r all` rebuilds the metadata without the journal");
    if (snapshot_fields_stale_) {
      // A snapshot operation switched the table: reload it (its clusters were
      // synced before the transaction committed).
      QCOW2J_ASSIGN_OR_RETURN(file_size_, file_->Size());
      QCOW2J_RETURN_IF_ERROR(LoadSnapshots().Annotate("image '" + path_ + "': the snapshot table a "
                                                      "replayed transaction switched to"));
    }
    report = DescribeReplay(*plan);
    if (!(header_.autoclear_features & kAutoclearJournalValid))
      report += " (the journal-valid bit was clear; replayed because the journal bit was set)";
  } else {
    report = "journal: the journal bit was set but no area was allocated; nothing to replay";
  }
  if (read_only_) {
    recovery_report_ = report + " in memory (read-only open; the image is unchanged)";
    return Status::OK();
  }
  // Write the result in place and close the journal as a clean close would,
  // in two syncs (after the verdict's two, if there was one): the tables
  // with the area's release, then the header. A
  // checkpoint's own ordering (refcounts, sync, tables, sync, tail, sync) is
  // not needed here: every byte written is a committed record that the ring
  // keeps until the header write, so a crash anywhere before it leaves the
  // bit set and replay writes the same values again.
  const bool was_dirty = header_.incompatible_features & kIncompatDirty;
  if (jverdict_ && !VerdictNeededLocked()) jverdict_.reset();
  QCOW2J_RETURN_IF_ERROR(RecordVerdictLocked());
  QCOW2J_RETURN_IF_ERROR(WriteTablesInPlaceLocked(/*replayed=*/true));
  QCOW2J_RETURN_IF_ERROR(EndJournalSessionLocked(/*refcounts_clean=*/!was_dirty, /*after_replay=*/true));
  recovery_report_ = report;
  return Status::OK();
}

}  // namespace qcow2j
