#include "cache/memory_model.hpp"

#include <array>

#include "attn/error.hpp"

namespace attn::cache {
namespace {

// Published configurations (config.json of each model).
const std::array<ModelShape, 4> kPresets = {{
    {"llama3-8b", 32, 32, 8, 128, 0, 0},
    {"llama2-7b", 32, 32, 32, 128, 0, 0},
    {"falcon-7b", 32, 71, 1, 64, 0, 0},
    {"deepseek-v3", 61, 128, 128, 128, 512, 64},
}};

}  // namespace

const char* ModelShape::kind() const {
  if (is_mla()) return "MLA";
  if (kv_heads == heads) return "MHA";
  return kv_heads == 1 ? "MQA" : "GQA";
}

std::int64_t ModelShape::values_per_token_per_layer() const {
  if (is_mla()) return std::int64_t(kv_lora_rank) + rope_dim;
  return 2 * std::int64_t(kv_heads) * head_dim;
}

void ModelShape::validate() const {
  ATTN_CHECK(layers >= 1, "layers: expected >= 1, got ", layers);
  ATTN_CHECK(rope_dim >= 0, "rope-dim: expected >= 0, got ", rope_dim);
  ATTN_CHECK(kv_lora_rank >= 0, "kv-lora-rank: expected >= 0 (0 = not MLA), got ", kv_lora_rank);
  if (is_mla()) return;
  ATTN_CHECK(heads >= 1, "heads: expected >= 1, got ", heads);
  ATTN_CHECK(kv_heads >= 1 && heads % kv_heads == 0, "kv-heads: expected a divisor of heads = ", heads, ", got ",
             kv_heads);
  ATTN_CHECK(head_dim >= 1, "head-dim: expected >= 1, got ", head_dim);
}

std::span<const ModelShape> presets() { return kPresets; }

const ModelShape& find_preset(std::string_view name) {
  std::string known;
  for (const ModelShape& m : kPresets) {
    if (m.name == name) return m;
    known += (known.empty() ? "" : ", ") + m.name;
  }
  detail::fail("preset: unknown model '", name, "', expected one of ", known);
}

std::int64_t kv_bytes_per_token(const ModelShape& m, int bytes_per_value) {
  return std::int64_t(m.layers) * m.values_per_token_per_layer() * bytes_per_value;
}

std::int64_t kv_cache_bytes(const ModelShape& m, std::int64_t tokens, int bytes_per_value) {
  return tokens * kv_bytes_per_token(m, bytes_per_value);
}

int parse_cache_dtype_bytes(std::string_view t, std::string_view what) {
  if (t == "f32" || t == "float32") return 4;
  if (t == "f16" || t == "float16" || t == "bf16" || t == "bfloat16") return 2;
  if (t == "fp8" || t == "int8") return 1;
  detail::fail(what, ": expected f32, f16, bf16, fp8 or int8, got '", t, "'");
}

}  // namespace attn::cache
