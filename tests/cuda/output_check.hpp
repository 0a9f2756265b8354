// The forward-output comparison that the CUDA forward and MLA checks share: a row (token,
// head) that the reference finds fully masked must be exactly 0 with lse -inf; every other row
// is checked per element (a loose bound that catches NaN, unwritten and misplaced values), per
// row and over the whole tensor (tight bounds from the rounding of P and of the output to the
// storage dtype), and its lse within 2e-4 relative.
#pragma once

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

namespace attn::test::cuda {

struct CheckResult {
  bool passed = false;
  std::string detail;  ///< errors against their tolerances, or what failed
};

class OutputCheck {
 public:
  /// u: the storage dtype's unit roundoff as the checks count it; vmax: the largest |v|.
  OutputCheck(double u, double vmax) : u_(u), vmax_(vmax) {}

  /// One row `at` (for messages): reference and kernel lse, and `dv` values where
  /// values(e, got, ref) writes the kernel's and the reference's element e.
  template <class Values>
  void row(const std::string& at, double lref, double lgot, int dv, Values&& values) {
    const bool lse_ok = std::isinf(lref) || std::isinf(lgot) ? lgot == lref
                                                              : std::abs(lgot - lref) <= 2e-4 * (1 + std::abs(lref));
    if (!lse_ok) fail("lse " + at + " = " + std::to_string(lgot) + ", expected " + std::to_string(lref));
    if (!std::isinf(lref)) worst_lse_ = std::max(worst_lse_, std::abs(lgot - lref) / (1 + std::abs(lref)));
    double row_err2 = 0, row_ref2 = 0;
    for (int e = 0; e < dv; ++e) {
      double got = 0, ref = 0;
      values(e, got, ref);
      if (std::isinf(lref)) {
        if (got != 0.0) fail("out " + at + "[" + std::to_string(e) + "] = " + std::to_string(got) + " in a fully masked row");
        continue;
      }
      if (!std::isfinite(got) || std::abs(got - ref) > 4 * u_ * (std::abs(ref) + vmax_))
        fail("out " + at + "[" + std::to_string(e) + "] = " + std::to_string(got) + ", expected " + std::to_string(ref));
      row_err2 += (got - ref) * (got - ref);
      row_ref2 += ref * ref;
    }
    if (std::isinf(lref)) return;
    err2_ += row_err2;
    ref2_ += row_ref2;
    const double row_rel = std::sqrt(row_err2) / (std::sqrt(row_ref2) + 1e-30);
    worst_row_ = std::max(worst_row_, row_rel);
    if (!(std::sqrt(row_err2) <= 6 * u_ * std::sqrt(row_ref2) + 1e-3 * u_))
      fail("out row " + at + " relative error " + std::to_string(row_rel) + " > " + std::to_string(6 * u_));
  }

  /// The tensor-wide bound, and whether two identical runs gave identical bytes.
  CheckResult finish(bool repeatable) {
    const double rel = ref2_ > 0 ? std::sqrt(err2_ / ref2_) : std::sqrt(err2_);
    if (!(rel <= 3 * u_)) fail("out relative l2 error " + std::to_string(rel) + " > " + std::to_string(3 * u_));
    if (!repeatable) fail("two identical runs differ (a race?)");
    std::ostringstream summary;
    summary << "rel_l2 " << rel << " (tol " << 3 * u_ << "), worst row " << worst_row_ << " (tol " << 6 * u_
            << "), worst lse " << worst_lse_ << " (tol 2e-4)";
    if (failures_ > 0) summary << "; " << failures_ << " failures: " << why_.str();
    return {failures_ == 0, summary.str()};
  }

 private:
  void fail(const std::string& what) {
    if (failures_++ < 5) why_ << what << "; ";
  }
  double u_, vmax_;
  double worst_row_ = 0, err2_ = 0, ref2_ = 0, worst_lse_ = 0;
  std::ostringstream why_;
  int failures_ = 0;
};

}  // namespace attn::test::cuda
