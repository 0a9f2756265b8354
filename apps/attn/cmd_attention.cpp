// `attn attention`: one forward (and, with --dout, backward) call on .npy files, or, with
// --k-cache, one attention_with_kvcache call over a contiguous or paged cache.
//
// Inputs are float .npy files (float32 expected; float16/float64 accepted), rounded to --dtype
// before the kernel runs. Outputs are float32 .npy files, written only after every call
// succeeded, so a rejected argument or a failed call leaves no result files behind.
#include <chrono>
#include <cstring>
#include <ostream>
#include <utility>

#include "args.hpp"
#include "attn/attention.hpp"
#include "attn/attention_kvcache.hpp"
#include "commands.hpp"
#include "npy.hpp"
#include "workload.hpp"

namespace attn::cli {
namespace {

const Usage kUsage{
    "attention",
    "runs attention on .npy files: q (B,Sq,Hq,D) or packed (T,Hq,D); writes float32 .npy results",
    {
        {"--q", "Q.npy", "queries (B,Sq,Hq,D), or packed (T,Hq,D) with --cu-seqlens-q/k"},
        {"--k", "K.npy", "keys (B,Sk,Hk,D) or packed (T,Hk,D); Hq % Hk == 0"},
        {"--v", "V.npy", "values (B,Sk,Hk,Dv) or packed (T,Hk,Dv)"},
        {"--out", "O.npy", "output: q's leading shape, Dv last"},
        {"--lse", "LSE.npy", "also write the log-sum-exp: (B,Hq,Sq), or (Hq,T) packed"},
        {"--dtype", "f32|f16|bf16", "storage type the inputs are rounded to (default f32)"},
        {"--backend", "cpu|reference|cuda", "which kernels run (default cpu; reference = float64 oracle)"},
        {"--scale", "S", "score scale (default 1/sqrt(D))"},
        {"--causal", "", "key j only when j <= p (p = i + Sk - Sq, bottom-right aligned)"},
        {"--window", "L,R", "sliding window p-L <= j <= p+R; -1 = unbounded side"},
        {"--dilation", "G", "dilated window: every (G+1)-th key, the window scaled by G+1"},
        {"--strided", "L", "strided sparse: the last L keys and every L-th before (causal)"},
        {"--fixed", "L,C", "fixed sparse: own block of L and the last C keys of each block (causal)"},
        {"--block-sparse", "LAYOUT.npy", "uint8/bool block layout (nbq,nbk) or (Hq,nbq,nbk); needs --block"},
        {"--block", "BQ,BK", "block sizes of the --block-sparse layout"},
        {"--global", "IDX.npy", "int32 positions of global tokens (attend and are attended everywhere)"},
        {"--softcap", "C", "soft-capping s = C*tanh(s/C) (default off)"},
        {"--cu-seqlens-q", "CQ.npy", "int32 (B+1) offsets of the packed queries"},
        {"--cu-seqlens-k", "CK.npy", "int32 (B+1) offsets of the packed keys"},
        {"--dout", "DO.npy", "run the backward with this output gradient (shaped like out)"},
        {"--dq", "DQ.npy", "where the backward writes dq (with --dout)"},
        {"--dk", "DK.npy", "where the backward writes dk (with --dout)"},
        {"--dv", "DV.npy", "where the backward writes dv (with --dout)"},
        {"--k-cache", "KC.npy", "attend over a cache instead of --k/--v: (B,Smax,Hk,D), or pages (P,S,Hk,D)"},
        {"--v-cache", "VC.npy", "the value cache, shaped like --k-cache with Dv last"},
        {"--cache-seqlens", "CS.npy", "int32 (B,): tokens already in the cache per sequence"},
        {"--block-table", "BT.npy", "int32 (B,max_pages): the caches are a page pool; row b lists b's pages"},
        {"--k-new", "KN.npy", "(B,Snew,Hk,D) written at cache_seqlens[b].. before attention"},
        {"--v-new", "VN.npy", "(B,Snew,Hk,Dv), with --k-new"},
        {"--k-cache-out", "KCO.npy", "write the key cache after the append (float32)"},
        {"--v-cache-out", "VCO.npy", "write the value cache after the append (float32)"},
    }};

/// Reads the file an option names and checks its element type; errors name the option.
Tensor load(const Args& args, const char* option, std::initializer_list<DType> accepted, const char* expected) {
  const std::string path = args.required(option);
  Tensor t;
  try {
    t = read_npy(path);
  } catch (const Error& e) {
    // Name the option too: "attn: --q: q.npy: truncated ...".
    args.fail(option, std::string(e.what()).substr(std::strlen("attn: ")));
  }
  for (DType d : accepted)
    if (t.dtype() == d) return t;
  args.fail(option, path + ": expected " + expected + ", got " + dtype_name(t.dtype()));
}

Tensor load_float(const Args& args, const char* option) {
  return load(args, option, {DType::f32, DType::f16, DType::f64}, "a float32 array");
}

/// A token tensor: (B,S,H,D), or (T,H,D) for a packed batch, rounded to the storage type. The
/// rank is checked here because the output shapes are derived from it before the library runs.
Tensor load_tokens(const Args& args, const char* option, bool packed, DType dtype) {
  Tensor t = load_float(args, option);
  const int want = packed ? 3 : 4;
  if (t.view().ndim != want)
    args.fail(option, *args.get(option) + ": expected " + std::to_string(want) + " dimensions " +
                          (packed ? "(T,H,D) with --cu-seqlens" : "(B,S,H,D)") + ", got " + t.view().shape_str());
  return convert(t, dtype);
}

/// Values rounded to `storage`, held in `hold` (the reference keeps f32 outputs and dout).
Tensor rounded(const TensorView& t, DType storage, DType hold) {
  Tensor r = convert(t, storage);
  return storage == hold ? r : convert(r, hold);
}

Tensor like(const TensorView& t, DType dtype, Device device, std::int64_t last) {
  std::vector<std::int64_t> shape(t.shape.begin(), t.shape.begin() + t.ndim);
  shape.back() = last;
  return Tensor(shape, dtype, device);
}

void write_f32(const std::string& path, const Tensor& t) {
  write_npy(path, convert(on_device(t, Device::cpu()), DType::f32));
}

/// The mask options; the layout and global positions it views are loaded onto `device`.
Mask read_mask(const Args& args, Device device, Tensor& layout, Tensor& globals) {
  Mask m;
  m.causal = args.has("--causal");
  if (args.has("--window")) {
    const auto w = args.integers("--window", 2, -1);
    m.window_left = w[0];
    m.window_right = w[1];
  }
  m.dilation = args.integer("--dilation", 0, 1 << 30, 0);
  if (m.dilation > 0 && !m.has_window()) args.fail("--dilation", "needs --window L,R");
  m.strided = args.integer("--strided", 1, 1 << 30, 0);
  if (args.has("--fixed")) {
    const auto f = args.integers("--fixed", 2, 1);
    if (f[1] > f[0]) args.fail("--fixed", "expected L,C with 1 <= C <= L, got '" + *args.get("--fixed") + "'");
    m.fixed_stride = f[0];
    m.fixed_summary = f[1];
  }
  if (args.has("--block-sparse") != args.has("--block"))
    args.fail(args.has("--block") ? "--block" : "--block-sparse",
              "--block-sparse LAYOUT.npy and --block BQ,BK go together");
  if (args.has("--block-sparse")) {
    layout = on_device(load(args, "--block-sparse", {DType::u8}, "a uint8 or bool array"), device);
    const auto b = args.integers("--block", 2, 1);
    m.block_layout = layout;
    m.block_q = b[0];
    m.block_k = b[1];
  }
  if (args.has("--global")) {
    globals = on_device(load(args, "--global", {DType::i32}, "an int32 array"), device);
    m.global_tokens = globals;
  }
  return m;
}

// The library's argument names in the cache path, and the options that carry them, so its
// errors name what the user typed ("attn: --block-table: entry [0][2] = 9 is not a page ...").
constexpr std::pair<const char*, const char*> kCacheArguments[] = {
    {"q", "--q"},
    {"k_cache", "--k-cache"},
    {"v_cache", "--v-cache"},
    {"block_table", "--block-table"},
    {"cache_seqlens", "--cache-seqlens"},
    {"k_new", "--k-new"},
    {"v_new", "--v-new"},
    {"head_dim", "--q"},
    {"head_dim_v", "--v-cache"},
};

/// attention_with_kvcache over the caches the options name. The append goes into the caches as
/// read into memory (the input files stay as they were), and every output file is written only
/// after the call succeeded; the library validates everything before it writes anything. With
/// --backend cuda every input is copied to the device, and the results and the updated caches
/// come back from it.
int cache_attention(const Args& args, Backend backend, Device device, DType dtype, DType out_dtype,
                    const AttentionParams& params, std::ostream& out) {
  for (const char* o : {"--k", "--v", "--cu-seqlens-q", "--cu-seqlens-k"})
    if (args.has(o)) args.fail(o, "cannot be combined with --k-cache (attention over a cache)");
  for (const char* o : {"--dout", "--dq", "--dk", "--dv"})
    if (args.has(o)) args.fail(o, "attention over a cache is forward only");
  if (args.has("--k-new") != args.has("--v-new"))
    args.fail(args.has("--k-new") ? "--v-new" : "--k-new", "--k-new and --v-new go together");

  KVCacheArgs ka;
  ka.params = params;
  const Tensor q = on_device(load_tokens(args, "--q", false, dtype), device);
  const Tensor k_cache = on_device(load_tokens(args, "--k-cache", false, dtype), device);
  const Tensor v_cache = on_device(load_tokens(args, "--v-cache", false, dtype), device);
  const Tensor seqlens = on_device(load(args, "--cache-seqlens", {DType::i32}, "an int32 array"), device);
  Tensor table, k_new, v_new;
  if (args.has("--block-table"))
    table = on_device(load(args, "--block-table", {DType::i32}, "an int32 array"), device);
  if (args.has("--k-new")) {
    k_new = on_device(load_tokens(args, "--k-new", false, dtype), device);
    v_new = on_device(load_tokens(args, "--v-new", false, dtype), device);
  }
  const std::string out_path = args.required("--out");
  const Tensor o = like(q.view(), out_dtype, device, v_cache.size(-1));
  Tensor lse;
  if (args.has("--lse")) lse = Tensor({q.size(0), q.size(2), q.size(1)}, DType::f32, device);
  ka.q = q;
  ka.k_cache = k_cache;
  ka.v_cache = v_cache;
  ka.block_table = table;
  ka.cache_seqlens = seqlens;
  ka.k_new = k_new;
  ka.v_new = v_new;
  ka.out = o;
  ka.lse = lse;

  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  try {
    attention_with_kvcache(ka, backend);
  } catch (const Error& e) {
    const std::string what = std::string(e.what()).substr(std::strlen("attn: "));
    for (const auto& [name, option] : kCacheArguments)
      if (what.rfind(std::string(name) + ": ", 0) == 0) args.fail(option, what.substr(std::strlen(name) + 2));
    throw;
  }
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();

  write_f32(out_path, o);
  if (args.has("--lse")) write_f32(args.required("--lse"), lse);
  if (args.has("--k-cache-out")) write_f32(args.required("--k-cache-out"), k_cache);
  if (args.has("--v-cache-out")) write_f32(args.required("--v-cache-out"), v_cache);
  out << "attn attention: " << backend_name(backend) << ' ' << dtype_name(dtype) << " q " << q.view().shape_str()
      << " over a " << (table.defined() ? "paged" : "contiguous") << " cache " << k_cache.view().shape_str();
  if (k_new.defined()) out << " (+" << k_new.size(1) << " new)";
  out << ": " << ms << " ms -> " << out_path << '\n';
  return 0;
}

}  // namespace

int attention_command(const Argv& argv, std::ostream& out) {
  const Args args(kUsage, argv);
  if (args.help()) {
    kUsage.print(out);
    return 0;
  }
  const DType dtype = parse_dtype(args.get("--dtype").value_or("f32"), "--dtype");
  const std::string backend_text = args.get("--backend").value_or("cpu");
  if (backend_text != "cpu" && backend_text != "reference" && backend_text != "cuda")
    args.fail("--backend", "expected cpu, reference or cuda, got '" + backend_text + "'");
  const Backend backend = parse_backend(backend_text.c_str(), "--backend");
  if (backend == Backend::cuda && !cuda_available())
    args.fail("--backend", "cuda is not available (this build has no CUDA backend, or no GPU is visible)");
  const Device device = backend == Backend::cuda ? Device::cuda() : Device::cpu();
  // The reference computes in float64; keep its outputs in f32, the precision of the files.
  const DType out_dtype = backend == Backend::reference ? DType::f32 : dtype;

  AttentionParams params;
  Tensor layout, globals;
  params.mask = read_mask(args, device, layout, globals);
  params.scale = float(args.number("--scale", 0.0, 0.0));
  params.softcap = float(args.number("--softcap", 0.0, 0.0));
  if (args.has("--scale") && params.scale <= 0.0f)
    args.fail("--scale", "expected a number > 0, got '" + *args.get("--scale") + "'");
  if (args.has("--k-cache")) return cache_attention(args, backend, device, dtype, out_dtype, params, out);
  for (const char* o : {"--v-cache", "--cache-seqlens", "--block-table", "--k-new", "--v-new", "--k-cache-out",
                        "--v-cache-out"})
    if (args.has(o)) args.fail(o, "needs --k-cache KC.npy (attention over a cache)");

  const bool backward = args.has("--dout");
  for (const char* g : {"--dq", "--dk", "--dv"}) {
    if (backward && !args.has(g)) args.fail(g, "required with --dout");
    if (!backward && args.has(g)) args.fail(g, "needs --dout DO.npy (the backward runs only with it)");
  }
  if (args.has("--cu-seqlens-q") != args.has("--cu-seqlens-k"))
    args.fail(args.has("--cu-seqlens-q") ? "--cu-seqlens-k" : "--cu-seqlens-q",
              "--cu-seqlens-q and --cu-seqlens-k go together (packed batches)");
  const bool packed = args.has("--cu-seqlens-q");

  ForwardArgs fa;
  fa.params = params;

  const Tensor q = on_device(load_tokens(args, "--q", packed, dtype), device);
  const Tensor k = on_device(load_tokens(args, "--k", packed, dtype), device);
  const Tensor v = on_device(load_tokens(args, "--v", packed, dtype), device);
  Tensor cu_q, cu_k;
  if (packed) {
    cu_q = on_device(load(args, "--cu-seqlens-q", {DType::i32}, "an int32 array"), device);
    cu_k = on_device(load(args, "--cu-seqlens-k", {DType::i32}, "an int32 array"), device);
  }
  const std::string out_path = args.required("--out");

  const Tensor o = like(q.view(), out_dtype, device, v.size(-1));
  Tensor lse;
  if (args.has("--lse") || backward) {
    // The backward needs the forward's lse, so it is computed whenever --dout is given.
    const std::int64_t heads = q.size(-2);
    lse = packed ? Tensor({heads, q.size(0)}, DType::f32, device)
                 : Tensor({q.size(0), heads, q.size(1)}, DType::f32, device);
  }
  fa.q = q;
  fa.k = k;
  fa.v = v;
  fa.out = o;
  fa.lse = lse;
  fa.cu_seqlens_q = cu_q;
  fa.cu_seqlens_k = cu_k;

  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  attention_forward(fa, backend);
  const double fwd_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();

  Tensor dq, dk, dv;
  double bwd_ms = 0;
  if (backward) {
    const Tensor dout = on_device(rounded(load_float(args, "--dout"), dtype, out_dtype), device);
    BackwardArgs ba;
    ba.q = q;
    ba.k = k;
    ba.v = v;
    ba.out = o;
    ba.dout = dout;
    ba.lse = lse;
    dq = like(q.view(), out_dtype, device, q.size(-1));
    dk = like(k.view(), out_dtype, device, k.size(-1));
    dv = like(v.view(), out_dtype, device, v.size(-1));
    ba.dq = dq;
    ba.dk = dk;
    ba.dv = dv;
    ba.cu_seqlens_q = cu_q;
    ba.cu_seqlens_k = cu_k;
    ba.params = fa.params;
    const auto t1 = Clock::now();
    attention_backward(ba, backend);
    bwd_ms = std::chrono::duration<double, std::milli>(Clock::now() - t1).count();
  }

  write_f32(out_path, o);
  if (args.has("--lse")) write_f32(args.required("--lse"), lse);
  if (backward) {
    write_f32(args.required("--dq"), dq);
    write_f32(args.required("--dk"), dk);
    write_f32(args.required("--dv"), dv);
  }
  out << "attn attention: " << backend_name(backend) << ' ' << dtype_name(dtype) << " q " << q.view().shape_str()
      << ": forward " << fwd_ms << " ms";
  if (backward) out << ", backward " << bwd_ms << " ms";
  out << " -> " << out_path << '\n';
  return 0;
}

}  // namespace attn::cli
