// Qcow2Image: the engine behind Image for qcow2 files. This header is
// internal to the library.
#ifndef QCOW2J_QCOW2_QCOW2_IMAGE_H_
#define QCOW2J_QCOW2_QCOW2_IMAGE_H_

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <string>
#include <vector>

#include <optional>

#include "alloc/refcount_manager.h"
#include "journal/journal_ring.h"
#include "metadata/header.h"
#include "metadata/l2_entry.h"
#include "metadata/metadata_map.h"
#include "metadata/snapshot_table.h"
#include "metadata/table_cache.h"
#include "qcow2j/image.h"

namespace qcow2j {

// A run of guest bytes that one lookup resolved to the same kind of storage.
struct GuestExtent {
  enum class Kind { kUnallocated, kZero, kData, kCompressed };
  Kind kind = Kind::kUnallocated;
  uint64_t length = 0;
  // kData: host offset (in the data file) of the extent's first byte.
  // kZero: host offset of a preallocated zero cluster, or 0.
  uint64_t host_offset = 0;
  uint64_t l2_raw = 0;  // kCompressed: the raw L2 entry of the cluster
};

class Qcow2Image final : public Image {
 public:
  // depth: how many images lie above this one in the chain (loop guard).
  static Result<std::unique_ptr<Image>> Open(const std::string& path, const OpenOptions& opts,
                                             int depth);
  ~Qcow2Image() override;

  uint64_t size() const override { return virtual_size_; }
  ImageInfo Info() override;

  Status Read(uint64_t offset, void* buf, size_t len) override;
  Status Write(uint64_t offset, const void* buf, size_t len) override;
  void WriteAsync(uint64_t offset, const void* buf, size_t len, Completion done) override;
  Status WriteZeroes(uint64_t offset, uint64_t len, bool may_unmap) override;
  Status Discard(uint64_t offset, uint64_t len) override;
  Status Flush() override;
  Status Close() override;
  Status Resize(uint64_t new_size, bool shrink) override;
  Result<BlockStatus> GetBlockStatus(uint64_t offset, uint64_t max_length) override;
  Status WriteCompressed(uint64_t offset, const void* buf, size_t len) override;

  // The extent at guest `offset` (at most max_length long) in this layer only.
  Result<GuestExtent> MapExtent(uint64_t offset, uint64_t max_length);

 private:
  Qcow2Image() = default;
  Status Load(const std::string& path, const OpenOptions& opts, int depth);
  Status LoadSnapshots();
  Status OpenBackingChain(const OpenOptions& opts, int depth);
  Status OpenDataFile(const OpenOptions& opts);

  // Reads the (L2 raw, bitmap) entry of guest cluster `cluster` of the
  // active L1. *raw == 0 and *bitmap == 0 when the L1 entry is empty.
  // Caller holds meta_mu_.
  Status LookupL2Locked(uint64_t cluster, uint64_t* raw, uint64_t* bitmap);
  // The pinned L2 slice holding `cluster`'s entry (release it), or nullptr
  // where the L1 entry maps no table.
  Result<TableCache::Table*> ReadL2SliceLocked(uint64_t cluster);
  // Makes sure the L2 slice holding `cluster`'s entry is cached, reading it
  // from disk WITHOUT the lock when it is not, so that misses of concurrent
  // requests overlap instead of queueing behind one lock. Returns true when
  // the lock was dropped: the caller must look again at what it had seen.
  Result<bool> PrefetchL2Locked(std::unique_lock<std::mutex>& lk, uint64_t cluster);
  std::set<uint64_t> l2_loading_;  // slice offsets being read without the lock
  uint64_t l2_epoch_ = 0;          // bumped when an L2 table is freed
  uint64_t l2_writebacks_ = 0;     // bumped when an L2 slice is written in place
  // A miss reads the slice's whole L2 table (one request instead of one per
  // slice) while the tables read are progressions the cache keeps as
  // descriptions (TableCache::Offer): then the other slices cost nothing to
  // keep and later misses on them no disk read. Other tables are read one
  // slice at a time; a slice read that turns out to be a progression
  // switches whole-table reads back on.
  bool l2_whole_reads_ = true;
  static constexpr uint64_t kMaxL2ReadBytes = 256 << 10;  // whole tables up to this, else a part
  // Buffers for those reads (aligned for O_DIRECT, so no bounce), reused
  // under meta_mu_: request threads would otherwise each grow their own
  // malloc arena with them.
  struct AlignedFree {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  using L2ReadBuffer = std::unique_ptr<uint8_t, AlignedFree>;
  std::vector<L2ReadBuffer> l2_read_bufs_;
  // End of the image file as the engine sees it: the size at open, or past
  // every cluster allocated since (appended clusters may not be written yet).
  // Decodes an L2 entry of this image (extended or not; with an external
  // data file, offset 0 + COPIED is a data cluster).
  L2Entry DecodeL2(uint64_t raw, uint64_t bitmap) const {
    return L2Entry::Decode(raw, bitmap, header_.extended_l2(), data_file_ != file_.get());
  }
  uint64_t HostLimit() const {
    return refcounts_ ? std::max(file_size_, refcounts_->end_offset()) : file_size_;
  }
  Status CheckHostRange(const char* what, uint64_t guest_offset, uint64_t host, uint64_t len,
                        bool in_data_file);
  Status ReadCompressed(uint64_t guest_offset, uint64_t l2_raw, uint64_t in_cluster, uint8_t* dst,
                        size_t len);
  Status ReadBacking(uint64_t offset, uint8_t* dst, size_t len);

  // ---- write path (qcow2_write.cc) ----
  // Head/tail of a newly allocated cluster that still holds no data: the old
  // contents (described by the cluster's previous L2 entry) are copied in at
  // the next flush, or before a read needs them, unless writes cover them
  // first. `uncovered` maps in-cluster start -> end.
  struct PendingCow {
    uint64_t host = 0;
    uint64_t old_raw = 0, old_bitmap = 0;
    std::map<uint64_t, uint64_t> uncovered;
  };
  // A cluster being allocated: its L2 entry already points at the new host
  // cluster, but the data of the allocating request has not landed yet, so
  // readers wait.
  struct Inflight {
    int writers = 0;
    bool exclusive = false;  // an immediate COW writes head+data+tail: others wait
  };
  // Whether writes stream through the cluster at `cluster_start`: then later
  // writes of the stream will likely cover the rest, so COW is delayed;
  // otherwise it is done at once, in one write with the data, as QEMU does.
  bool ContinuesStreamLocked(uint64_t cluster_start) const;
  void NoteWriteEndLocked(uint64_t end) {
    recent_ends_[recent_pos_++ % recent_ends_.size()] = end;
  }
  std::array<uint64_t, 64> recent_ends_{};
  size_t recent_pos_ = 0;
  uint64_t reserved_end_ = 0;  // host clusters below this were reserved (fallocated) ahead
  std::optional<uint64_t> size_before_reserving_;  // the file's size at the first reservation
  // Reserves the just-appended cluster at `host` and the ones after it.
  Status ReserveAheadLocked(uint64_t host);
  // At close: drops the reserved clusters past the last allocated one.
  Status TrimReservationLocked();
  Status InitWriter();
  Status CheckWritable(const char* op, uint64_t offset, uint64_t len);
  // One cluster's part of a write, planned under the lock, executed without.
  struct WriteAction {
    uint64_t cluster = 0, pos = 0, host = 0;  // host: where src[0] goes
    const uint8_t* src = nullptr;
    size_t n = 0;
    bool tracked = false;    // holds a writer count in inflight_[cluster]
    bool exclusive = false;  // immediate COW of [cow_start, cow_end) in the cluster
    uint64_t old_raw = 0, old_bitmap = 0, cluster_host = 0, cow_start = 0, cow_end = 0;
    bool checksum = false;   // the journal's open transaction needs a checksum of what lands
  };
  Status PlanPieceLocked(std::unique_lock<std::mutex>& lk, uint64_t pos, const uint8_t* src,
                         size_t n, WriteAction* act);
  // *hash: XXH64 of everything written (head, data, tail), for the journal.
  Status ImmediateCow(const WriteAction& a, uint64_t* hash);
  // Immediate COWs of adjacent clusters (qcow2_cow_batch.cc): one write per
  // cluster over a backing file (W4) otherwise costs a backing read and a
  // cluster-sized write per request. Writes planned while the previous
  // batch is still open join it when their cluster follows its last one in
  // both guest and host order; one thread (whichever member gets there
  // first) then reads the old contents of the whole run from the backing
  // file at once and writes every member's data with them in one vectored
  // write. Each member still completes, notes its checksum and leaves
  // inflight_ from its own thread, as an unbatched write would.
  struct CowBatch {
    std::vector<const WriteAction*> acts;  // consecutive guest and host clusters
    std::vector<uint64_t> hashes;          // per member: XXH64 of its whole cluster
    uint64_t end_cluster = 0, end_host = 0;  // just past the last member, guest and host
    bool continues = false;  // starts right after the previous batch: a stream passes
    bool claimed = false, done = false;
    Status st;
    std::condition_variable cv;  // with meta_mu_: done, closed, or a running batch finished
  };
  // A write between its submission and the end of its planning.
  struct PendingWrite {
    uint64_t offset = 0;
    const uint8_t* src = nullptr;
    size_t len = 0;
    bool planned = false;
    bool waiting = false;         // its owner sleeps on `cv` until planned or called to plan
    std::condition_variable cv;
    Status st;
    std::vector<WriteAction> acts;
    std::shared_ptr<CowBatch> cow_batch;  // its immediate COW runs batched
    size_t cow_batch_index = 0;           // ... as this member
  };
  // Adds planned write `w` to the open batch, or opens a new one, if its
  // one piece is a whole-cluster immediate COW from the backing file.
  void JoinCowBatchLocked(PendingWrite* w);
  // Executes w's batch (or waits for the member executing it); *hash gets
  // the checksum of w's cluster.
  Status RunCowBatch(PendingWrite* w, uint64_t* hash);
  Status WriteCowBatch(CowBatch* b, uint8_t* buf);
  std::shared_ptr<CowBatch> last_cow_batch_;  // the batch writes may still join
  int cow_batches_running_ = 0;
  // Batch buffers (kCowBatchBytes each, aligned) kept for the next batches:
  // allocated per batch from many threads, glibc's per-thread arenas kept
  // ~100 MiB of them resident in W4.
  std::vector<std::unique_ptr<uint8_t, AlignedFree>> cow_batch_buffers_;
  // Takes the write's place in submission order.
  uint64_t RegisterWrite(PendingWrite* w);
  void PlanWriteLocked(std::unique_lock<std::mutex>& lk, PendingWrite* w);
  // Plans (in order, see RunWrite's comment), transfers, completes.
  Status RunWrite(PendingWrite* w, uint64_t* flush_needed);
  // Writethrough (cache=writethrough/directsync): writes complete after a
  // group-committed flush rather than through O_DSYNC.
  // need: the flush generation that covers the caller's write (0: compute now).
  Status GroupFlush(uint64_t need);
  uint64_t FlushNeededLocked() const;
  Status ZeroRange(uint64_t offset, uint64_t len, bool may_unmap);
  bool writethrough_ = false;
  int writers_active_ = 0;  // writes between their registration and their completion
  uint64_t writers_started_ = 0;
  uint64_t flush_gen_started_ = 0, flush_gen_done_ = 0, flush_gen_drained_ = 0;
  uint64_t next_ticket_ = 0;
  std::map<uint64_t, PendingWrite*> registered_;  // ticket -> write not yet planned
  bool planner_active_ = false;
  Status ZeroOrDiscardClusters(uint64_t first, uint64_t count, bool zero, bool unmap, uint64_t* done);
  // The caches hold far more dirty tables than their capacity (journal on).
  bool MetadataPressureLocked() const;
  // Pinned L2 slice holding `cluster`'s entry, with the L2 table allocated or
  // copied (if shared) first. *entry points at the entry inside the slice.
  Result<TableCache::Table*> WritableL2Locked(uint64_t cluster, uint8_t** entry);
  void FreeOldLocked(uint64_t old_raw, bool punch);
  bool SourceIsZero(uint64_t cluster, uint64_t old_raw, uint64_t old_bitmap, uint64_t a, uint64_t b);
  void CoverLocked(uint64_t cluster, uint64_t in, uint64_t len);
  Status ResolveCowLocked(uint64_t cluster);
  // Whether no cluster of [first, end) has an allocating write in flight or
  // pending COW (both maps hold at most the requests in flight).
  bool NothingPendingLocked(uint64_t first, uint64_t end) const {
    for (const auto& [c, unused] : inflight_)
      if (c >= first && c < end) return false;
    for (const auto& [c, unused] : cow_)
      if (c >= first && c < end) return false;
    return true;
  }
  Status ResolveAllCowLocked(std::unique_lock<std::mutex>& lk);
  struct SumRange {
    uint64_t host = 0, len = 0, hash = 0;
  };
  // Writes the old contents into the uncovered ranges; *sums gets each range
  // written with its hash (for the journal's data checksums).
  Status FillCow(uint64_t cluster, const PendingCow& pc, std::vector<SumRange>* sums);
  Status ReadOldContent(uint64_t cluster, uint64_t old_raw, uint64_t old_bitmap, uint64_t in,
                        uint8_t* dst, size_t len);
  // Waits until no request allocates or fills a cluster in [first, last].
  void WaitInflightLocked(std::unique_lock<std::mutex>& lk, uint64_t first, uint64_t last);
  Status FlushLocked(std::unique_lock<std::mutex>& lk);
  Status WriteL1Locked();
  // Punches discarded host clusters (of the data file), adjacent ones as one range.
  Status PunchClusters(std::vector<uint64_t> clusters);
  Status WriteHeaderField(uint64_t offset, const void* data, size_t len);

  // ---- overlap protection (qcow2/qcow2_overlap.cc, metadata/metadata_map.h) ----
  // Registers every metadata structure of a writable image; on the first
  // overlap a write would cause, MarkCorrupt sets the corrupt bit on disk
  // and fails the image.
  Status BuildMetadataMap();
  void MarkCorrupt(const Status& why);
  // OK, or the overlap error (the image is then failed and marked corrupt).
  Status GuardWrite(uint64_t host, uint64_t len, MetadataKind what) {
    return metadata_map_ ? metadata_map_->CheckMetadataWrite(host, len, what) : Status::OK();
  }
  std::unique_ptr<MetadataMap> metadata_map_;

  // ---- compressed writes (qcow2_compressed_write.cc) ----
  // Every L2 entry store of the compressed-write path goes through here
  // (one place for the journal to hook): stores raw (and bitmap with
  // extended L2) at `entry` inside `slice` and marks the slice dirty.
  void StoreL2EntryLocked(TableCache::Table* slice, uint8_t* entry, uint64_t raw, uint64_t bitmap);
  // The compressed-write cache: compressed clusters are packed byte after
  // byte (as QEMU packs them) into a run of contiguous host clusters held in
  // memory, and each host cluster is written once, whole, when the run moves
  // past it; the partial last one at flush. Guarded by meta_mu_ for writers;
  // readers of the buffer (ReadHostCompressed) hold zcache_mu_ only, which
  // writers also take (after meta_mu_) whenever they change the buffer.
  struct CompressedRun {
    struct Free {
      void operator()(uint8_t* p) const { std::free(p); }
    };
    std::unique_ptr<uint8_t, Free> buf;  // capacity bytes, aligned for O_DIRECT
    uint64_t capacity = 0;
    uint64_t base = 0;         // host offset of buf[0]; 0: no run
    uint64_t clusters = 0;     // host clusters allocated to the run
    uint64_t fill = 0;         // bytes placed since base
    uint64_t claimed_end = 0;  // host clusters below this hold at least one compressed cluster
  };
  // Complete clusters that left the run's buffer and are being written out
  // without meta_mu_ (one O_DIRECT write of up to a megabyte held every
  // other writer off the lock). Listed until written and noted, so readers
  // still find the bytes here; a flush (FinishCompressedRunLocked) writes
  // the unclaimed ones itself and waits for the rest.
  struct RunWriteOut {
    uint64_t base = 0, bytes = 0;
    std::unique_ptr<uint8_t, CompressedRun::Free> buf;
    bool claimed = false;  // a thread writes it (or has written it)
    bool written = false;  // the write has returned: st and hash are set
    bool hash_it = false;  // the journal vouches for the bytes by their checksum
    Status st;
    uint64_t hash = 0;
  };
  // Writes one claimed write-out (any lock but zcache_mu_) and marks it written.
  void WriteOut(RunWriteOut* o);
  // Writes the write-outs this thread claimed (none left unclaimed by the
  // caller), without meta_mu_; then notes them under it.
  Status WriteOutClaimed(std::unique_lock<std::mutex>& lk);
  // Under meta_mu_: writes unclaimed write-outs, waits for claimed ones,
  // notes every one (checksums for the journal) and drops them.
  Status SettleWriteOutsLocked();
  Status ReapWriteOutsLocked();
  std::list<RunWriteOut> zout_;  // changed under meta_mu_ and zcache_mu_; read under either
  std::condition_variable zout_cv_;  // with zcache_mu_: a write-out was written
  Status PlaceCompressedLocked(const uint8_t* z, size_t n, uint64_t* host);
  // Moves the run's complete clusters into an unclaimed write-out (zout_);
  // whole: the partial last cluster too (zero-padded), and the run ends.
  Status MoveRunToWriteOutLocked(bool whole);
  // Flush: the run ends (a later flush may free clusters of it, so nothing
  // may be packed into it afterwards) and every write-out is written.
  Status FinishCompressedRunLocked();
  // Reads host bytes of compressed data, from the run's buffer where it is
  // not on disk yet. Callable with or without meta_mu_.
  Status ReadHostCompressed(uint64_t host, uint8_t* dst, size_t len);
  CompressedRun zrun_;
  std::mutex zcache_mu_;

  std::unique_ptr<RefcountManager> refcounts_;
  std::set<uint64_t> l1_dirty_;
  std::unordered_map<uint64_t, PendingCow> cow_;
  std::unordered_map<uint64_t, Inflight> inflight_;
  std::condition_variable inflight_cv_;
  // Refcount decrements wait until the L2/L1 change that dropped the
  // reference is durable (else a crash leaves an entry pointing at a
  // cluster with refcount 0). `punch`: the cluster was discarded.
  struct Decrement {
    uint64_t host;
    bool punch;
  };
  std::vector<Decrement> decrements_;
  bool draining_ = false;  // a flush waits for in-flight allocations
  Status failed_;          // sticky: metadata write-back failed, the image is unusable
  bool writer_ready_ = false;  // Load finished for a writable image: Close must flush

  // Whether QEMU would consider the image metadata-preallocated (then block
  // status looks for holes in the host file). Computed on first use.
  Result<bool> MetadataPreallocated();
  std::mutex prealloc_mu_;
  bool prealloc_known_ = false, prealloc_ = false;

  // ---- the metadata journal (qcow2_journal.cc, docs/journal-format.md) ----
  // Without a journal, FlushLocked orders in-place writes with two syncs.
  // With one, a flush commits one transaction (records of every L2, L1 and
  // refcount change since the last commit, plus checksums of the data those
  // changes expose) with a single sync; the tables stay dirty in the caches
  // (never evicted: keep-dirty mode) until a checkpoint writes them in place.
  std::optional<JournalExtension> jext_;   // the image's journal extension
  bool journal_on_ = false;                // this read-write session commits through it
  bool jdirty_refcounts_ = false;          // dirty-refcount mode: refcounts not journalled
  std::unique_ptr<JournalWriter> jwriter_; // the session's ring, once the first commit made one
  std::set<uint64_t> jl2_;                 // host offsets of L2 entries changed since the last commit
  std::set<uint64_t> jl1_;                 // L1 indexes changed since the last commit
  std::vector<JournalRecord> jnew_tables_; // NewTable records of the open transaction
  std::unordered_set<uint64_t> jnew_hosts_;  // data clusters the open transaction maps
  std::map<uint64_t, SumRange> jsums_;     // host start -> checksummed bytes of the open transaction
  bool jsums_ok_ = true;                   // false: commit syncs the data first (two syncs)
  uint64_t jsum_bytes_ = 0;
  std::map<uint64_t, SumRange> junconfirmed_;  // checksummed by the last commit, not yet confirmed
  std::atomic<uint64_t> jcommits_{0}, jcheckpoints_{0};  // read by Info() without the lock
  // Header bytes 24..47 (size, crypt_method, l1_size, l1_table_offset):
  // a resize changed them since the last commit (the next transaction
  // carries them), and they are not yet in place (the next checkpoint
  // writes them).
  bool jheader_changed_ = false;
  bool header_fields_stale_ = false;
  static constexpr uint32_t kResizeFieldsOffset = 24, kResizeFieldsBytes = 24;
  void EncodeResizeFields(uint8_t* out) const;
  // Replay of such a header update: the new size, and the L1 table it names.
  Status ApplyResizeFields(const uint8_t* fields);
  // Header bytes 60..71 (nb_snapshots, snapshots_offset), switched by a
  // replayed snapshot operation: the snapshot table is reloaded after the
  // replay and the fields are written in place by the next checkpoint.
  bool snapshot_fields_stale_ = false;
  static constexpr uint32_t kSnapshotFieldsOffset = 60, kSnapshotFieldsBytes = 12;
  Status ApplySnapshotFields(const uint8_t* fields);
  // Replay of an L2 COPIED run (journal record type 10).
  Status ApplyL2CopiedRun(const L2CopiedRun& r);
  // l1_ = the `entries` big-endian entries at `offset` (bounds checked by the caller).
  Status ReadL1Table(uint64_t offset, uint64_t entries);
  // L1 tables named by replayed L1 updates that are not the image's L1 table:
  // legal only when a resize replayed later switched away from them (the
  // checkpoint wrote the new header in place before the tail moved).
  std::set<uint64_t> jreplay_stale_l1_;
  // A read-write replay kept unconfirmed transactions on their data
  // checksums: the verdict to record (MarkJournalVerified) before anything
  // written in place could change the bytes those checksums describe.
  struct PendingVerdict {
    JournalSuperblock sb;
    uint64_t through = 0;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // (host offset, length)
  };
  std::optional<PendingVerdict> jverdict_;
  // Records a pending verdict: sync (the verified data), superblock, sync.
  Status RecordVerdictLocked();
  // Whether the replay's in-place writes (dirty L2 slices, refcount
  // metadata, the L1 table, the header) meet the pending verdict's ranges.
  bool VerdictNeededLocked();
  // Background checkpoints: past the soft threshold (half the ring, or more
  // dirty tables than the caches hold) a commit asks this thread to write the
  // tables in place, so the guest flush that crossed it does not wait for
  // that. Past the hard threshold (3/4 of the ring, twice the caches) the
  // commit checkpoints inline. The thread takes meta_mu_ like any writer.
  std::thread checkpointer_;
  std::thread jpunch_;  // punches the area a read-write recovery freed
  // Before file_ goes (Close, a reload): the thread uses it.
  void JoinAreaPunch() {
    if (jpunch_.joinable()) jpunch_.join();
  }
  std::condition_variable checkpoint_cv_;  // with meta_mu_
  bool checkpoint_wanted_ = false;
  bool checkpointer_stop_ = false;
  std::atomic<uint64_t> jbackground_checkpoints_{0};
  void RequestCheckpointLocked();
  void CheckpointerMain();
  void StopCheckpointer();
  Status ReplayJournal();
  Status ApplyJournalRecord(const JournalRecord& r);
  Status StartJournalSessionLocked();
  // Frees the area and clears the journal bits (the ring must be empty, or
  // everything it holds written in place and not yet synced: the sync that
  // makes the area's release durable makes those writes durable too). A
  // recovery (`after_replay`) punches the freed area on a thread (jpunch_)
  // unless background checkpoints are off (then inline) or it ends the file
  // (then truncated).
  Status EndJournalSessionLocked(bool refcounts_clean, bool after_replay = false);
  // Writes every dirty table in place: refcounts, sync, L2 and L1 (and the
  // stale header fields), sync. `replayed` (open-time recovery): without the
  // syncs, for EndJournalSessionLocked to sync once.
  Status WriteTablesInPlaceLocked(bool replayed);
  // Writes the header fields replay or a resize left stale (the resize
  // fields, the snapshot-table fields) and marks them current; no sync.
  Status WriteStaleHeaderFieldsLocked();
  // Journal flush: one transaction, one sync (checkpoints past the threshold).
  Status JournalFlushLocked();
  // Confirms the last commit, writes every dirty table in place
  // (WriteTablesInPlaceLocked) and empties the ring: all the journal held is
  // now in place.
  Status CheckpointLocked();
  // Commits an empty transaction whose synced_through confirms the last one.
  Status ConfirmLocked();
  // Writes header `h` (with its extensions) over the header cluster.
  Status RewriteHeader(const Header& h);
  // A session holds committed transactions (incompatible bit 16 on disk).
  std::atomic<bool> jpending_{false};
  // Records that an L2 entry changed, for the next journal transaction.
  // Callers noting entries in ascending order pass back the hint this
  // returns, so each insertion lands right after the one before.
  using L2ChangeHint = std::set<uint64_t>::iterator;
  L2ChangeHint NoteL2ChangeLocked(TableCache::Table* slice, const uint8_t* entry) {
    return NoteL2ChangeLocked(slice, entry, jl2_.end());
  }
  L2ChangeHint NoteL2ChangeLocked(TableCache::Table* slice, const uint8_t* entry, L2ChangeHint hint) {
    if (!journal_on_) return hint;
    return std::next(jl2_.insert(hint, slice->offset() + static_cast<uint64_t>(entry - slice->data())));
  }
  void NoteChecksumLocked(uint64_t host, uint64_t len, uint64_t hash);
  void NoteDataLossLocked() {  // data of the open transaction in an unknown state
    jsums_ok_ = false;
    jsums_.clear();
  }
  bool OverlapsUnconfirmedLocked(uint64_t host, uint64_t len) const;
  bool JournalChecksums() const { return journal_on_ && data_file_ == file_.get(); }

  std::string recovery_report_;  // what open-time recovery did, for Info()
  bool dirty_repaired_ = false;  // Load repaired a dirty image and runs again

  std::string path_;
  std::string dir_;  // folder of path_, for relative backing names
  Env* env_ = nullptr;
  std::unique_ptr<File> file_;
  std::unique_ptr<File> data_file_owned_;
  File* data_file_ = nullptr;  // file_ unless an external data file is used
  std::unique_ptr<Image> backing_;
  std::string backing_path_;   // resolved
  std::string backing_fmt_;    // resolved (given or probed)
  OpenOptions opts_;
  bool read_only_ = true;
  bool closed_ = false;

  Header header_;
  uint64_t file_size_ = 0;
  uint64_t data_file_size_ = 0;
  uint64_t virtual_size_ = 0;
  uint32_t cluster_bits_ = 16;
  uint64_t cluster_size_ = 65536;
  uint32_t l2_entry_bytes_ = 8;  // 16 with extended L2
  uint32_t l2_bits_ = 13;        // log2(entries per L2 table)
  uint32_t slice_bytes_ = 4096;  // the L2 cache's unit
  uint32_t slice_entries_bits_ = 9;
  std::vector<SnapshotEntry> snapshots_;
  int snapshot_index_ = -1;      // >= 0 when opened on a snapshot's view

  // Guards the L1 table and the metadata caches. Data transfers never hold it.
  std::mutex meta_mu_;
  std::vector<uint64_t> l1_;
  std::unique_ptr<TableCache> l2_cache_;
};

// Resolves a backing file name stored in an image against the folder of the
// image (relative names) and returns the path to open.
// Creates a qcow2 image (qcow2/create.cc).
Status CreateQcow2(const std::string& path, const CreateOptions& opts);

std::string ResolveBackingPath(const std::string& image_dir, const std::string& backing_name);
// Probes the format of an open file: "qcow2" if it starts with the magic, else "raw".
Result<std::string> ProbeFormat(File* file);

}  // namespace qcow2j

#endif  // QCOW2J_QCOW2_QCOW2_IMAGE_H_
