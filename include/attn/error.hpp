// attn::Error and the argument-checking helpers used by every public entry point.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace attn {

/// Thrown for every invalid argument and every backend failure. The message names the
/// argument and what was expected, e.g. "attn: q: expected 4 dimensions, got 3".
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream os;
  (os << ... << std::forward<Parts>(parts));
  return os.str();
}

template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  throw Error(concat("attn: ", std::forward<Parts>(parts)...));
}

}  // namespace detail
}  // namespace attn

/// ATTN_CHECK(cond, "q", ": expected ...") throws attn::Error("attn: q: expected ...") when cond is false.
#define ATTN_CHECK(cond, ...)                 \
  do {                                        \
    if (!(cond)) ::attn::detail::fail(__VA_ARGS__); \
  } while (0)
