#include "reference/linear_attention.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace attn::reference {
namespace {

double phi(double x) { return x > 0 ? x + 1.0 : std::exp(x); }

/// Element (b, s, h, e) of a 4-d view, through read_element's row-major flat index.
double at(const TensorView& t, std::int64_t b, std::int64_t s, std::int64_t h, std::int64_t e) {
  return read_element(t, ((b * t.shape[1] + s) * t.shape[2] + h) * t.shape[3] + e);
}

}  // namespace

void linear_attention(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& out,
                      bool causal) {
  const std::int64_t batch = q.shape[0], sq = q.shape[1], h_q = q.shape[2], d = q.shape[3];
  const std::int64_t sk = k.shape[1], h_k = k.shape[2], dv = v.shape[3], group = h_q / h_k;
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t h = 0; h < h_q; ++h)
      for (std::int64_t i = 0; i < sq; ++i) {
        std::vector<double> num(static_cast<std::size_t>(dv), 0.0);
        double den = 0;
        const std::int64_t last = causal ? std::min(sk - 1, i + sk - sq) : sk - 1;
        for (std::int64_t j = 0; j <= last; ++j) {
          double w = 0;
          for (std::int64_t e = 0; e < d; ++e) w += phi(at(q, b, i, h, e)) * phi(at(k, b, j, h / group, e));
          den += w;
          for (std::int64_t e = 0; e < dv; ++e) num[std::size_t(e)] += w * at(v, b, j, h / group, e);
        }
        for (std::int64_t e = 0; e < dv; ++e)
          write_element(out, ((b * sq + i) * h_q + h) * dv + e, den > 0 ? num[std::size_t(e)] / den : 0.0);
      }
}

}  // namespace attn::reference
