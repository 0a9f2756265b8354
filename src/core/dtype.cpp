#include "attn/dtype.hpp"

#include "attn/error.hpp"

namespace attn {

DType parse_dtype(std::string_view s, std::string_view what) {
  if (s == "f32" || s == "float32" || s == "float") return DType::f32;
  if (s == "f16" || s == "float16" || s == "half") return DType::f16;
  if (s == "bf16" || s == "bfloat16") return DType::bf16;
  detail::fail(what, ": expected f32, f16 or bf16, got '", s, "'");
}

}  // namespace attn
