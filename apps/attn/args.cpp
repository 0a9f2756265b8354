#include "args.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <ostream>

#include "attn/error.hpp"

namespace attn::cli {
namespace {

/// Parses a whole word as a base-10 integer; false on anything else (sign, spaces, overflow).
bool parse_int(const std::string& s, long long& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtoll(s.c_str(), &end, 10);
  return errno == 0 && end == s.c_str() + s.size();
}

}  // namespace

void Usage::print(std::ostream& os) const {
  os << "usage: attn " << command << " [options]\n  " << summary << "\n\noptions:\n";
  std::size_t width = 0;
  for (const auto& o : options) width = std::max(width, o.name.size() + (o.value.empty() ? 0 : o.value.size() + 1));
  for (const auto& o : options) {
    std::string left = o.name + (o.value.empty() ? "" : " " + o.value);
    os << "  " << left << std::string(width - left.size() + 2, ' ') << o.help << '\n';
  }
  os << "  --help" << std::string(width > 6 ? width - 6 + 2 : 2, ' ') << "this text\n";
}

Args::Args(const Usage& usage, const std::vector<std::string>& argv) : usage_(usage) {
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& word = argv[i];
    if (word == "--help" || word == "-h") {
      help_ = true;
      continue;
    }
    if (word.rfind("--", 0) != 0)
      detail::fail("unexpected argument '", word, "' (try attn ", usage.command, " --help)");
    const std::size_t eq = word.find('=');
    const std::string name = word.substr(0, eq);
    const OptionSpec* s = nullptr;
    for (const auto& o : usage.options)
      if (o.name == name) s = &o;
    if (s == nullptr)
      detail::fail(name, ": unknown option for attn ", usage.command, " (try attn ", usage.command, " --help)");
    if (values_.count(name) != 0) detail::fail(name, ": given twice");
    std::string value;
    if (s->value.empty()) {
      if (eq != std::string::npos) detail::fail(name, ": is a flag and takes no value");
    } else if (eq != std::string::npos) {
      value = word.substr(eq + 1);
    } else {
      if (i + 1 >= argv.size()) detail::fail(name, ": expected a value ", s->value);
      value = argv[++i];
    }
    values_[name] = value;
  }
}

const OptionSpec& Args::spec(std::string_view name) const {
  for (const auto& o : usage_.options)
    if (o.name == name) return o;
  detail::fail(name, ": not an option of attn ", usage_.command);  // a bug in the command, not the user's
}

bool Args::has(std::string_view name) const {
  spec(name);
  return values_.find(name) != values_.end();
}

std::optional<std::string> Args::get(std::string_view name) const {
  spec(name);
  const auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string Args::required(std::string_view name) const {
  auto v = get(name);
  if (!v) detail::fail(name, ": required (", spec(name).help, ")");
  return *v;
}

int Args::integer(std::string_view name, int lo, int hi, int fallback) const {
  const auto v = get(name);
  if (!v) return fallback;
  long long x = 0;
  if (!parse_int(*v, x) || x < lo || x > hi)
    detail::fail(name, ": expected an integer in [", lo, ", ", hi, "], got '", *v, "'");
  return int(x);
}

double Args::number(std::string_view name, double lo, double fallback) const {
  const auto v = get(name);
  if (!v) return fallback;
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(v->c_str(), &end);
  if (v->empty() || end != v->c_str() + v->size() || errno != 0 || !std::isfinite(x) || x < lo)
    detail::fail(name, ": expected a finite number >= ", lo, ", got '", *v, "'");
  return x;
}

std::vector<int> Args::integers(std::string_view name, int count, int lo) const {
  const std::string text = required(name);
  const std::string& meta = spec(name).value;
  std::vector<int> out;
  std::size_t start = 0;
  bool ok = true;
  while (ok) {
    const std::size_t comma = text.find(',', start);
    long long x = 0;
    ok = parse_int(text.substr(start, comma - start), x) && x >= lo && x <= 1'000'000'000;
    out.push_back(int(x));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (!ok || int(out.size()) != count)
    detail::fail(name, ": expected ", meta, " with ", meta, " >= ", lo, ", got '", text, "'");
  return out;
}

void Args::fail(std::string_view name, const std::string& what) const {
  spec(name);
  detail::fail(name, ": ", what);
}

}  // namespace attn::cli
