#include "recovery/journal_replay.h"

#define XXH_STATIC_LINKING_ONLY  // XXH64_state_t on the stack
#include <xxhash.h>

#include <algorithm>
#include <deque>
#include <variant>

#include "metadata/hex.h"

namespace qcow2j {
namespace {

// Hashes host bytes [offset, offset + length) of `file` in bounded chunks.
Result<uint64_t> HashRange(File* file, uint64_t offset, uint64_t length) {
  XXH64_state_t state;
  XXH64_state_t* st = &state;
  XXH64_reset(st, 0);
  std::vector<uint8_t> buf(std::min<uint64_t>(length, 1u << 20));
  Status s;
  for (uint64_t done = 0; done < length && s.ok();) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), length - done));
    s = file->Read(offset + done, buf.data(), n);
    if (s.ok()) XXH64_update(st, buf.data(), n);
    done += n;
  }
  uint64_t h = XXH64_digest(st);
  if (!s.ok()) return s;
  return h;
}

}  // namespace

Result<JournalReplayPlan> ReplayJournalRing(File* file, File* data_file,
                                            const JournalExtension& ext,
                                            const JournalApplyFn& apply,
                                            const JournalVerifiedFn& verified) {
  JournalReplayPlan plan;
  auto sb = ReadJournalSuperblock(file, ext);
  if (!sb.ok()) return sb.status().Annotate("journal at " + Hex(ext.area_offset));
  plan.superblock = *sb;
  auto applied = [&](const JournalTransaction& t) -> Status {
    QCOW2J_RETURN_IF_ERROR(apply(t));
    plan.transactions++;
    plan.records += t.records.size();
    plan.bytes += t.length;
    return Status::OK();
  };
  JournalReader reader(file, ext, *sb);
  // Transactions read but not yet confirmed by a later frame's
  // synced_through; `spare` recycles their record buffers.
  std::deque<JournalTransaction> pending;
  std::vector<JournalTransaction> spare;
  JournalTransaction txn;
  while (reader.Next(&txn)) {
    pending.push_back(std::move(txn));
    txn = JournalTransaction();
    if (!spare.empty()) {
      txn = std::move(spare.back());
      spare.pop_back();
    }
    // Confirmed: covered by a durable frame's synced_through, below the tail
    // or vouched for by an earlier recovery (verified_count).
    // max_synced_through only grows, so this never changes its mind.
    const uint64_t confirmed = std::max(reader.max_synced_through(), sb->verified_through());
    while (!pending.empty() && pending.front().sequence <= confirmed) {
      QCOW2J_RETURN_IF_ERROR(applied(pending.front()));
      spare.push_back(std::move(pending.front()));
      pending.pop_front();
    }
  }
  if (!IsEndOfJournal(reader.status()))
    return reader.status().Annotate("journal at " + Hex(ext.area_offset));
  // What is left is unconfirmed: keep the prefix whose data all landed,
  // checking every one before applying any.
  size_t keep = pending.size();
  size_t last_checked = 0;  // 1 + the index of the last kept one with data checksums
  for (size_t i = 0; i < pending.size() && keep == pending.size(); i++) {
    bool sums = false;
    for (const JournalRecord& r : pending[i].records) {
      const DataChecksum* d = std::get_if<DataChecksum>(&r);
      if (!d) continue;
      sums = true;
      auto h = HashRange(data_file, d->host_offset, d->length);
      if (!h.ok()) return h.status().Annotate("journal replay: data of transaction " +
                                              std::to_string(pending[i].sequence));
      if (*h != d->hash) {
        keep = i;
        plan.dropped_reason = "transaction " + std::to_string(pending[i].sequence) + ": data at " +
                              Hex(d->host_offset) + " (" + std::to_string(d->length) +
                              " bytes) never fully landed";
        break;
      }
    }
    if (sums && keep == pending.size()) last_checked = i + 1;
  }
  plan.dropped = pending.size() - keep;
  plan.verified = last_checked;
  if (last_checked && verified) {
    std::vector<DataChecksum> sums;
    for (size_t i = 0; i < last_checked; i++)
      for (const JournalRecord& r : pending[i].records)
        if (const DataChecksum* d = std::get_if<DataChecksum>(&r)) sums.push_back(*d);
    QCOW2J_RETURN_IF_ERROR(verified(*sb, pending[last_checked - 1].sequence, sums));
  }
  for (size_t i = 0; i < keep; i++) QCOW2J_RETURN_IF_ERROR(applied(pending[i]));
  return plan;
}

std::string DescribeReplay(const JournalReplayPlan& plan) {
  std::string s = "journal: replayed " + std::to_string(plan.transactions) + " transaction" +
                  (plan.transactions == 1 ? "" : "s") + " (" + std::to_string(plan.records) +
                  " records, " + std::to_string((plan.bytes + 1023) >> 10) + " KiB)";
  if (plan.verified)
    s += ", " + std::to_string(plan.verified) + " unconfirmed kept (data checksums match)";
  if (plan.dropped)
    s += ", dropped " + std::to_string(plan.dropped) + " unconfirmed (" + plan.dropped_reason + ")";
  return s;
}

}  // namespace qcow2j
