// qemu-img's progress line for -p: "    (12.34/100%)\r" rewritten in place on
// stdout, then a newline at the end (util/qemu-progress.c). Shared by the
// long commands (commit, rebase, amend, check, convert).
#ifndef QCOW2J_TOOLS_CLI_PROGRESS_H_
#define QCOW2J_TOOLS_CLI_PROGRESS_H_

#include <cstdio>

namespace qcow2j::cli {

class Progress {
 public:
  // Disabled: every call does nothing. `min_skip` is how many percent the
  // value must move before it is printed again (qemu-img uses 1 for commit
  // and amend, 2 for rebase); 0 and 100 are always printed.
  explicit Progress(bool enabled, double min_skip = 1.0, std::FILE* out = stdout)
      : enabled_(enabled), min_skip_(min_skip), out_(out) {}
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  ~Progress() { End(); }

  // Prints 0% (qemu-img does so as it starts).
  void Start() { Set(0); }
  // Sets the completed percentage (clamped to 0..100).
  void Set(double percent);
  // Sets done/total as a percentage (total 0 counts as complete).
  void SetFraction(unsigned long long done, unsigned long long total) {
    Set(total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0);
  }
  // Ends the line. Idempotent; does nothing unless something was printed.
  void End();

 private:
  bool enabled_;
  double min_skip_;
  std::FILE* out_;
  double last_ = 0;
  bool printed_ = false;
};

}  // namespace qcow2j::cli

#endif  // QCOW2J_TOOLS_CLI_PROGRESS_H_
