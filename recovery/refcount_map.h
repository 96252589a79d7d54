// A compact array of refcounts, one per host cluster, for the checker (the
// references it counts and the refcounts it reads from the image).
//
// Nearly every count in a real image is 0, 1 or 2, so each cluster starts
// with one byte; the rare larger counts go to a side map. A 1 TiB image of
// 64 KiB clusters has 16 Mi clusters: 16 MiB per map, where 16-bit counters
// would cost 32 MiB and 64-bit ones 128 MiB. An image whose clusters are
// shared by hundreds of snapshots would fill the side map (~50 bytes a
// count), so once more than 1/64 of the counts are large the map widens to
// two bytes per cluster, with the side map for counts of 65535 and up.
#ifndef QCOW2J_RECOVERY_REFCOUNT_MAP_H_
#define QCOW2J_RECOVERY_REFCOUNT_MAP_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <string>
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
      if (wide_mode_) {
        ResizeArray(wide_, n);
      } else {
        ResizeArray(narrow_, n);
      }
    } catch (const std::bad_alloc&) {
      return Status::Aborted("cannot allocate the refcount array for " + std::to_string(n) +
                             " clusters");
    }
    if (n < size_) std::erase_if(big_, [n](const auto& e) { return e.first >= n; });
    size_ = n;
    return Status::OK();
  }
  uint64_t size() const { return size_; }
  // Two bytes per cluster (see above).
  bool wide() const { return wide_mode_; }

  uint64_t Get(uint64_t i) const {
    if (i >= size_) return 0;
    const uint32_t v = Small(i);
    if (v != Big()) return v;
    auto it = big_.find(i);
    return it == big_.end() ? 0 : it->second;
  }
  void Set(uint64_t i, uint64_t v) {
    const uint32_t big = Big();
    const uint32_t cur = Small(i);
    if (v < big) {
      if (cur == big) big_.erase(i);
      PutSmall(i, static_cast<uint32_t>(v));
    } else {
      PutSmall(i, big);
      big_[i] = v;
      if (cur != big) MaybeWiden();
    }
  }
  // Adds 1 unless the count already is `max`; false then.
  bool Increment(uint64_t i, uint64_t max) {
    if (!wide_mode_) {
      const uint8_t v = narrow_[i];
      if (v + 1u < kNarrowBig && v < max) {
        narrow_[i] = static_cast<uint8_t>(v + 1);
        return true;
      }
    } else {
      const uint16_t v = wide_[i];
      if (v + 1u < kWideBig && v < max) {
        wide_[i] = static_cast<uint16_t>(v + 1);
        return true;
      }
    }
    const uint64_t cur = Get(i);
    if (cur >= max) return false;
    Set(i, cur + 1);
    return true;
  }
  // Sets [first, first + count) from big-endian 16-bit refcounts (a
  // refcount block of refcount_order 4), without a side-map lookup per
  // entry unless this map already holds large counts.
  void SetFromBE16(uint64_t first, const uint8_t* p, uint64_t count) {
    auto be16 = [p](uint64_t j) { return static_cast<uint32_t>(p[2 * j] << 8 | p[2 * j + 1]); };
    if (!big_.empty()) {
      for (uint64_t j = 0; j < count; ++j) Set(first + j, be16(j));
      return;
    }
    for (uint64_t j = 0; j < count; ++j) {
      const uint32_t v = be16(j);
      if (v < Big()) {
        PutSmall(first + j, v);  // Big() only changes through Set
      } else {
        Set(first + j, v);
      }
    }
  }

  // True when [i, i + n) holds the same counts in both maps, decided by
  // comparing the arrays' bytes; false also when that cannot tell (a large
  // count in either map, or different widths). Then compare with Get.
  static bool SameRun(const RefcountMap& a, const RefcountMap& b, uint64_t i, uint64_t n) {
    if (i + n > a.size_ || i + n > b.size_) return false;
    if (!a.big_.empty() || !b.big_.empty() || a.wide_mode_ != b.wide_mode_) return false;
    if (a.wide_mode_) return std::memcmp(&a.wide_[i], &b.wide_[i], n * sizeof(uint16_t)) == 0;
    return std::memcmp(&a.narrow_[i], &b.narrow_[i], n) == 0;
  }

  void Clear() {
    std::fill(narrow_.begin(), narrow_.end(), 0);
    std::fill(wide_.begin(), wide_.end(), 0);
    big_.clear();
  }

 private:
  static constexpr uint32_t kNarrowBig = 0xff;
  static constexpr uint32_t kWideBig = 0xffff;

  // Past the capacity the new memory comes zeroed (HugePageAllocator):
  // resize(n) leaves it untouched, so only the pages counted in get faulted
  // in. Within the capacity the old values must be cleared.
  template <class V>
  static void ResizeArray(V& v, uint64_t n) {
    if (n > v.capacity()) {
      v.resize(n);
    } else {
      v.resize(n, 0);
    }
  }

  uint32_t Big() const { return wide_mode_ ? kWideBig : kNarrowBig; }
  uint32_t Small(uint64_t i) const { return wide_mode_ ? wide_[i] : narrow_[i]; }
  void PutSmall(uint64_t i, uint32_t v) {
    if (wide_mode_) {
      wide_[i] = static_cast<uint16_t>(v);
    } else {
      narrow_[i] = static_cast<uint8_t>(v);
    }
  }

  // Widens once the side map holds more than 1/64 of the counts (at least
  // 4096 of them). Keeps the narrow form if the wide array cannot be had.
  void MaybeWiden() {
    if (wide_mode_ || big_.size() <= std::max<uint64_t>(4096, size_ / 64)) return;
    std::vector<uint16_t, HugePageAllocator<uint16_t>> wide;
    try {
      wide.resize(size_);
    } catch (const std::bad_alloc&) {
      return;
    }
    for (uint64_t i = 0; i < size_; ++i) wide[i] = narrow_[i];
    for (auto it = big_.begin(); it != big_.end();) {
      if (it->second < kWideBig) {
        wide[it->first] = static_cast<uint16_t>(it->second);
        it = big_.erase(it);
      } else {
        wide[it->first] = static_cast<uint16_t>(kWideBig);
        ++it;
      }
    }
    wide_ = std::move(wide);
    narrow_ = {};
    wide_mode_ = true;
  }

  uint64_t size_ = 0;
  bool wide_mode_ = false;
  std::vector<uint8_t, HugePageAllocator<uint8_t>> narrow_;    // 16 MiB for 1 TiB of 64 KiB clusters
  std::vector<uint16_t, HugePageAllocator<uint16_t>> wide_;    // once widened
  std::unordered_map<uint64_t, uint64_t> big_;                 // counts >= Big()
};

}  // namespace qcow2j

#endif  // QCOW2J_RECOVERY_REFCOUNT_MAP_H_
