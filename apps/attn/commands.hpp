// The subcommands of the `attn` program. main.cpp lists them in its table; a new command is
// one function here, one file beside this one, and one line in that table.
//
// A command reads the words after its name, writes its report to `out`, and returns the exit
// code. It reports bad arguments and library failures by throwing attn::Error; run_command
// turns that into one line on `err` and exit code 2.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace attn::cli {

using Argv = std::vector<std::string>;
using CommandFn = int (*)(const Argv& args, std::ostream& out);

/// `attn attention`: runs one forward (and optionally backward) call on .npy files.
int attention_command(const Argv& args, std::ostream& out);
/// `attn bench`: times the kernels on preset shapes beside SGEMM and FMA ceilings.
int bench_command(const Argv& args, std::ostream& out);
/// `attn demo`: a tour of every mechanism against the reference.
int demo_command(const Argv& args, std::ostream& out);

/// `attn mem`: KV-cache bytes of a model (MHA, GQA, MQA, MLA presets) and a serving simulation
/// of contiguous against paged reservation.
int mem_command(const Argv& args, std::ostream& out);

/// Runs `fn`; an attn::Error becomes its message on `err` and exit code 2, and any other
/// exception a one-line message and exit code 1, so no failure aborts or prints a trace.
int run_command(CommandFn fn, const Argv& args, std::ostream& out, std::ostream& err);

}  // namespace attn::cli
