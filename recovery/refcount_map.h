// A compact array of refcounts, one per host cluster: 16 bits each, with the
// rare larger values in a side map. A 1 TiB image of 64 KiB clusters has 16M
// clusters, so this costs 32 MiB where 64-bit counters would cost 128 MiB.
#ifndef QCOW2J_RECOVERY_REFCOUNT_MAP_H_
#define QCOW2J_RECOVERY_REFCOUNT_MAP_H_

#include <cstdint>
#include <algorithm>
#include <new>
#include <unordered_map>
#include <vector>

#include "qcow2j/status.h"

namespace qcow2j {

class RefcountMap {
 public:
  // Grows (or shrinks) to n clusters; new clusters start at 0.
  Status Resize(uint64_t n) {
    try {
      small_.resize(n, 0);
    } catch (const std::bad_alloc&) {
      return Status::Aborted("cannot allocate the refcount array for " + std::to_string(n) +
                             " clusters");
    }
    return Status::OK();
  }
  uint64_t size() const { return small_.size(); }

  uint64_t Get(uint64_t i) const {
    if (i >= small_.size()) return 0;
    const uint16_t v = small_[i];
    if (v != kBig) return v;
    auto it = big_.find(i);
    return it == big_.end() ? 0 : it->second;
  }
  void Set(uint64_t i, uint64_t v) {
    if (v < kBig) {
      if (small_[i] == kBig) big_.erase(i);
      small_[i] = static_cast<uint16_t>(v);
    } else {
      small_[i] = kBig;
      big_[i] = v;
    }
  }
  // Adds 1 unless the count already is `max`; false then.
  bool Increment(uint64_t i, uint64_t max) {
    const uint16_t v = small_[i];
    if (v + 1u < kBig && v < max) {
      small_[i] = static_cast<uint16_t>(v + 1);
      return true;
    }
    const uint64_t cur = Get(i);
    if (cur >= max) return false;
    Set(i, cur + 1);
    return true;
  }
  void Clear() {
    std::fill(small_.begin(), small_.end(), 0);
    big_.clear();
  }

 private:
  static constexpr uint16_t kBig = 0xffff;
  std::vector<uint16_t> small_;
  std::unordered_map<uint64_t, uint64_t> big_;
};

}  // namespace qcow2j

#endif  // QCOW2J_RECOVERY_REFCOUNT_MAP_H_
