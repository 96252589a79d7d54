// What every command shares: error reporting in qemu-img's style, opening
// images with the cache modes and flags the commands accept, and the
// command entry points main.cc dispatches to.
#ifndef QCOW2J_TOOLS_CLI_CLI_H_
#define QCOW2J_TOOLS_CLI_CLI_H_

#include <memory>
#include <string>

#include "qcow2j/image.h"
#include "qcow2j/status.h"

namespace qcow2j::cli {

// "qcow2j: <message>" on stderr, one line.
void PrintError(const std::string& message);
// printf-style variant.
void PrintErrorF(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// qemu's -t/-T cache modes mapped onto OpenOptions (none -> O_DIRECT;
// writethrough, directsync -> durable writes; writeback, unsafe -> neither).
Status ApplyCacheMode(const std::string& mode, OpenOptions* opts);

// qemu's -i / --aio modes: threads and native keep the default POSIX Env
// (native AIO is not implemented: it runs on the request threads), io_uring
// selects Env::IoUring(). InvalidArgument "Invalid aio option: X" for another
// mode; the Env's own error ("Unable to use io_uring: ...") where io_uring
// cannot be used here.
Status ApplyAioMode(const std::string& mode, OpenOptions* opts);
// An -i argument: stores it in *mode, or prints "Invalid aio option: X" and
// returns false.
bool ParseAioMode(const char* arg, std::string* mode);

// Opens an image as qemu-img does, with the message "Could not open 'F': ..."
// on failure.
Result<std::unique_ptr<Image>> OpenImage(const std::string& path, const OpenOptions& opts);

// Opens an image at an internal snapshot given as qemu-img's -l takes it:
// "snapshot.id=N", "snapshot.name=X", or a bare X (an id first, then a
// name); "" opens the active image. The Status is the engine's (NotFound
// when there is no such snapshot), without OpenImage's prefix.
Result<std::unique_ptr<Image>> OpenImageAtSnapshot(const std::string& path, OpenOptions opts,
                                                   const std::string& snapshot);

// Restarts getopt for a fresh argv (commands parse their own options).
void ResetGetopt();

// What getopt_long returned that no case of a command's switch takes (call it
// from the switch's default:; option strings start with ':'), reported as
// qemu-img does, naming the option as it was typed: ':' "option '-x' requires
// an argument", anything else "unrecognized option '-x'". The caller returns
// its error code (1; compare 2).
void PrintOptionError(int c, char** argv);

// Whether exactly one operand, the image, follows the options (it is then
// argv[optind]); if not, prints "Expecting one image file name" (the caller
// returns 1).
bool ExpectOneImage(int argc);

int CmdInfo(int argc, char** argv);
int CmdMap(int argc, char** argv);
int CmdCreate(int argc, char** argv);
int CmdConvert(int argc, char** argv);
int CmdCompare(int argc, char** argv);
int CmdResize(int argc, char** argv);
int CmdSnapshot(int argc, char** argv);
int CmdBench(int argc, char** argv);
int CmdIo(int argc, char** argv);
int CmdCheck(int argc, char** argv);
int CmdCrashtest(int argc, char** argv);
int CmdCommit(int argc, char** argv);
int CmdRebase(int argc, char** argv);
int CmdAmend(int argc, char** argv);
int CmdMeasure(int argc, char** argv);

}  // namespace qcow2j::cli

#endif  // QCOW2J_TOOLS_CLI_CLI_H_
