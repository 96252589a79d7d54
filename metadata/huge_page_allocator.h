// A std::allocator for the large per-cluster arrays and read buffers of the
// checker (refcounts computed and on disk, cluster owners): allocations of
// 2 MiB and more are anonymous mappings aligned to 2 MiB and advised to use
// transparent huge pages.
//
// Why: a 1 TiB image has 16 Mi clusters, so one check touches ~100 MiB of
// such arrays. With 4 KiB pages that is ~25,000 page faults, and on a
// virtual machine a fault costs 10-100 us: the faults, not the counting,
// made most of a dirty-image open (W11). With THP it is ~50 faults. Where
// huge pages are unavailable (THP off, fragmented memory, not Linux) this is
// an ordinary mapping and behaves like malloc.
#ifndef QCOW2J_METADATA_HUGE_PAGE_ALLOCATOR_H_
#define QCOW2J_METADATA_HUGE_PAGE_ALLOCATOR_H_

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace qcow2j {

namespace huge_pages {

inline constexpr size_t kHugePage = size_t{2} << 20;

// Allocations from this size up are huge-page mappings.
inline constexpr size_t kThreshold = kHugePage;

inline size_t MappedBytes(size_t bytes) { return (bytes + kHugePage - 1) & ~(kHugePage - 1); }

inline void* Allocate(size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes >= kThreshold) {
    const size_t len = MappedBytes(bytes);
    // Map one huge page more and trim, so the kept part is 2 MiB aligned.
    void* raw = mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (base + kHugePage - 1) & ~uintptr_t{kHugePage - 1};
    if (aligned > base) munmap(raw, aligned - base);
    const uintptr_t end = base + len + kHugePage;
    if (end > aligned + len) munmap(reinterpret_cast<void*>(aligned + len), end - (aligned + len));
    (void)madvise(reinterpret_cast<void*>(aligned), len, MADV_HUGEPAGE);  // advice only
    return reinterpret_cast<void*>(aligned);
  }
#endif
  // Zeroed, like a fresh mapping: HugePageAllocator relies on it.
  void* p = std::calloc(bytes ? bytes : 1, 1);
  if (!p) throw std::bad_alloc();
  return p;
}

inline void Free(void* p, size_t bytes) {
  if (!p) return;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes >= kThreshold) {
    munmap(p, MappedBytes(bytes));
    return;
  }
#endif
  (void)bytes;
  std::free(p);
}

}  // namespace huge_pages

template <class T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <class U>
  HugePageAllocator(const HugePageAllocator<U>&) {}  // NOLINT: rebinding

  T* allocate(size_t n) {
    if (n > SIZE_MAX / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(huge_pages::Allocate(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) { huge_pages::Free(p, n * sizeof(T)); }

  // Memory comes zeroed (a fresh mapping, or calloc), so a value-initialised
  // element of a trivial type is not written again: resize(n) of a vector
  // that must reallocate touches no new page (writing the zeros would
  // fault every page in only to store what the kernel already stored).
  // CAUTION: resize(n) within the capacity (after shrinking) then leaves
  // the old values; use resize(n, value) there.
  template <class U>
  void construct(U* p) noexcept {
    if constexpr (!std::is_trivially_default_constructible_v<U>) ::new (static_cast<void*>(p)) U();
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }

  template <class U>
  bool operator==(const HugePageAllocator<U>&) const {
    return true;
  }
};

// A read buffer that only grows and is never zero-filled (every byte used is
// read into it first), in huge pages from 2 MiB up.
class HugeBuffer {
 public:
  HugeBuffer() = default;
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;
  ~HugeBuffer() { huge_pages::Free(data_, size_); }

  // At least n bytes; the contents are undefined afterwards. May throw
  // std::bad_alloc.
  uint8_t* Reserve(size_t n) {
    if (n > size_) {
      uint8_t* p = static_cast<uint8_t*>(huge_pages::Allocate(n));
      huge_pages::Free(data_, size_);
      data_ = p;
      size_ = n;
    }
    return data_;
  }
  uint8_t* data() { return data_; }

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace qcow2j

#endif  // QCOW2J_METADATA_HUGE_PAGE_ALLOCATOR_H_
