// Element types. Attention storage is f32, f16 or bf16 (arithmetic is always f32);
// f64 exists for the reference, i32 and u8 for indices, lengths and layouts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace attn {

enum class DType : std::uint8_t { f32, f16, bf16, f64, i32, u8 };

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::f64: return 8;
    case DType::i32: return 4;
    case DType::u8: return 1;
  }
  return 0;
}

constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::f64: return "f64";
    case DType::i32: return "i32";
    case DType::u8: return "u8";
  }
  return "?";
}

/// True for the three types attention tensors may be stored in.
constexpr bool is_storage_dtype(DType t) {
  return t == DType::f32 || t == DType::f16 || t == DType::bf16;
}

/// Parses "f32" / "f16" / "bf16" (also "float32", "float16", "bfloat16"); throws attn::Error naming `what`.
DType parse_dtype(std::string_view text, std::string_view what = "dtype");

}  // namespace attn
