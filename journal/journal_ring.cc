#include "journal/journal_ring.h"

#include <cerrno>

#include <algorithm>
#include <string>

namespace qcow2j {

namespace {

Status WriteSuperblock(File* file, const JournalExtension& ext, const JournalSuperblock& sb) {
  const std::vector<uint8_t> sector = EncodeJournalSuperblock(sb);
  const uint64_t at = ext.area_offset + ext.superblock_offset(sb.slot());
  Status s = file->Write(at, sector.data(), sector.size());
  if (!s.ok()) return s.Annotate("writing journal superblock slot " + std::to_string(sb.slot()));
  return Status::OK();
}

}  // namespace

Result<JournalSuperblock> FormatJournal(File* file, const JournalExtension& ext,
                                        uint64_t first_sequence) {
  if (first_sequence == 0 || first_sequence >= (1ull << 62)) {
    return Status::InvalidArgument("journal first sequence " + std::to_string(first_sequence) +
                                   " is out of range [1, 2^62)");
  }
  JournalSuperblock sb;
  sb.sector_size = ext.sector_size;
  sb.area_size = ext.area_size;
  sb.tail_offset = ext.ring_start();
  sb.tail_sequence = first_sequence;
  sb.generation = NewJournalGeneration();
  // Both slots, so no copy of an older generation can outrank the new one.
  for (uint64_t number = 0; number < kJournalSuperblockSlots; number++) {
    sb.checkpoint_number = number;
    QCOW2J_RETURN_IF_ERROR(WriteSuperblock(file, ext, sb));
  }
  QCOW2J_RETURN_IF_ERROR(file->Sync());
  return sb;
}

Result<JournalSuperblock> MarkJournalVerified(File* file, const JournalExtension& ext,
                                              const JournalSuperblock& sb, uint64_t through) {
  if (through < sb.verified_through() || through - sb.tail_sequence + 1 > ext.ring_bytes() / ext.sector_size) {
    return Status::InvalidArgument("journal: cannot mark sequences " + std::to_string(sb.tail_sequence) +
                                   ".." + std::to_string(through) + " verified");
  }
  JournalSuperblock next = sb;
  next.verified_count = static_cast<uint32_t>(through - sb.tail_sequence + 1);
  next.checkpoint_number = sb.checkpoint_number + 1;  // the other slot: a torn write keeps `sb`
  QCOW2J_RETURN_IF_ERROR(WriteSuperblock(file, ext, next));
  Status s = file->Sync();
  if (!s.ok()) return s.Annotate("syncing the journal superblock");
  return next;
}

Result<JournalSuperblock> ReadJournalSuperblock(File* file, const JournalExtension& ext) {
  std::vector<uint8_t> sector(ext.sector_size);
  Result<JournalSuperblock> slots[kJournalSuperblockSlots] = {Status::NotFound("unread"),
                                                              Status::NotFound("unread")};
  for (uint32_t slot = 0; slot < kJournalSuperblockSlots; slot++) {
    Status s = file->Read(ext.area_offset + ext.superblock_offset(slot), sector.data(),
                          sector.size());
    if (!s.ok()) return s.Annotate("reading journal superblock slot " + std::to_string(slot));
    slots[slot] = DecodeJournalSuperblock(sector, ext);
  }
  return ChooseJournalSuperblock(slots[0], slots[1]);
}

// ---------------------------------------------------------------------------

JournalWriter::JournalWriter(File* file, const JournalExtension& ext, const JournalSuperblock& sb)
    : file_(file),
      ext_(ext),
      sb_(sb),
      head_(sb.tail_offset),
      next_sequence_(sb.tail_sequence),
      synced_through_(sb.tail_sequence - 1) {}

bool JournalWriter::Fits(uint64_t frame_bytes) const {
  if (frame_bytes == 0 || frame_bytes % ext_.sector_size != 0) return false;
  const uint64_t free = free_bytes();
  if (head_ + frame_bytes <= ext_.area_size) return frame_bytes <= free;
  const uint64_t waste = ext_.area_size - head_;
  return frame_bytes <= free && waste <= free - frame_bytes;
}

Status JournalWriter::Append(std::span<const uint8_t> frame, uint64_t* offset) {
  if (failed_) return Status::Aborted("journal writer failed earlier; reopen the image");
  Result<JournalFrameHeader> h = DecodeFrameHeader(frame, next_sequence_, sb_.generation,
                                                   ext_.sector_size, frame.size());
  if (!h.ok()) {
    return Status::InvalidArgument("journal append: not the next frame (" +
                                   h.status().message() + ")");
  }
  if (h->length != frame.size() || h->kind != JournalFrameKind::kTransaction) {
    return Status::InvalidArgument("journal append: frame of " + std::to_string(frame.size()) +
                                   " bytes is not one whole transaction frame");
  }
  if (!Fits(frame.size())) {
    return Status::FromErrno(ENOSPC, "journal full: a " + std::to_string(frame.size()) +
                                         "-byte frame does not fit in " +
                                         std::to_string(free_bytes()) +
                                         " free bytes; checkpoint first");
  }
  uint64_t at = head_;
  uint64_t waste = 0;
  if (head_ + frame.size() > ext_.area_size) {
    // The marker and the frame are made durable by the same Sync, and replay
    // needs both, so their order on disk does not matter.
    waste = ext_.area_size - head_;
    const std::vector<uint8_t> marker =
        EncodeWrapMarker(h->sequence, h->synced_through, sb_.generation, ext_.sector_size);
    Status s = file_->Write(ext_.area_offset + head_, marker.data(), marker.size());
    // A failed write leaves head_ where it was: a retry writes over
    // whatever part landed (no valid frame can have), so the writer stays
    // usable (ENOSPC, say). Only a failed sync stops it.
    if (!s.ok()) return s.Annotate("writing journal wrap marker at area offset " + JournalHex(head_));
    at = ext_.ring_start();
  }
  Status s = file_->Write(ext_.area_offset + at, frame.data(), frame.size());
  if (!s.ok()) {
    return s.Annotate("writing journal transaction " + std::to_string(h->sequence) +
                      " at area offset " + JournalHex(at));
  }
  live_.push_back(Live{h->sequence, at, frame.size(), waste});
  used_ += frame.size() + waste;
  head_ = at + frame.size();
  if (head_ == ext_.area_size) head_ = ext_.ring_start();
  next_sequence_++;
  *offset = at;
  return Status::OK();
}

Status JournalWriter::Sync() {
  if (failed_) return Status::Aborted("journal writer failed earlier; reopen the image");
  const uint64_t through = next_sequence_ - 1;
  Status s = file_->Sync();
  if (!s.ok()) {
    // After a failed fsync the kernel may have dropped the dirty pages: what
    // reached the disk is unknown, so no later frame may claim it did.
    failed_ = true;
    return s.Annotate("syncing the journal");
  }
  synced_through_ = std::max(synced_through_, through);
  return Status::OK();
}

Status JournalWriter::AdvanceTail(uint64_t first_live_sequence) {
  if (failed_) return Status::Aborted("journal writer failed earlier; reopen the image");
  const uint64_t limit = std::min(next_sequence_, synced_through_ + 1);
  if (first_live_sequence < sb_.tail_sequence || first_live_sequence > limit) {
    return Status::InvalidArgument("journal tail " + std::to_string(first_live_sequence) +
                                   " outside [" + std::to_string(sb_.tail_sequence) + ", " +
                                   std::to_string(limit) + "]");
  }
  size_t released = 0;
  while (released < live_.size() && live_[released].sequence < first_live_sequence) released++;
  JournalSuperblock next = sb_;
  // Pointing the tail at the frame itself (not at a wrap marker before it)
  // also frees the wasted bytes the wrap skipped.
  next.tail_offset = released < live_.size() ? live_[released].offset : head_;
  next.tail_sequence = first_live_sequence;
  next.checkpoint_number = sb_.checkpoint_number + 1;
  next.verified_count = 0;  // every live transaction is confirmed by synced_through or the tail
  QCOW2J_RETURN_IF_ERROR(WriteSuperblock(file_, ext_, next));
  Status s = file_->Sync();
  if (!s.ok()) return s.Annotate("syncing the journal superblock");
  // Only now, with the new tail durable, may the released space be reused.
  sb_ = next;
  live_.erase(live_.begin(), live_.begin() + static_cast<std::ptrdiff_t>(released));
  if (!live_.empty()) live_.front().waste = 0;
  used_ = 0;
  for (const Live& l : live_) used_ += l.length + l.waste;
  return Status::OK();
}

// ---------------------------------------------------------------------------

JournalReader::JournalReader(File* file, const JournalExtension& ext, const JournalSuperblock& sb)
    : file_(file),
      ext_(ext),
      generation_(sb.generation),
      pos_(sb.tail_offset),
      sequence_(sb.tail_sequence),
      max_synced_through_(sb.tail_sequence - 1) {}

bool JournalReader::Stop(Status s) {
  status_ = std::move(s);
  done_ = true;
  return false;
}

// Returns the ring bytes [pos, pos + n) from the read-ahead window, refilling
// it with one large read when they are not all there. Frames never cross the
// area's end (the writer wraps first), so the window stops there too.
Status JournalReader::Fetch(uint64_t pos, size_t n, const uint8_t** out) {
  if (pos < window_pos_ || pos + n > window_pos_ + window_len_) {
    const size_t len = static_cast<size_t>(
        std::min<uint64_t>(std::max<size_t>(n, kReadAhead), ext_.area_size - pos));
    if (len < n) return Status::Corruption("journal frame runs past the area end");
    if (buf_size_ < len) {
      buf_.reset(new uint8_t[len]);
      buf_size_ = len;
    }
    window_len_ = 0;  // invalid until the read succeeds
    QCOW2J_RETURN_IF_ERROR(file_->Read(ext_.area_offset + pos, buf_.get(), len));
    window_pos_ = pos;
    window_len_ = len;
  }
  *out = buf_.get() + (pos - window_pos_);
  return Status::OK();
}

bool JournalReader::Next(JournalTransaction* txn) {
  if (done_) return false;
  const uint32_t sector = ext_.sector_size;
  while (true) {
    if (pos_ == ext_.area_size) pos_ = ext_.ring_start();  // a frame ended exactly there
    // Every accepted frame or wrap consumes ring bytes, so this bounds the
    // scan even if the ring holds a full lap of valid-looking frames.
    if (consumed_ >= ext_.ring_bytes()) {
      return Stop(Status::NotFound("end of journal: the whole ring was read"));
    }
    const uint64_t ring_left = ext_.ring_bytes() - consumed_;
    const uint64_t max_length = std::min(ext_.area_size - pos_, ring_left);
    const uint8_t* p = nullptr;
    Status s = Fetch(pos_, sector, &p);
    if (!s.ok()) return Stop(s.Annotate("reading journal at area offset " + JournalHex(pos_)));
    Result<JournalFrameHeader> h =
        DecodeFrameHeader(std::span<const uint8_t>(p, sector), sequence_, generation_, sector,
                          max_length);
    if (!h.ok()) return Stop(h.status().Annotate("area offset " + JournalHex(pos_)));
    if (h->length > sector) {
      s = Fetch(pos_, h->length, &p);
      if (!s.ok()) return Stop(s.Annotate("reading journal at area offset " + JournalHex(pos_)));
    }
    JournalFrameHeader header;
    s = DecodeTransactionInto(std::span<const uint8_t>(p, h->length), sequence_, generation_,
                              sector, &header, &txn->records);
    if (!s.ok()) return Stop(s.Annotate("area offset " + JournalHex(pos_)));
    if (header.kind == JournalFrameKind::kWrap) {
      const uint64_t waste = ext_.area_size - pos_;
      // The writer only wraps when the frame cannot fit: never at ring_start,
      // never past the live part of the ring.
      if (pos_ == ext_.ring_start() || waste >= ring_left) {
        return Stop(Status::Corruption("journal wrap marker for transaction " +
                                       std::to_string(sequence_) + " at area offset " +
                                       JournalHex(pos_) + " is impossible here"));
      }
      consumed_ += waste;
      pos_ = ext_.ring_start();
      continue;
    }
    txn->sequence = header.sequence;
    txn->synced_through = header.synced_through;
    txn->offset = pos_;
    txn->length = header.length;
    max_synced_through_ = std::max(max_synced_through_, txn->synced_through);
    consumed_ += txn->length;
    pos_ += txn->length;
    sequence_++;
    return true;
  }
}

}  // namespace qcow2j
