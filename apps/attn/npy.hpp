// Reading and writing NumPy .npy files (format versions 1.0, 2.0 and 3.0).
//
// Supported element types, little-endian only, C order only:
//   '<f4' -> f32   '<f8' -> f64   '<f2' -> f16   '<i4' -> i32   '|u1' -> u8   '|b1' -> u8 (0 or 1)
// Every failure is an attn::Error whose message starts with the file's path, e.g.
// "attn: q.npy: fortran_order arrays are not supported (save with np.ascontiguousarray)".
#pragma once

#include <string>

#include "attn/tensor.hpp"

namespace attn::cli {

/// Reads a whole .npy file into a new contiguous CPU tensor (1 to 6 dimensions).
Tensor read_npy(const std::string& path);

/// Writes a CPU view (f32, f64, f16, i32 or u8; any strides) as a C-order .npy file, in format
/// 1.0 unless the header needs the 4-byte length of 2.0.
void write_npy(const std::string& path, const TensorView& t);

}  // namespace attn::cli
