// Test helpers: fresh random tensors, poisoning, and error measures against the reference.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "attn/attention.hpp"
#include "attn/tensor.hpp"

namespace attn::test {

/// A generator seeded from the test name and a per-process counter, so every case draws fresh
/// inputs but a failing run can be reproduced with ATTN_TEST_SEED.
std::mt19937_64& rng();

/// Normal(0, sigma) values, stored in `dtype` (rounded), on the CPU.
Tensor randn(std::initializer_list<std::int64_t> shape, DType dtype, double sigma = 1.0);
Tensor randn(std::span<const std::int64_t> shape, DType dtype, double sigma = 1.0);
/// Same values converted to f64 (exactly: every storage value is representable).
Tensor to_f64(const TensorView& t);
/// Fills with NaN so unwritten outputs are caught.
void poison(const TensorView& t);
/// max |a - b| over all elements; infinities must match exactly (else returns +inf); NaN -> +inf.
double max_abs_diff(const TensorView& a, const TensorView& b);
/// ||a - b|| / ||b|| (Frobenius), with the same inf/NaN rules.
double rel_l2(const TensorView& a, const TensorView& b);
/// A new i32 tensor.
Tensor i32(std::initializer_list<std::int32_t> values);
Tensor i32(const std::vector<std::int32_t>& values);
/// The message of the attn::Error that `call` throws, or "no error".
std::string error_of(const std::function<void()>& call);

}  // namespace attn::test
