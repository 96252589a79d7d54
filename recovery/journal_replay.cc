#include "recovery/journal_replay.h"

#define XXH_STATIC_LINKING_ONLY  // XXH64_state_t on the stack
#include <xxhash.h>

#include <algorithm>
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

Result<JournalReplayPlan> ReadJournalForReplay(File* file, File* data_file,
                                               const JournalExtension& ext) {
  JournalReplayPlan plan;
  auto sb = ReadJournalSuperblock(file, ext);
  if (!sb.ok()) return sb.status().Annotate("journal at " + Hex(ext.area_offset));
  plan.superblock = *sb;
  JournalReader reader(file, ext, *sb);
  std::vector<JournalTransaction> all;
  JournalTransaction txn;
  while (reader.Next(&txn)) all.push_back(std::move(txn));
  if (!IsEndOfJournal(reader.status()))
    return reader.status().Annotate("journal at " + Hex(ext.area_offset));
  // Confirmed: covered by a later durable frame's synced_through (or below
  // the tail). Only the unconfirmed ones need their data checked.
  const uint64_t confirmed = std::max(reader.max_synced_through(), sb->tail_sequence - 1);
  size_t keep = all.size();
  for (size_t i = 0; i < all.size() && keep == all.size(); i++) {
    if (all[i].sequence <= confirmed) continue;
    for (const JournalRecord& r : all[i].records) {
      const DataChecksum* d = std::get_if<DataChecksum>(&r);
      if (!d) continue;
      auto h = HashRange(data_file, d->host_offset, d->length);
      if (!h.ok()) return h.status().Annotate("journal replay: data of transaction " +
                                              std::to_string(all[i].sequence));
      if (*h != d->hash) {
        keep = i;
        plan.dropped_reason = "transaction " + std::to_string(all[i].sequence) + ": data at " +
                              Hex(d->host_offset) + " (" + std::to_string(d->length) +
                              " bytes) never fully landed";
        break;
      }
    }
  }
  plan.dropped = all.size() - keep;
  all.resize(keep);
  for (const JournalTransaction& t : all) plan.records += t.records.size();
  plan.kept = std::move(all);
  return plan;
}

std::string DescribeReplay(const JournalReplayPlan& plan) {
  std::string s = "journal: replayed " + std::to_string(plan.kept.size()) + " transaction" +
                  (plan.kept.size() == 1 ? "" : "s") + " (" + std::to_string(plan.records) +
                  " records)";
  if (plan.dropped)
    s += ", dropped " + std::to_string(plan.dropped) + " unconfirmed (" + plan.dropped_reason + ")";
  return s;
}

}  // namespace qcow2j
