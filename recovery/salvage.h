// Salvage (`qcow2j check --salvage`): reads the active image of a damaged
// qcow2 file cluster by cluster and copies every guest cluster whose mapping
// and data can be trusted into another image. What "trusted" means comes
// from the checker's pass (checker.h): its map of which structure owns each
// host cluster tells data from metadata, so an L2 entry that points into a
// refcount block is lost rather than copied.
//
// The target image and the compression codecs belong to the engine, a layer
// above this one: the caller passes them in (qcow2/salvage_image.cc).
#ifndef QCOW2J_RECOVERY_SALVAGE_H_
#define QCOW2J_RECOVERY_SALVAGE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "metadata/header.h"
#include "qcow2j/check.h"
#include "qcow2j/file.h"
#include "qcow2j/image.h"
#include "recovery/checker.h"

namespace qcow2j {

// Inflates one compressed cluster (`type` is the header's compression_type)
// into exactly dst.size() bytes.
using ClusterDecompressor =
    std::function<Status(uint8_t type, std::span<const uint8_t> src, std::span<uint8_t> dst)>;

class Salvager {
 public:
  // Reads the header of `src` and walks its metadata. An error only when the
  // header is unusable (then nothing can be salvaged) or the image needs
  // what salvage does not do (an external data file, encryption).
  static Result<std::unique_ptr<Salvager>> Open(File* src, const SalvageOptions& opts);

  const Header& header() const { return h_; }

  // Copies the active image into `out`, an empty image of the same virtual
  // size opened for writing without its backing file. Lost ranges are left
  // unallocated, or written as zeros when the image has a backing file (so
  // they do not read stale backing data). Fills the counters, lost ranges
  // and notes of `report`. An error only when writing `out` fails.
  Status CopyTo(Image* out, const ClusterDecompressor& decompress, SalvageReport* report);

 private:
  Salvager(File* src, const SalvageOptions& opts) : src_(src), opts_(opts) {}
  Status Init();
  void Note(SalvageReport* report, const std::string& line);

  // "" when host cluster `offset` may hold a structure of kind `use`, else
  // why not ("points past the end of the file").
  std::string CheckCluster(uint64_t offset, ClusterUse use) const;
  // Reads [offset, offset+len) of the source; bytes past its end read as
  // zeros. "" or the error.
  std::string ReadSource(uint64_t offset, uint8_t* dst, size_t len);

  struct Copy;  // the state of one CopyTo
  Status CopyL2Range(Copy& c, uint64_t l1_index, uint64_t l1_raw);
  Status CopyCluster(Copy& c, uint64_t guest, uint64_t where, uint64_t raw, uint64_t bitmap);
  Status CopyCompressed(Copy& c, uint64_t guest, uint64_t where, uint64_t raw);
  Status Lose(Copy& c, uint64_t guest, uint64_t len, std::string reason);

  File* src_;
  SalvageOptions opts_;
  Header h_;
  uint64_t file_size_ = 0;
  uint32_t cb_ = 16;
  uint64_t cs_ = 65536;
  ClusterOwners owners_;  // empty when the checker's walk failed
  std::vector<std::string> early_notes_;
};

}  // namespace qcow2j

#endif  // QCOW2J_RECOVERY_SALVAGE_H_
