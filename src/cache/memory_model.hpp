// KV-cache memory of a model configuration (DESIGN.md, "Caches"):
//   standard attention  2 * L * S * H_kv * d * b   (K and V of every kv head)
//   MLA                 L * S * (kv_lora_rank + rope_dim) * b   (one latent and one RoPE key)
// for L layers, S tokens, H_kv kv heads of dim d, b bytes per value.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace attn::cache {

struct ModelShape {
  std::string name;
  int layers = 0;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int kv_lora_rank = 0;  ///< > 0 selects MLA
  int rope_dim = 0;      ///< MLA's decoupled RoPE key, shared by all heads

  bool is_mla() const { return kv_lora_rank > 0; }
  /// "MHA" (kv_heads == heads), "GQA", "MQA" (one kv head) or "MLA".
  const char* kind() const;
  /// Values cached per token per layer.
  std::int64_t values_per_token_per_layer() const;
  /// Throws attn::Error naming the first bad field.
  void validate() const;
};

/// llama3-8b (GQA), llama2-7b (MHA), falcon-7b (MQA), deepseek-v3 (MLA).
std::span<const ModelShape> presets();
/// Throws attn::Error naming "preset" and listing the known names.
const ModelShape& find_preset(std::string_view name);

std::int64_t kv_bytes_per_token(const ModelShape& m, int bytes_per_value);
std::int64_t kv_cache_bytes(const ModelShape& m, std::int64_t tokens, int bytes_per_value);

/// Bytes per stored value of a cache dtype: f32 4, f16 / bf16 2, fp8 / int8 1. Throws naming `what`.
int parse_cache_dtype_bytes(std::string_view text, std::string_view what = "dtype");

}  // namespace attn::cache
