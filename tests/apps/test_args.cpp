// Option parsing: both spellings of a value, typed getters, and errors that name the option.
#include <gtest/gtest.h>

#include "attn/args.hpp"
#include "attn/error.hpp"

namespace attn {
namespace {

const cli::Usage kUsage{
    "test",
    "a command for tests",
    {{"--n", "N", "a count"}, {"--pair", "A,B", "two integers"}, {"--x", "X", "a number"}, {"--flag", "", "a flag"}}};

std::string error_of(const std::vector<std::string>& argv, void (*use)(const cli::Args&) = nullptr) {
  try {
    const cli::Args a(kUsage, argv);
    if (use != nullptr) use(a);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Args, ParsesBothSpellingsAndTypes) {
  const cli::Args a(kUsage, {"--n", "7", "--pair=-1,3", "--x", "2.5", "--flag"});
  EXPECT_EQ(a.integer("--n", 0, 10, 1), 7);
  EXPECT_EQ(a.integers("--pair", 2, -1), (std::vector<int>{-1, 3}));
  EXPECT_EQ(a.number("--x", 0.0, 1.0), 2.5);
  EXPECT_TRUE(a.has("--flag"));
  EXPECT_FALSE(a.help());
  const cli::Args b(kUsage, {"--help"});
  EXPECT_TRUE(b.help());
  EXPECT_EQ(b.integer("--n", 0, 10, 4), 4);  // the fallback when not given
  EXPECT_FALSE(b.get("--x").has_value());
}

TEST(Args, ErrorsNameTheOption) {
  EXPECT_EQ(error_of({"--n"}), "attn: --n: expected a value N");
  EXPECT_EQ(error_of({"--flag=1"}), "attn: --flag: is a flag and takes no value");
  EXPECT_EQ(error_of({"--n", "1", "--n", "2"}), "attn: --n: given twice");
  EXPECT_EQ(error_of({"--m"}), "attn: --m: unknown option for attn test (try attn test --help)");
  EXPECT_EQ(error_of({"word"}), "attn: unexpected argument 'word' (try attn test --help)");
  EXPECT_EQ(error_of({"--n", "11"}, [](const cli::Args& a) { a.integer("--n", 0, 10, 0); }),
            "attn: --n: expected an integer in [0, 10], got '11'");
  EXPECT_EQ(error_of({"--n", "3x"}, [](const cli::Args& a) { a.integer("--n", 0, 10, 0); }),
            "attn: --n: expected an integer in [0, 10], got '3x'");
  EXPECT_EQ(error_of({"--pair", "1,"}, [](const cli::Args& a) { a.integers("--pair", 2, 0); }),
            "attn: --pair: expected A,B with A,B >= 0, got '1,'");
  EXPECT_EQ(error_of({"--pair", "1,2,3"}, [](const cli::Args& a) { a.integers("--pair", 2, 0); }),
            "attn: --pair: expected A,B with A,B >= 0, got '1,2,3'");
  EXPECT_EQ(error_of({"--x", "nan"}, [](const cli::Args& a) { a.number("--x", 0.0, 0.0); }),
            "attn: --x: expected a finite number >= 0, got 'nan'");
  EXPECT_EQ(error_of({}, [](const cli::Args& a) { a.required("--n"); }), "attn: --n: required (a count)");
}

}  // namespace
}  // namespace attn
