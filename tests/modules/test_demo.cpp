// The demo rows run and report agreement where the paths are equivalent.
#include <cmath>

#include <gtest/gtest.h>

#include "attn/modules/demo.hpp"

namespace attn {
namespace {

TEST(Demo, RowsRunAndEquivalentPathsAgree) {
  const std::vector<modules::DemoRow> rows = modules::demo_rows(Backend::reference, 7);
  ASSERT_GE(rows.size(), 10u);
  for (const modules::DemoRow& r : rows) {
    EXPECT_TRUE(std::isfinite(r.value)) << r.name;
    if (r.name.find(" vs ") != std::string::npos) {
      EXPECT_LT(r.value, 1e-5) << r.name;
    }
    if (r.name.find("conversion") != std::string::npos) {
      EXPECT_GT(r.value, 0.0) << r.name;
    }
  }
}

}  // namespace
}  // namespace attn
