// attn mem [model options] [--tokens N] [--dtype T]
// attn mem --simulate [model options] [--memory-gib G | --memory-tokens N] [trace options]
//
// The arithmetic lives in src/cache/memory_model.* and serving_sim.* (tested there); this
// file only parses options and prints.
#include "commands.hpp"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "attn/error.hpp"
#include "cache/memory_model.hpp"
#include "cache/serving_sim.hpp"

namespace {

using attn::cache::ModelShape;

constexpr const char* kUsage =
    "usage: attn mem [--preset NAME | --layers L --heads H --kv-heads K --head-dim D\n"
    "                 [--kv-lora-rank R --rope-dim P]] [--tokens N] [--dtype f32|f16|bf16|fp8]\n"
    "       attn mem --simulate [--preset NAME ...] [--dtype T] [--memory-gib G | --memory-tokens N]\n"
    "                 [--requests N] [--rate R] [--prompt MIN:MAX] [--output MIN:MAX]\n"
    "                 [--max-seqlen S] [--page-size P] [--seed S] [--shared-prefix N [--prefixes K]]\n"
    "\n"
    "KV-cache bytes = 2 * layers * tokens * kv_heads * head_dim * bytes (MLA: layers * tokens *\n"
    "(kv_lora_rank + rope_dim) * bytes). Without a model, every preset is listed.\n"
    "Presets: llama3-8b (GQA), llama2-7b (MHA), falcon-7b (MQA), deepseek-v3 (MLA).\n"
    "--simulate replays a seeded request trace against max-length (contiguous) reservation and\n"
    "the paged block manager and reports how much reserved memory holds tokens. --shared-prefix\n"
    "starts every prompt with one of K system prompts of N tokens, which the paged side caches.\n";

/// printf-style formatting onto a stream (the tables are column-aligned with printf widths).
[[gnu::format(printf, 2, 3)]] void print(std::ostream& out, const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  out << buf;
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

long long parse_int(std::string_view opt, const char* text, long long min) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  ATTN_CHECK(end != text && *end == '\0' && v >= min, opt, ": expected an integer >= ", min, ", got '", text, "'");
  return v;
}

double parse_double(std::string_view opt, const char* text) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  ATTN_CHECK(end != text && *end == '\0' && v > 0, opt, ": expected a number > 0, got '", text, "'");
  return v;
}

void parse_range(std::string_view opt, const char* text, int& lo, int& hi) {
  const char* colon = std::strchr(text, ':');
  ATTN_CHECK(colon != nullptr, opt, ": expected MIN:MAX, got '", text, "'");
  const std::string a(text, colon);
  lo = int(parse_int(opt, a.c_str(), 1));
  hi = int(parse_int(opt, colon + 1, 1));
}

void print_model(std::ostream& out, const ModelShape& m, std::int64_t tokens, int bytes, const char* dtype) {
  const std::int64_t per_token = attn::cache::kv_bytes_per_token(m, bytes);
  print(out, "%-12s %-3s  layers %3d  ", m.name.c_str(), m.kind(), m.layers);
  if (m.is_mla()) {
    print(out, "latent %4d + rope %3d      ", m.kv_lora_rank, m.rope_dim);
  } else {
    print(out, "heads %3d kv %3d dim %4d  ", m.heads, m.kv_heads, m.head_dim);
  }
  print(out, "%6lld values/token/layer  %s/token  %s for %lld tokens (%s)\n",
              static_cast<long long>(m.values_per_token_per_layer()), human_bytes(double(per_token)).c_str(),
              human_bytes(double(per_token) * double(tokens)).c_str(), static_cast<long long>(tokens), dtype);
}

void print_sim_row(std::ostream& out, const char* name, const attn::cache::SimResult& r) {
  print(out, "%-22s %9.2f%% %9.2f%% %9.1f %8lld %8lld %10lld\n", name, 100.0 * r.reserved_used_fraction,
              100.0 * (1.0 - r.reserved_used_fraction), r.mean_running, static_cast<long long>(r.max_running),
              static_cast<long long>(r.steps), static_cast<long long>(r.preemptions));
}

int run(const std::vector<std::string>& args, std::ostream& out) {
  ModelShape custom{"custom", 0, 0, 0, 0, 0, 0};
  const ModelShape* model = nullptr;
  bool have_custom = false, simulate = false;
  std::int64_t tokens = 8192;
  std::string dtype = "bf16";
  double memory_gib = 0;
  attn::cache::SimConfig sim;
  bool memory_tokens_set = false;
  const std::size_t argc = args.size();
  for (std::size_t i = 0; i < argc; ++i) {
    const std::string_view opt = args[i];
    if (opt == "-h" || opt == "--help") {
      out << kUsage;
      return 0;
    }
    if (opt == "--simulate") {
      simulate = true;
      continue;
    }
    // Options take one value; asked for inside each branch, so a misspelt option is reported
    // as unknown rather than as missing its value.
    auto val = [&]() -> const char* {
      ATTN_CHECK(i + 1 < argc, opt, ": expected a value (see attn mem --help)");
      return args[++i].c_str();
    };
    if (opt == "--preset") {
      model = &attn::cache::find_preset(val());
    } else if (opt == "--layers") {
      custom.layers = int(parse_int(opt, val(), 1));
      have_custom = true;
    } else if (opt == "--heads") {
      custom.heads = int(parse_int(opt, val(), 1));
      have_custom = true;
    } else if (opt == "--kv-heads") {
      custom.kv_heads = int(parse_int(opt, val(), 1));
      have_custom = true;
    } else if (opt == "--head-dim") {
      custom.head_dim = int(parse_int(opt, val(), 1));
      have_custom = true;
    } else if (opt == "--kv-lora-rank") {
      custom.kv_lora_rank = int(parse_int(opt, val(), 1));
      have_custom = true;
    } else if (opt == "--rope-dim") {
      custom.rope_dim = int(parse_int(opt, val(), 0));
      have_custom = true;
    } else if (opt == "--tokens") {
      tokens = parse_int(opt, val(), 1);
    } else if (opt == "--dtype") {
      dtype = val();
    } else if (opt == "--memory-gib") {
      memory_gib = parse_double(opt, val());
    } else if (opt == "--memory-tokens") {
      sim.memory_tokens = parse_int(opt, val(), 1);
      memory_tokens_set = true;
    } else if (opt == "--requests") {
      sim.num_requests = int(parse_int(opt, val(), 1));
    } else if (opt == "--rate") {
      sim.arrival_rate = parse_double(opt, val());
    } else if (opt == "--prompt") {
      parse_range(opt, val(), sim.prompt_min, sim.prompt_max);
    } else if (opt == "--output") {
      parse_range(opt, val(), sim.output_min, sim.output_max);
    } else if (opt == "--max-seqlen") {
      sim.max_seqlen = int(parse_int(opt, val(), 1));
    } else if (opt == "--page-size") {
      sim.page_size = int(parse_int(opt, val(), 1));
    } else if (opt == "--shared-prefix") {
      sim.shared_prefix = int(parse_int(opt, val(), 0));
    } else if (opt == "--prefixes") {
      sim.num_prefixes = int(parse_int(opt, val(), 1));
    } else if (opt == "--seed") {
      sim.seed = std::uint64_t(parse_int(opt, val(), 0));
    } else {
      attn::detail::fail(opt, ": unknown option (see attn mem --help)");
    }
  }
  ATTN_CHECK(!(model != nullptr && have_custom), "preset: give a preset or explicit dimensions, not both");
  ATTN_CHECK(!(memory_gib > 0 && memory_tokens_set), "memory-gib: give --memory-gib or --memory-tokens, not both");
  if (have_custom) {
    if (custom.kv_lora_rank == 0 && custom.kv_heads == 0) custom.kv_heads = custom.heads;  // plain MHA by default
    custom.validate();
    model = &custom;
  }
  const int bytes = attn::cache::parse_cache_dtype_bytes(dtype);

  if (!simulate) {
    if (model != nullptr) {
      print_model(out, *model, tokens, bytes, dtype.c_str());
    } else {
      for (const ModelShape& m : attn::cache::presets()) print_model(out, m, tokens, bytes, dtype.c_str());
    }
    return 0;
  }

  if (model == nullptr) model = &attn::cache::find_preset("llama3-8b");
  const std::int64_t per_token = attn::cache::kv_bytes_per_token(*model, bytes);
  if (!memory_tokens_set)
    sim.memory_tokens = std::int64_t((memory_gib > 0 ? memory_gib : 16.0) * 1073741824.0 / double(per_token));
  const attn::cache::SimReport rep = attn::cache::simulate(sim);
  print(out, "model %s (%s), %s per token in %s; KV budget %s = %lld token slots\n", model->name.c_str(),
              model->kind(), human_bytes(double(per_token)).c_str(), dtype.c_str(),
              human_bytes(double(sim.memory_tokens) * double(per_token)).c_str(),
              static_cast<long long>(sim.memory_tokens));
  print(out, "trace: %d requests, %.2f per step, prompt %d:%d, output %d:%d, seed %llu\n", sim.num_requests,
              sim.arrival_rate, sim.prompt_min, sim.prompt_max, sim.output_min, sim.output_max,
              static_cast<unsigned long long>(sim.seed));
  if (sim.shared_prefix > 0)
    print(out, "every prompt starts with one of %d system prompts of %d tokens\n", sim.num_prefixes, sim.shared_prefix);
  print(out, "\n%-22s %10s %10s %9s %8s %8s %10s\n", "reservation", "holds tok", "wasted", "mean seqs", "max seqs",
              "steps", "preempted");
  char contiguous[64], paged[64];
  std::snprintf(contiguous, sizeof contiguous, "contiguous (max %d)", sim.max_seqlen);
  std::snprintf(paged, sizeof paged, "paged (page %d)", sim.page_size);
  print_sim_row(out, contiguous, rep.contiguous);
  print_sim_row(out, paged, rep.paged);
  print(out, "\nwasted = reserved KV memory that holds no token (time-averaged). Paged waste is the\n"
              "partly filled last page of each sequence; contiguous waste is max_seqlen minus length.\n"
              "Paged fits %.1fx the sequences in the same memory and finishes in %.0f%% of the steps.\n",
              rep.paged.mean_running / rep.contiguous.mean_running,
              100.0 * double(rep.paged.steps) / double(rep.contiguous.steps));
  if (sim.shared_prefix > 0)
    print(out, "Prefix caching served %.1f%% of the paged side's prompt tokens from cached pages.\n",
                100.0 * double(rep.paged.prefix_hit_tokens) / double(rep.paged.prompt_tokens));
  return 0;
}

}  // namespace

namespace attn::cli {
int mem_command(const Argv& args, std::ostream& out) { return run(args, out); }
}  // namespace attn::cli
