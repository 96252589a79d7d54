// The CLI's pure parsing/formatting sources are not part of the library, so
// this one translation unit compiles them into the test binary (each exactly
// once) for the unit tests beside it.
#include "tools/cli/args.cc"            // NOLINT(build/include)
#include "tools/cli/create_options.cc"  // NOLINT(build/include)
#include "tools/cli/info_format.cc"     // NOLINT(build/include)
#include "tools/cli/io_format.cc"       // NOLINT(build/include)
#include "tools/cli/json_writer.cc"     // NOLINT(build/include)
#include "tools/cli/map_format.cc"      // NOLINT(build/include)
#include "tools/cli/zero_detect.cc"     // NOLINT(build/include)
