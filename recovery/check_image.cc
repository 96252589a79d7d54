// CheckImage: a pass, then (when repairing) rounds of fixes each followed by
// a fresh pass, then the double check whose result is reported, as
// qemu-img check -r does.
#include <algorithm>

#include "qcow2j/check.h"
#include "recovery/checker.h"
#include "recovery/repair.h"

namespace qcow2j {

namespace {

constexpr int kMaxRepairRounds = 12;

uint64_t Minus(uint64_t a, uint64_t b) { return a > b ? a - b : 0; }

// Adjacent lost ranges of one image become one. Sorted through indices: a
// hostile image can make hundreds of thousands of ranges, each with strings.
std::vector<LostRange> MergeLost(std::vector<LostRange> v) {
  std::vector<uint32_t> order(v.size());
  for (size_t i = 0; i < v.size(); ++i) order[i] = static_cast<uint32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&v](uint32_t x, uint32_t y) {
    const LostRange& a = v[x];
    const LostRange& b = v[y];
    return a.snapshot != b.snapshot ? a.snapshot < b.snapshot : a.guest_offset < b.guest_offset;
  });
  std::vector<LostRange> out;
  for (uint32_t i : order) {
    LostRange& r = v[i];
    if (!out.empty() && out.back().snapshot == r.snapshot && r.length &&
        out.back().guest_offset + out.back().length == r.guest_offset) {
      out.back().length += r.length;
    } else {
      out.push_back(std::move(r));
    }
  }
  return out;
}

}  // namespace

Result<CheckReport> CheckImage(const std::string& path, const CheckOptions& opts) {
  Env* env = opts.env ? opts.env : Env::Default();
  const bool repair = opts.repair != RepairMode::kNone;
  auto opened = env->Open(path, repair ? 0u : unsigned{kOpenReadOnly});
  if (!opened.ok()) return opened.status();
  std::unique_ptr<File> file = std::move(opened).value();

  ScanOptions so;
  so.on_message = opts.on_message;
  auto progress_between = [&](double from, double to) -> std::function<void(double)> {
    if (!opts.on_progress) return nullptr;
    return [&opts, from, to](double f) { opts.on_progress(from + (to - from) * f); };
  };
  so.on_progress = progress_between(0, repair ? 50 : 100);
  QCOW2J_ASSIGN_OR_RETURN(auto first, ScanImage(file.get(), so));
  CheckReport report = first->report;
  report.filename = path;
  if (!repair) return report;

  std::vector<LostRange> lost;
  RepairContext ctx;
  ctx.file = file.get();
  ctx.mode = opts.repair;
  ctx.on_message = opts.on_message;
  ctx.lost = &lost;
  bool rebuilt = false;
  ctx.rebuilt = &rebuilt;
  ScanOptions quiet;
  quiet.keep_messages = false;  // the rounds read kinds and counts only
  std::unique_ptr<ScanResult> cur = std::move(first);
  bool wrote = false;
  for (int round = 0; round < kMaxRepairRounds; ++round) {
    QCOW2J_ASSIGN_OR_RETURN(bool changed, RepairRound(ctx, *cur));
    if (!changed) break;
    wrote = true;
    QCOW2J_ASSIGN_OR_RETURN(cur, ScanImage(file.get(), quiet));
  }
  if (opts.repair == RepairMode::kAll && cur->report.corruptions == 0 &&
      cur->report.check_errors == 0) {
    QCOW2J_RETURN_IF_ERROR(ClearDirtyAndCorrupt(file.get(), *cur));
  }
  if (!wrote) return report;

  so.on_progress = progress_between(50, 100);
  QCOW2J_ASSIGN_OR_RETURN(auto final_pass, ScanImage(file.get(), so));
  CheckReport out = final_pass->report;
  out.filename = path;
  out.corruptions_fixed = Minus(report.corruptions, out.corruptions);
  out.leaks_fixed = Minus(report.leaks, out.leaks);
  out.repaired_problems = std::move(report.problems);
  out.lost = MergeLost(std::move(lost));
  out.repaired = true;
  return out;
}

}  // namespace qcow2j
