// Opening a qcow2 image: header, snapshot table, L1 table, caches, the
// external data file and the backing chain.
#include <algorithm>
#include "metadata/hex.h"
#include <cstring>
#include <vector>

#include "metadata/endian.h"
#include "journal/journal_format.h"
#include "qcow2/qcow2_image.h"
#include "qcow2j/check.h"

namespace qcow2j {
namespace {

constexpr int kMaxChainDepth = 64;
constexpr uint64_t kDefaultL2CacheMax = 32ull << 20;  // like QEMU's DEFAULT_L2_CACHE_MAX_SIZE on Linux
constexpr size_t kMinCacheSlices = 16;

std::string Dirname(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

std::string ResolveBackingPath(const std::string& image_dir, const std::string& name) {
  if (name.empty() || name[0] == '/' || name.find(':') != std::string::npos) return name;
  return image_dir == "." ? name : image_dir + "/" + name;
}

Result<std::string> ProbeFormat(File* file) {
  uint8_t magic[4] = {};
  QCOW2J_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  if (size >= 4) QCOW2J_RETURN_IF_ERROR(file->Read(0, magic, 4));
  return std::string(size >= 4 && LoadBE32(magic) == kQcowMagic ? "qcow2" : "raw");
}

Result<std::unique_ptr<Image>> Qcow2Image::Open(const std::string& path, const OpenOptions& opts,
                                                int depth) {
  if (depth > kMaxChainDepth)
    return Status::InvalidArgument("backing chain of '" + path + "' is deeper than " +
                                   std::to_string(kMaxChainDepth) + " images (a loop?)");
  std::unique_ptr<Qcow2Image> img(new Qcow2Image());
  Status s = img->Load(path, opts, depth);
  if (!s.ok()) return s;
  return std::unique_ptr<Image>(std::move(img));
}

Qcow2Image::~Qcow2Image() { (void)Close(); }

Status Qcow2Image::ReadL1Table(uint64_t offset, uint64_t entries) {
  std::vector<uint8_t> raw(entries * 8);
  if (entries) QCOW2J_RETURN_IF_ERROR(file_->Read(offset, raw.data(), raw.size()));
  l1_.assign(entries, 0);
  for (uint64_t i = 0; i < entries; i++) l1_[i] = LoadBE64(raw.data() + i * 8);
  return Status::OK();
}

Status Qcow2Image::Load(const std::string& path, const OpenOptions& opts, int depth) {
  path_ = path;
  dir_ = Dirname(path);
  opts_ = opts;
  env_ = opts.env ? opts.env : Env::Default();
  bool snapshot_view = !opts.snapshot_id.empty() || !opts.snapshot_name.empty();
  read_only_ = opts.read_only || snapshot_view;
  unsigned flags = read_only_ ? unsigned{kOpenReadOnly} : 0u;
  if (opts.direct) flags |= kOpenDirect;
  // Writethrough is a group-committed flush after each write (GroupFlush),
  // not O_DSYNC: concurrent writers then share syncs.
  writethrough_ = opts.writethrough && !read_only_;
  QCOW2J_ASSIGN_OR_RETURN(file_, env_->Open(path, flags));
  data_file_ = file_.get();
  QCOW2J_ASSIGN_OR_RETURN(file_size_, file_->Size());

  // Learn the cluster size from a small probe, then parse the whole first cluster.
  std::vector<uint8_t> buf(std::min<uint64_t>(file_size_, kHeaderProbeBytes));
  QCOW2J_RETURN_IF_ERROR(file_->Read(0, buf.data(), buf.size()));
  uint64_t want = buf.size();
  if (buf.size() >= 24) {
    uint32_t bits = LoadBE32(buf.data() + 20);
    if (bits >= kMinClusterBits && bits <= kMaxClusterBits)
      want = std::min<uint64_t>(file_size_, 1ull << bits);
  }
  if (want > buf.size()) {
    buf.resize(want);
    QCOW2J_RETURN_IF_ERROR(file_->Read(0, buf.data(), buf.size()));
  }
  auto parsed = ParseHeader(buf, file_size_);
  if (!parsed.ok()) return parsed.status();
  header_ = std::move(parsed).value();

  cluster_bits_ = header_.cluster_bits;
  cluster_size_ = 1ull << cluster_bits_;
  l2_entry_bytes_ = header_.extended_l2() ? 16 : 8;
  l2_bits_ = cluster_bits_ - (header_.extended_l2() ? 4 : 3);
  slice_bytes_ = static_cast<uint32_t>(std::min<uint64_t>(cluster_size_, 4096));
  slice_entries_bits_ = static_cast<uint32_t>(__builtin_ctz(slice_bytes_ / l2_entry_bytes_));
  virtual_size_ = header_.size;

  const bool journal_bit = header_.incompatible_features & kIncompatJournal;
  if (header_.journal && header_.version >= 3) {
    auto ext = DecodeJournalExtension(*header_.journal, cluster_bits_);
    if (ext.ok()) {
      jext_ = *ext;
      jdirty_refcounts_ = ext->dirty_refcounts();
    } else if (journal_bit || !read_only_) {
      return ext.status().Annotate("image '" + path + "'");
    }
  } else if (journal_bit) {
    return Status::Corruption("image '" + path + "' has incompatible bit 16 (qcow2j journal) set "
                              "but no journal header extension");
  }

  if (!read_only_ && (header_.incompatible_features & kIncompatCorrupt))
    return Status::Corruption("image '" + path + "' is marked corrupt (incompatible bit 1); "
                              "it can only be opened read-only, or repaired with check -r all");
  // With the journal bit set the journal is replayed first (below); the
  // refcount rebuild of a dirty image follows on the replayed tables.
  if (!read_only_ && (header_.incompatible_features & kIncompatDirty) && !journal_bit) {
    // Left dirty (lazy refcounts, or a crash in dirty-refcount mode): the
    // refcounts on disk may be stale. Like QEMU, repair them before any
    // write, then open the repaired image.
    if (dirty_repaired_) return Status::Corruption("image '" + path + "' is still dirty after repair");
    file_.reset();
    CheckOptions co;
    co.env = env_;
    co.repair = RepairMode::kAll;
    auto report = CheckImage(path, co);
    if (!report.ok()) return report.status().Annotate("repairing dirty image '" + path + "'");
    if (report->corruptions > 0)
      return Status::Corruption("image '" + path + "' was dirty and still has " +
                                std::to_string(report->corruptions) + " corruptions after repair");
    recovery_report_ = "refcounts rebuilt after an unclean shutdown (" +
                       std::to_string(report->corruptions_fixed + report->leaks_fixed) +
                       " inconsistencies fixed)";
    dirty_repaired_ = true;
    return Load(path, opts, depth);
  }

  QCOW2J_RETURN_IF_ERROR(LoadSnapshots());

  uint64_t l1_offset = header_.l1_table_offset;
  uint64_t l1_size = header_.l1_size;
  if (snapshot_view) {
    for (size_t i = 0; i < snapshots_.size(); i++) {
      const SnapshotEntry& e = snapshots_[i];
      bool match = !opts.snapshot_id.empty() ? e.id == opts.snapshot_id : e.name == opts.snapshot_name;
      if (match) {
        snapshot_index_ = static_cast<int>(i);
        break;
      }
    }
    if (snapshot_index_ < 0)
      return Status::NotFound("snapshot '" +
                              (!opts.snapshot_id.empty() ? "id " + opts.snapshot_id
                                                         : opts.snapshot_name) +
                              "' not found in '" + path + "'");
    const SnapshotEntry& e = snapshots_[snapshot_index_];
    l1_offset = e.l1_table_offset;
    l1_size = e.l1_size;
    if (e.disk_size) virtual_size_ = e.disk_size;
    uint64_t need = (virtual_size_ + (cluster_size_ << l2_bits_) - 1) >> (cluster_bits_ + l2_bits_);
    if (l1_size < need)
      return Status::Corruption("snapshot " + std::to_string(snapshot_index_) + " l1_size " +
                                std::to_string(l1_size) + " is too small for its disk_size " +
                                std::to_string(virtual_size_));
  }
  if (l1_size * 8 > kMaxL1Bytes)
    return Status::Corruption("l1_size " + std::to_string(l1_size) + " exceeds the maximum");
  if (l1_size && (l1_offset % cluster_size_ || l1_offset > file_size_ ||
                  l1_size * 8 > file_size_ - l1_offset))
    return Status::Corruption("l1_table_offset " + Hex(l1_offset) + " with l1_size " +
                              std::to_string(l1_size) + " lies outside the image file");
  QCOW2J_RETURN_IF_ERROR(ReadL1Table(l1_offset, l1_size));

  // L2 cache in slices of min(cluster, 4 KiB): a miss reads 4 KiB, not a
  // whole 64 KiB-2 MiB table.
  uint64_t cache_bytes = opts.l2_cache_size;
  if (cache_bytes == 0) {
    uint64_t l2_bytes_needed = ((virtual_size_ + cluster_size_ - 1) >> cluster_bits_) * l2_entry_bytes_;
    cache_bytes = std::min(kDefaultL2CacheMax, l2_bytes_needed);
  }
  size_t slices = std::max<size_t>(kMinCacheSlices, cache_bytes / slice_bytes_);
  // A dirty L2 slice may point at clusters whose refcounts are not on disk
  // yet: those refcounts go first (and are made durable), so a crash can
  // leak clusters but never leave an L2 entry without its refcount.
  l2_cache_ = std::make_unique<TableCache>(slice_bytes_, slices,
                                           [this](uint64_t off, const uint8_t* data) -> Status {
    // The slice may describe compressed clusters still in the
    // compressed-write cache: they reach the file, durably, before it does
    // (the crash kit's long run found descriptors past the end of the file).
    bool sync = false;
    if (zrun_.base || !zout_.empty()) {
      QCOW2J_RETURN_IF_ERROR(FinishCompressedRunLocked());
      sync = true;
    }
    if (refcounts_ && refcounts_->dirty()) {
      QCOW2J_RETURN_IF_ERROR(refcounts_->WriteBack());
      sync = true;
    }
    if (sync) QCOW2J_RETURN_IF_ERROR(file_->Sync());
    QCOW2J_RETURN_IF_ERROR(GuardWrite(off, slice_bytes_, MetadataKind::kL2));  // overlap-guard
    l2_writebacks_++;  // a table read without the lock may predate this
    return file_->Write(off, data, slice_bytes_);
  });
  l2_cache_->set_compact(true);

  // With a journal, dirty tables must not reach the disk before their
  // transaction commits: they are written only by checkpoints.
  if (jext_) l2_cache_->set_keep_dirty(true);

  QCOW2J_RETURN_IF_ERROR(OpenDataFile(opts));
  if (!read_only_) QCOW2J_RETURN_IF_ERROR(InitWriter());
  QCOW2J_RETURN_IF_ERROR(ReplayJournal());
  // Where the metadata lives, from the tables as replay left them.
  if (!read_only_) QCOW2J_RETURN_IF_ERROR(BuildMetadataMap());  // overlap-guard
  if (!read_only_ && (header_.incompatible_features & kIncompatDirty)) {
    // A crash in dirty-refcount mode: the journal restored the tables; now
    // rebuild the refcounts (the dirty-image path above).
    std::string replayed = recovery_report_;
    refcounts_.reset();
    l2_cache_.reset();
    jext_.reset();
    JoinAreaPunch();
    file_.reset();
    data_file_owned_.reset();
    QCOW2J_RETURN_IF_ERROR(Load(path, opts, depth));
    recovery_report_ = replayed + (recovery_report_.empty() ? "" : "; " + recovery_report_);
    return Status::OK();
  }
  if (!opts.no_backing && !header_.backing_file.empty())
    QCOW2J_RETURN_IF_ERROR(OpenBackingChain(opts, depth));
  if (!read_only_) {
    journal_on_ = jext_.has_value();
    writer_ready_ = true;
  }
  return Status::OK();
}

Status Qcow2Image::LoadSnapshots() {
  snapshots_.clear();
  if (header_.nb_snapshots == 0) return Status::OK();
  // Entries are variable-sized: read up to the largest possible table, bounded by the file.
  uint64_t max_entry = 40 + kMaxSnapshotExtraData + 2 * 65535 + 8;
  uint64_t want = std::min<uint64_t>({header_.nb_snapshots * max_entry, kMaxSnapshotTableBytes,
                                      file_size_ - header_.snapshots_offset});
  std::vector<uint8_t> table(want);
  QCOW2J_RETURN_IF_ERROR(file_->Read(header_.snapshots_offset, table.data(), table.size()));
  auto parsed = ParseSnapshotTable(table, header_.nb_snapshots, cluster_bits_, file_size_);
  if (!parsed.ok()) return parsed.status();
  snapshots_ = std::move(parsed).value();
  return Status::OK();
}

Status Qcow2Image::OpenDataFile(const OpenOptions& opts) {
  if (!(header_.incompatible_features & kIncompatDataFile)) return Status::OK();
  if (!header_.data_file || header_.data_file->empty())
    return Status::InvalidArgument("image '" + path_ +
                                   "' uses an external data file but names none (data_file)");
  std::string name = ResolveBackingPath(dir_, *header_.data_file);
  unsigned flags = read_only_ ? unsigned{kOpenReadOnly} : 0u;
  if (opts.direct) flags |= kOpenDirect;
  auto f = env_->Open(name, flags);
  if (!f.ok()) return f.status().Annotate("data_file of '" + path_ + "'");
  data_file_owned_ = std::move(f).value();
  data_file_ = data_file_owned_.get();
  QCOW2J_ASSIGN_OR_RETURN(data_file_size_, data_file_->Size());
  return Status::OK();
}

Status Qcow2Image::OpenBackingChain(const OpenOptions& opts, int depth) {
  backing_path_ = ResolveBackingPath(dir_, header_.backing_file);
  OpenOptions bo;
  bo.env = env_;
  bo.read_only = true;
  bo.direct = opts.direct;
  bo.force_share = opts.force_share;
  bo.l2_cache_size = opts.l2_cache_size;
  bo.format = header_.backing_format.value_or("");
  if (bo.format.empty()) {
    auto f = env_->Open(backing_path_, kOpenReadOnly);
    if (!f.ok()) return f.status().Annotate("backing file of '" + path_ + "'");
    QCOW2J_ASSIGN_OR_RETURN(bo.format, ProbeFormat(f->get()));
  }
  backing_fmt_ = bo.format;
  auto b = bo.format == "qcow2" ? Qcow2Image::Open(backing_path_, bo, depth + 1)
                                : Image::Open(backing_path_, bo);
  if (!b.ok()) return b.status().Annotate("Could not open backing file '" + backing_path_ + "'");
  backing_ = std::move(b).value();
  return Status::OK();
}

}  // namespace qcow2j
