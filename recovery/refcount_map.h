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

#include "metadata/huge_page_allocator.h"
#include "qcow2j/status.h"

namespace qcow2j {

class RefcountMap {
 public:
  // Grows (or shrinks) to n clusters; new clusters start at 0.
  Status Resize(uint64_t n) {
    try {
      // Past the capacity the new memory comes zeroed (HugePageAllocator):
      // resize(n) leaves it untouched, so only the pages counted in get
      // faulted in. Within the capacity the old values must be cleared.
      if (n > small_.capacity()) {
        small_.resize(n);
      } else {
        small_.resize(n, 0);
      }
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
  // Sets [first, first + count) from big-endian 16-bit refcounts (a
  // refcount block of refcount_order 4), without a per-entry lookup of the
  // large counts unless this map holds some.
  void SetFromBE16(uint64_t first, const uint8_t* p, uint64_t count) {
    if (!big_.empty()) {
      for (uint64_t j = 0; j < count; ++j) Set(first + j, uint64_t{p[2 * j]} << 8 | p[2 * j + 1]);
      return;
    }
    uint16_t* out = small_.data() + first;
    for (uint64_t j = 0; j < count; ++j) {
      const uint16_t v = static_cast<uint16_t>(p[2 * j] << 8 | p[2 * j + 1]);
      if (v == kBig) {
        Set(first + j, v);  // 65535 itself does not fit the small array
      } else {
        out[j] = v;
      }
    }
  }
  // True when no count is 65535 or more: then two maps whose small arrays
  // agree byte for byte over a range agree on every count there.
  bool all_small() const { return big_.empty(); }
  const uint16_t* small_data() const { return small_.data(); }

  void Clear() {
    std::fill(small_.begin(), small_.end(), 0);
    big_.clear();
  }

 private:
  static constexpr uint16_t kBig = 0xffff;
  std::vector<uint16_t, HugePageAllocator<uint16_t>> small_;  // 32 MiB for 1 TiB of 64 KiB clusters
  std::unordered_map<uint64_t, uint64_t> big_;
};

}  // namespace qcow2j

#endif  // QCOW2J_RECOVERY_REFCOUNT_MAP_H_
