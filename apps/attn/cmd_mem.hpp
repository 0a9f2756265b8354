// `attn mem`: KV-cache memory of a model, and a serving simulation of contiguous vs paged
// reservation (the arithmetic is in src/cache/memory_model.* and serving_sim.*).
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

/// argv holds the argc arguments after `mem`. Prints to stdout; returns the exit status (0, or
/// 2 on a bad option, with the message on stderr).
int cmd_mem(int argc, char** argv);

namespace attn::cli {
/// The same command in the shape of the CLI's command table (commands.hpp's CommandFn): writes
/// to `out` and throws attn::Error on bad options, which run_command turns into exit code 2.
int mem_command(const std::vector<std::string>& args, std::ostream& out);
}  // namespace attn::cli
