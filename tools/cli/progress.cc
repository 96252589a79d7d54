#include "tools/cli/progress.h"

namespace qcow2j::cli {

void Progress::Set(double percent) {
  if (!enabled_) return;
  if (percent < 0) percent = 0;
  if (percent > 100) percent = 100;
  // qemu prints when the value moved by more than min_skip either way, and
  // always at 0 and 100.
  if (printed_ && percent <= last_ + min_skip_ && percent >= last_ - min_skip_ && percent != 0 &&
      percent != 100)
    return;
  last_ = percent;
  printed_ = true;
  std::fprintf(out_, "    (%3.2f/100%%)\r", percent);
  std::fflush(out_);
}

void Progress::End() {
  if (!enabled_ || !printed_) return;
  std::fprintf(out_, "\n");
  std::fflush(out_);
  printed_ = false;
  enabled_ = false;
}

}  // namespace qcow2j::cli
