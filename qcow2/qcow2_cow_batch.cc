// Batched immediate COW: adjacent allocating writes over a backing file
// share one backing read and one vectored write.
//
// Why: a 4K write into each of many consecutive clusters of an overlay
// (W4) needs each cluster's old contents copied in. Done per request, that
// is one ~60K backing read and one 64K write per cluster; the device serves
// far fewer, larger requests much faster (a 1 MiB O_DIRECT write costs
// little more than a 64K one). Append allocation gives consecutive guest
// clusters consecutive host clusters, so the writes of a run can go out as
// one.
//
// How batches form: a batch is open from its creation until a member
// claims it to execute. While at most kCowBatchesRunning batches are
// executing, a new batch is claimed as soon as its first member's thread
// gets there, so a lone writer never waits for company. Beyond that, a
// batch that continues a stream (it starts right after the previous batch)
// waits for a running batch to finish and meanwhile collects the writes
// that follow it: the deeper the queue, the larger the batches. A batch
// that can no longer grow (a later write opened another batch, or it is
// full) never waits.
//
// Why this is as safe as the unbatched path: membership is decided under
// meta_mu_ right after the member's planning, which already published its
// L2 entry and marked its cluster exclusive in inflight_ (no reader or
// writer touches it until the member completes). The executing thread
// writes exactly what each member's ImmediateCow would have written (the
// whole cluster: old contents around the member's data) and computes the
// same per-cluster checksum; each member then notes its checksum and
// leaves inflight_ from its own thread, so a flush still waits for every
// member's data before it commits metadata that points at it.
#define XXH_STATIC_LINKING_ONLY  // XXH64_state_t on the stack
#include <xxhash.h>

#include <cstdlib>
#include <vector>

#include "qcow2/qcow2_image.h"

namespace qcow2j {
namespace {

constexpr uint64_t kCowBatchBytes = 1 << 20;  // the largest batch, in bytes of clusters
constexpr int kCowBatchesRunning = 2;         // beyond this, stream batches wait and grow

}  // namespace

void Qcow2Image::JoinCowBatchLocked(PendingWrite* w) {
  if (!w->st.ok() || w->acts.size() != 1) return;
  const WriteAction& a = w->acts[0];
  // Only whole-cluster COW of clusters whose old contents all come from the
  // backing file (an empty L2 entry): then the run's old contents are one
  // contiguous backing range.
  if (!a.exclusive || !backing_ || a.old_raw != 0 || a.old_bitmap != 0 || a.cow_start != 0 ||
      a.cow_end != cluster_size_)
    return;
  const uint64_t max_members = kCowBatchBytes >> cluster_bits_;
  if (max_members < 2) return;
  CowBatch* last = last_cow_batch_.get();
  const bool follows = last && last->end_cluster == a.cluster && last->end_host == a.cluster_host;
  if (follows && !last->claimed && last->acts.size() < max_members) {
    w->cow_batch = last_cow_batch_;
    w->cow_batch_index = last->acts.size();
    last->acts.push_back(&a);
    last->end_cluster++;
    last->end_host += cluster_size_;
    if (last->acts.size() == max_members) last->cv.notify_all();  // full: it waits no more
    return;
  }
  auto b = std::make_shared<CowBatch>();
  b->continues = follows;
  b->acts.push_back(&a);
  b->end_cluster = a.cluster + 1;
  b->end_host = a.cluster_host + cluster_size_;
  w->cow_batch = b;
  w->cow_batch_index = 0;
  // The batch this one replaces cannot grow any more: its members waiting
  // for it to grow may execute it now.
  if (last && !last->claimed) last->cv.notify_all();
  last_cow_batch_ = std::move(b);
}

Status Qcow2Image::RunCowBatch(PendingWrite* w, uint64_t* hash) {
  std::unique_lock<std::mutex> lk(meta_mu_);
  CowBatch* b = w->cow_batch.get();
  while (!b->done) {
    if (!b->claimed) {
      const bool may_grow = b == last_cow_batch_.get() && b->continues &&
                            b->acts.size() < (kCowBatchBytes >> cluster_bits_);
      if (!may_grow || cow_batches_running_ < kCowBatchesRunning) {
        b->claimed = true;  // no write joins it from here on: acts is stable
        cow_batches_running_++;
        std::unique_ptr<uint8_t, AlignedFree> buf;
        if (!cow_batch_buffers_.empty()) {
          buf = std::move(cow_batch_buffers_.back());
          cow_batch_buffers_.pop_back();
        }
        lk.unlock();
        Status s;
        if (!buf) {
          void* p = nullptr;
          if (int err = ::posix_memalign(&p, 4096, kCowBatchBytes); err != 0) {
            s = Status::FromErrno(err, "allocate a " + std::to_string(kCowBatchBytes) + " byte COW buffer");
          }
          buf.reset(static_cast<uint8_t*>(p));
        }
        if (s.ok()) s = WriteCowBatch(b, buf.get());
        lk.lock();
        if (buf && cow_batch_buffers_.size() < kCowBatchesRunning) cow_batch_buffers_.push_back(std::move(buf));
        cow_batches_running_--;
        b->st = s;
        b->done = true;
        b->acts.clear();  // members leave once done: their actions go with them
        b->cv.notify_all();
        // A slot is free: the open batch, if it waits to grow, may run now.
        if (CowBatch* open = last_cow_batch_.get(); open && !open->claimed) open->cv.notify_all();
        break;
      }
    }
    b->cv.wait(lk);
  }
  *hash = w->cow_batch_index < b->hashes.size() ? b->hashes[w->cow_batch_index] : 0;
  return b->st;
}

// buf: kCowBatchBytes, 4 KiB aligned.
Status Qcow2Image::WriteCowBatch(CowBatch* b, uint8_t* buf) {
  const size_t members = b->acts.size();
  const uint64_t span = members << cluster_bits_;
  const WriteAction& first = *b->acts[0];
  QCOW2J_RETURN_IF_ERROR(ReadBacking(first.cluster << cluster_bits_, buf, span));
  // Each member's cluster: old head, the member's data, old tail.
  std::vector<iovec> iov;
  iov.reserve(3 * members);
  b->hashes.assign(members, 0);
  for (size_t i = 0; i < members; i++) {
    const WriteAction& a = *b->acts[i];
    uint8_t* base = buf + (i << cluster_bits_);
    const uint64_t in = a.pos & (cluster_size_ - 1);
    const size_t first_iov = iov.size();
    if (in > 0) iov.push_back({base, in});
    iov.push_back({const_cast<uint8_t*>(a.src), a.n});
    if (in + a.n < cluster_size_) iov.push_back({base + in + a.n, cluster_size_ - in - a.n});
    if (a.checksum) {
      XXH64_state_t st;
      XXH64_reset(&st, 0);
      for (size_t k = first_iov; k < iov.size(); k++) XXH64_update(&st, iov[k].iov_base, iov[k].iov_len);
      b->hashes[i] = XXH64_digest(&st);
    }
  }
  return data_file_->Writev(first.cluster_host, iov);
}

}  // namespace qcow2j
