// Command-line options: a declared list per command, parsed once, read through typed getters.
//
// Every mistake is an attn::Error whose message names the option and what was expected, e.g.
// "attn: --window: expected L,R with L,R >= -1, got 'x'"; the commands turn it into exit code 2.
#pragma once

#include <iosfwd>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace attn::cli {

/// One option a command accepts: "--window" taking "L,R", or a flag when `value` is empty.
struct OptionSpec {
  std::string name;
  std::string value;
  std::string help;
};

/// What `attn <command> --help` prints: a synopsis line and the options.
struct Usage {
  std::string command;
  std::string summary;
  std::vector<OptionSpec> options;

  void print(std::ostream& os) const;
};

class Args {
 public:
  /// Parses `argv` (the words after the command name); "--name value" and "--name=value" both work.
  /// Throws on an unknown option, a missing value, a value given to a flag, a repeated option or
  /// a positional word. `--help` is always accepted.
  Args(const Usage& usage, const std::vector<std::string>& argv);

  bool help() const { return help_; }
  /// True when the option was given.
  bool has(std::string_view name) const;
  /// The value of an option that must be given ("--q: required").
  std::string required(std::string_view name) const;
  /// The value, or nothing when the option was not given.
  std::optional<std::string> get(std::string_view name) const;
  /// An integer in [lo, hi]; `fallback` when not given.
  int integer(std::string_view name, int lo, int hi, int fallback) const;
  /// A finite number >= lo; `fallback` when not given.
  double number(std::string_view name, double lo, double fallback) const;
  /// Exactly `count` comma-separated integers, each >= lo (the option's metavar names them in errors).
  std::vector<int> integers(std::string_view name, int count, int lo) const;
  /// Throws "<name>: <what>" for checks that only the command can make.
  [[noreturn]] void fail(std::string_view name, const std::string& what) const;

 private:
  const OptionSpec& spec(std::string_view name) const;

  const Usage& usage_;
  std::map<std::string, std::string, std::less<>> values_;
  bool help_ = false;
};

}  // namespace attn::cli
