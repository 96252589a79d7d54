// The in-memory Env behind NewMemoryEnv(), exposed for tests that want to look
// at a file's bytes or count syncs without going through File.
#ifndef QCOW2J_IO_MEMORY_ENV_H_
#define QCOW2J_IO_MEMORY_ENV_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qcow2j/file.h"

namespace qcow2j {

// Files are sparse: only 4 KiB pages that were written (or allocated) cost
// memory, so a 2 TiB image with a few clusters is cheap. Thread-safe.
class MemoryEnv : public Env {
 public:
  static constexpr uint64_t kPageSize = 4096;

  // What a test may want to know about a file.
  struct FileStats {
    uint64_t size = 0;
    uint64_t allocated_pages = 0;
    uint64_t syncs = 0;   // Sync() calls that succeeded
    uint64_t writes = 0;  // Write/Writev calls that succeeded
  };

  // The whole file (size bytes, holes as zeros); NotFound if missing.
  virtual Result<std::vector<uint8_t>> Contents(const std::string& path) = 0;
  virtual Result<FileStats> Stats(const std::string& path) = 0;
};

std::unique_ptr<MemoryEnv> NewMemoryEnvForTest();

}  // namespace qcow2j

#endif  // QCOW2J_IO_MEMORY_ENV_H_
