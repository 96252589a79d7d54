// qcow2j snapshot: qemu-img snapshot's list, create, apply and delete, with
// its messages and exit codes. Creation, apply and delete edit the closed
// file directly (include/qcow2j/snapshot.h).
#include <getopt.h>

#include <cstdio>
#include <string>

#include "qcow2j/snapshot.h"
#include "tools/cli/cli.h"
#include "tools/cli/info_format.h"

namespace qcow2j::cli {

namespace {

enum class Action { kNone, kList, kApply, kCreate, kDelete };

// qemu-img copies the name into a 256-byte buffer.
constexpr size_t kQemuImgNameBytes = 255;

}  // namespace

int CmdSnapshot(int argc, char** argv) {
  std::string fmt, name;
  bool force_share = false;
  Action action = Action::kNone;
  static const option kLong[] = {{"help", no_argument, nullptr, 'h'},
                                 {"force-share", no_argument, nullptr, 'U'},
                                 {nullptr, 0, nullptr, 0}};
  ResetGetopt();
  int c;
  while ((c = getopt_long(argc, argv, ":la:c:d:hf:qU", kLong, nullptr)) != -1) {
    switch (c) {
      case 'l': case 'a': case 'c': case 'd':
        if (action != Action::kNone) {
          PrintError("Cannot mix '-l', '-a', '-c', '-d'\nTry 'qcow2j --help' for more information");
          return 1;
        }
        action = c == 'l' ? Action::kList
                 : c == 'a' ? Action::kApply
                 : c == 'c' ? Action::kCreate
                            : Action::kDelete;
        if (c != 'l') name = optarg;
        break;
      case 'f': fmt = optarg; break;
      case 'q': break;  // qemu-img snapshot prints nothing on success anyway
      case 'U': force_share = true; break;
      case 'h':
        std::printf("usage: qcow2j snapshot [-q] [-U] [-f fmt] [-l | -a snapshot | -c snapshot | "
                    "-d snapshot] filename\n");
        return 0;
      case ':':
        PrintErrorF("missing argument for option '%s'\nTry 'qcow2j --help' for more information",
                    argv[optind - 1]);
        return 1;
      default:
        PrintErrorF("unrecognized option '%s'\nTry 'qcow2j --help' for more information",
                    argv[optind - 1]);
        return 1;
    }
  }
  if (argc - optind != 1) {
    PrintError("Expecting one image file name\nTry 'qcow2j --help' for more information");
    return 1;
  }
  const std::string path = argv[optind];
  if (force_share && action != Action::kList) {  // qemu-img opens read-write but for -l
    PrintError("Could not open '" + path + "': force-share=on can only be used with read-only images");
    return 1;
  }
  // qemu-img opens the image (read-write for changes) even when there is
  // nothing to do; opening read-only gives the same "Could not open" errors.
  OpenOptions opts;
  opts.format = fmt;
  opts.no_backing = true;
  opts.force_share = force_share;
  auto img = OpenImage(path, opts);
  if (!img.ok()) {
    PrintError(img.status().message());
    return 1;
  }
  ImageInfo info = (*img)->Info();
  (void)(*img)->Close();
  (*img).reset();  // the file is edited below: let go of it first

  switch (action) {
    case Action::kNone:
      return 0;
    case Action::kList:
      // qemu-img prints nothing at all for an image without snapshots.
      if (!info.snapshots.empty()) std::fputs(SnapshotTable(info.snapshots).c_str(), stdout);
      return 0;
    case Action::kCreate: {
      if (name.size() > kQemuImgNameBytes) name.resize(kQemuImgNameBytes);
      Status s = info.format != "qcow2" ? Status::NotSupported("Operation not supported")
                                        : CreateSnapshot(path, name);
      if (!s.ok()) {
        PrintError("Could not create snapshot '" + name + "': " + s.message());
        return 1;
      }
      return 0;
    }
    case Action::kApply: {
      Status s = info.format != "qcow2" ? Status::NotSupported("Operation not supported")
                                        : ApplySnapshot(path, name);
      if (!s.ok()) {
        // qemu-img's words for an unknown snapshot.
        PrintError("Could not apply snapshot '" + name + "': " +
                   (s.code() == Code::kNotFound ? "Failed to load snapshot: No such file or directory"
                                                : s.message()));
        return 1;
      }
      return 0;
    }
    case Action::kDelete: {
      // qemu-img looks the snapshot up by name only (bdrv_snapshot_find),
      // then deletes that entry.
      const SnapshotInfo* found = nullptr;
      for (const SnapshotInfo& sn : info.snapshots) {
        if (sn.name == name) {
          found = &sn;
          break;
        }
      }
      if (!found) {
        PrintError("Could not delete snapshot '" + name + "': snapshot not found");
        return 1;
      }
      Status s = DeleteSnapshot(path, found->id);
      if (!s.ok()) {
        PrintError("Could not delete snapshot '" + name + "': " + s.message());
        return 1;
      }
      return 0;
    }
  }
  return 0;
}

}  // namespace qcow2j::cli
