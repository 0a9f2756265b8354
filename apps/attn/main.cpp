// `attn <command> [options]`: dispatches to the subcommands of commands.hpp.
#include <iostream>
#include <string>
#include <string_view>

#include "commands.hpp"

namespace {

struct Command {
  const char* name;
  const char* summary;
  attn::cli::CommandFn fn;
};

// A new subcommand is one line here.
constexpr Command kCommands[] = {
    {"attention", "run attention on .npy files (forward, and backward with --dout)", attn::cli::attention_command},
    {"bench", "time the kernels on preset shapes beside SGEMM and FMA ceilings", attn::cli::bench_command},
    {"demo", "a tour of every mechanism: error against the reference, time, memory", attn::cli::demo_command},
    {"mem", "KV-cache memory of a model, and a paged-vs-contiguous serving simulation", attn::cli::mem_command},
};

void print_help(std::ostream& os) {
  os << "attn: exact attention kernels (CPU and CUDA)\n\nusage: attn <command> [options]\n\ncommands:\n";
  for (const Command& c : kCommands)
    os << "  " << c.name << std::string(12 - std::string_view(c.name).size(), ' ') << c.summary << '\n';
  os << "\n`attn <command> --help` lists a command's options.\n";
}

}  // namespace

int main(int argc, char** argv) {
  const std::string_view first = argc > 1 ? argv[1] : "";
  if (first.empty() || first == "--help" || first == "-h" || first == "help") {
    // Without a command this is a usage error: help goes to stderr and the exit code is 2.
    print_help(first.empty() ? std::cerr : std::cout);
    return first.empty() ? 2 : 0;
  }
  for (const Command& c : kCommands) {
    if (first == c.name)
      return attn::cli::run_command(c.fn, attn::cli::Argv(argv + 2, argv + argc), std::cout, std::cerr);
  }
  std::cerr << "attn: unknown command '" << first << "' (try attn --help)\n";
  return 2;
}
