// qemu-img create's "-o" options for qcow2 and raw, mapped onto
// CreateOptions, and the "Formatting '...', fmt=..." line qemu-img prints.
#ifndef QCOW2J_TOOLS_CLI_CREATE_OPTIONS_H_
#define QCOW2J_TOOLS_CLI_CREATE_OPTIONS_H_

#include <map>
#include <string>

#include "qcow2j/image.h"
#include "qcow2j/status.h"
#include "tools/cli/args.h"

namespace qcow2j::cli {

// The options as the user spelled them (qemu echoes strings and booleans
// verbatim but prints sizes normalised), applied to CreateOptions.
struct CreateSpec {
  CreateOptions opts;
  std::map<std::string, std::string> given;  // option name -> text as given
  bool size_given = false;
};

// Applies one -o list (later lists and later keys win). opts.format must be
// set first: raw accepts only size and preallocation.
Status ApplyCreateOptions(const OptionList& list, CreateSpec* spec);
// "fmt=qcow2 cluster_size=65536 ..." (without "Formatting 'F', ").
std::string FormatCreateLine(const CreateSpec& spec);
// The option names and help text for "-o help".
std::string CreateOptionsHelp(const std::string& format);

}  // namespace qcow2j::cli

#endif  // QCOW2J_TOOLS_CLI_CREATE_OPTIONS_H_
