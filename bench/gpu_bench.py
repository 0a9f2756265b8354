#!/usr/bin/env python3
"""GPU benchmark of attn's CUDA forward beside the PyTorch peers, in one process.

attn runs through its C ABI (build/libattn_gpu_capi.so, bench/gpu/attn_capi.cpp) on the same
torch tensors the peers get. Every timing uses CUDA events around one call, after warm-up,
over input sets rotated so that the L2 cache holds none of the next call's inputs; medians are
reported. Ceilings are measured in the same run: a device-to-device copy (bytes read + written)
and a bf16 8192^3 matmul.

  prefill  bf16, batch x seqlen = 16k tokens, heads x head_dim = 2048, seqlen 4096, causal and not:
           attn, SDPA flash / cuDNN / efficient backends, FlexAttention (head_dim 128)
  window   causal sliding windows 1024 and 256 against plain causal: time per kept 128 x 128 tile,
           and against the bound of one pass over memory; attn on (B, S, H, D) and (B, H, S, D)
           storage, FlexAttention
  decode   paged, batch 64, context 8192, 32 query heads, 8 kv heads, head_dim 128, page size 16:
           attn paged and contiguous; SDPA backends on the contiguous cache (enable_gqa)

Each attn result is also compared with an independent output (SDPA, or a float32 gather for
paged decode) so a fast wrong kernel cannot hide in the table.

  python3 bench/gpu_bench.py --lib build-gpu/libattn_gpu_capi.so [--json out.json] [--quick]
"""
import argparse
import ctypes
import json
import math
import os
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


class AttnFwdDesc(ctypes.Structure):
    """Mirror of AttnFwdDesc in bench/gpu/attn_capi.cpp."""

    _fields_ = [
        ("dtype", ctypes.c_int),
        ("batch", ctypes.c_int), ("seqlen_q", ctypes.c_int), ("seqlen_k", ctypes.c_int),
        ("heads_q", ctypes.c_int), ("heads_kv", ctypes.c_int), ("head_dim", ctypes.c_int), ("head_dim_v", ctypes.c_int),
        ("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("out", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("block_table", ctypes.c_void_p), ("block_table_stride", ctypes.c_int64), ("page_size", ctypes.c_int),
        ("seqlens_k", ctypes.c_void_p),
        ("causal", ctypes.c_int), ("window_left", ctypes.c_int), ("window_right", ctypes.c_int),
        ("scale", ctypes.c_float), ("softcap", ctypes.c_float),
        ("strides", (ctypes.c_int64 * 3) * 4),  # q, k, v, out: batch, token, head; zeros = contiguous
    ]


class Attn:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.attn_last_error.restype = ctypes.c_char_p
        self.lib.attn_cuda_forward_workspace_size.restype = ctypes.c_size_t
        self.lib.attn_cuda_forward_workspace_size.argtypes = [ctypes.POINTER(AttnFwdDesc)]
        self.lib.attn_cuda_forward.restype = ctypes.c_int
        self.lib.attn_cuda_forward.argtypes = [ctypes.POINTER(AttnFwdDesc), ctypes.c_void_p, ctypes.c_size_t]

    def prepare(self, q, k, v, out, causal=False, block_table=None, page_size=0, seqlens_k=None, seqlen_k=None,
                window_left=-1):
        """A callable running attn on these tensors (q/out (B, Sq, H, D); k/v padded or page pools),
        which may be strided views (the last dimension contiguous), e.g. of (B, H, S, D) storage."""
        B, Sq, Hq, D = q.shape
        d = AttnFwdDesc()
        d.dtype = {torch.float16: 0, torch.bfloat16: 1}[q.dtype]
        d.batch, d.seqlen_q, d.heads_q, d.head_dim = B, Sq, Hq, D
        d.seqlen_k = seqlen_k if seqlen_k is not None else k.shape[1]
        d.heads_kv, d.head_dim_v = k.shape[2], v.shape[3]
        d.q, d.k, d.v, d.out = q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr()
        d.lse = None
        if block_table is not None:
            d.block_table, d.block_table_stride, d.page_size = block_table.data_ptr(), block_table.stride(0), page_size
        d.seqlens_k = seqlens_k.data_ptr() if seqlens_k is not None else None
        d.causal, d.window_left, d.window_right = int(causal), window_left, -1
        d.scale, d.softcap = 0.0, 0.0
        for slot, t in enumerate((q, k, v, out)):
            if t.is_contiguous() or (block_table is not None and slot in (1, 2)):
                continue
            if t.stride(3) != 1:
                raise ValueError("attn: the head dimension must be contiguous")
            d.strides[slot][0], d.strides[slot][1], d.strides[slot][2] = t.stride(0), t.stride(1), t.stride(2)
        ws_bytes = self.lib.attn_cuda_forward_workspace_size(ctypes.byref(d))
        if ws_bytes == ctypes.c_size_t(-1).value:
            raise RuntimeError(self.lib.attn_last_error().decode())
        ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device="cuda")
        keep = (q, k, v, out, block_table, seqlens_k, ws)  # the descriptor points into these

        def run():
            if self.lib.attn_cuda_forward(ctypes.byref(d), ws.data_ptr(), ws_bytes) != 0:
                raise RuntimeError(self.lib.attn_last_error().decode())
            return keep[3]

        return run


def time_ms(fns, warmup=3, min_reps=10, max_reps=100, budget_ms=1500.0):
    """Median of CUDA-event timings of single calls, cycling through `fns` (one per input set)."""
    for i in range(warmup):
        fns[i % len(fns)]()
    torch.cuda.synchronize()
    times = []
    total = 0.0
    i = 0
    while len(times) < max_reps and (len(times) < min_reps or total < budget_ms):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fns[i % len(fns)]()
        end.record()
        end.synchronize()
        t = start.elapsed_time(end)
        times.append(t)
        total += t
        i += 1
    return statistics.median(times)


def l2_bytes():
    return torch.cuda.get_device_properties(0).L2_cache_size


def input_sets(set_bytes):
    """Enough input sets that four times the L2 lies between two uses of one set."""
    return max(1, min(8, math.ceil(4 * l2_bytes() / set_bytes)))


def ceilings():
    n = 1 << 30  # 1 GiB each way
    src = torch.empty(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    src.random_(0, 255)
    copy_ms = time_ms([lambda: dst.copy_(src)])
    copy_gbs = 2 * n / copy_ms / 1e6
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_ms = time_ms([lambda: a @ b])
    mm_tflops = 2 * 8192**3 / mm_ms / 1e9
    return copy_gbs, mm_tflops


def rel_err(x, ref):
    x, ref = x.float(), ref.float()
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm()).item()


def sdpa_peer(backend, q, k, v, causal, enable_gqa=False):
    """SDPA on (B, S, H, D) tensors through the (B, H, S, D) transposed views."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=enable_gqa).transpose(1, 2)

    return run


def flex_peer(q, k, v, causal):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    B, S, H, D = q.shape
    block_mask = None
    if causal:
        block_mask = create_block_mask(lambda b, h, qi, kj: qi >= kj, B=None, H=None, Q_LEN=S, KV_LEN=S, device="cuda")
    # FlexAttention's own layout, (B, H, S, D) contiguous, copied once outside the timing.
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    return lambda: compiled(qt, kt, vt, block_mask=block_mask).transpose(1, 2)


# ATTN_CUDA_FWD_CTAS above any tile count: the Hopper forward then launches one CTA per query
# tile and the hardware hands them out, as before its grid became persistent.
ONE_CTA_PER_TILE = "1000000000"


def with_env(fn, key, value):
    """fn run with an environment variable set (attn reads ATTN_CUDA_* per call)."""

    def run():
        os.environ[key] = value
        try:
            return fn()
        finally:
            del os.environ[key]

    return run


def record(rows, row):
    """Keeps a result and prints it at once, so a run cut short still shows what it measured."""
    rows.append(row)
    print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def bench_prefill(attn, head_dim, causal, rows, peers_only=None, variants=("sm90-plain",)):
    seqlen, tokens, width = 4096, 16384, 2048
    B, H, D = tokens // seqlen, width // head_dim, head_dim
    set_bytes = 4 * B * seqlen * H * D * 2
    n_sets = input_sets(set_bytes)
    sets = []
    for _ in range(n_sets):
        q, k, v = (torch.randn(B, seqlen, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        sets.append((q, k, v, torch.empty_like(q)))
    flops = 4 * B * H * seqlen * seqlen * D * (0.5 if causal else 1.0)
    name = f"prefill d{D} {'causal' if causal else 'full'}"

    # (label, factory of one callable per input set, rel_err); built inside the try so that a
    # peer that cannot run this shape (or fails to compile) becomes an n/a row.
    peers = []
    if peers_only is None:
        ours = [attn.prepare(q, k, v, o, causal=causal) for q, k, v, o in sets]
        q, k, v, _ = sets[0]
        reference = sdpa_peer([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH], q, k, v,
                              causal)()
        peers.append(("attn", lambda: ours, rel_err(ours[0](), reference)))
        if head_dim in (64, 128, 256):
            # The sm80 (mma.sync) kernel on the same inputs, where the Hopper one is the default.
            sm80 = [with_env(fn, "ATTN_CUDA_FWD", "sm80") for fn in ours]
            peers.append(("attn-sm80", lambda: sm80, rel_err(sm80[0](), reference)))
        if head_dim == 128:
            # Loop variants of the Hopper kernel (src/cuda/sm90/flash_fwd.cuh, ATTN_CUDA_FWD); only
            # those that passed attn_gpu_selftest on this GPU (scripts/gpu_check passes --variants).
            # The Hopper kernel's cp.async producer (its fallback for packed and paged rows).
            cpasync = [with_env(fn, "ATTN_CUDA_TMA", "0") for fn in ours]
            peers.append(("attn-cpasync", lambda: cpasync, rel_err(cpasync[0](), reference)))
            # The Hopper kernel with one CTA per query tile instead of its persistent grid.
            per_tile = [with_env(fn, "ATTN_CUDA_FWD_CTAS", ONE_CTA_PER_TILE) for fn in ours]
            peers.append(("attn-cta-per-tile", lambda: per_tile, rel_err(per_tile[0](), reference)))
            for variant in variants:
                fns = [with_env(fn, "ATTN_CUDA_FWD", variant) for fn in ours]
                peers.append(("attn-" + variant, lambda fns=fns: fns, rel_err(fns[0](), reference)))
        for label, backend in [("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                               ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)]:
            peers.append((label, lambda backend=backend: [sdpa_peer(backend, *s[:3], causal) for s in sets], None))
    elif peers_only == "flex":
        peers.append(("flex", lambda: [flex_peer(*s[:3], causal) for s in sets], None))
    for label, make, e in peers:
        try:
            ms = time_ms(make())
            record(rows, dict(case=name, impl=label, ms=ms, tflops=flops / ms / 1e9, rel_err=e))
        except Exception as ex:  # a peer without support for this shape
            record(rows, dict(case=name, impl=label, error=str(ex).splitlines()[0][:80]))


def kept_tiles(seqlen, window_left, tile=128):
    """Tiles (tile x tile) of a causal sliding-window mask (keys p - window_left .. p) with an
    allowed element; window_left -1 is plain causal."""
    kept = 0
    for qt in range(0, seqlen, tile):
        first_key = 0 if window_left < 0 else max(0, qt - window_left)
        kept += qt // tile - first_key // tile + 1
    return kept


def flex_window_peer(q, k, v, window):
    """FlexAttention with a causal sliding window (keys p - window .. p; -1 plain causal) on
    (B, H, S, D) contiguous tensors; the block mask skips the 128 x 128 blocks without a key."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    B, H, S, D = q.shape

    def allowed(b, h, qi, kj):
        return (qi >= kj) & (qi - kj <= window) if window >= 0 else qi >= kj

    block_mask = create_block_mask(allowed, B=None, H=None, Q_LEN=S, KV_LEN=S, device="cuda")
    return lambda: compiled(q, k, v, block_mask=block_mask)


def bench_window(attn, rows, copy_gbs, flex=False):
    """Causal sliding windows against plain causal: the time per kept 128 x 128 tile (the Hopper
    kernel's tile at D 128) relative to causal, which the issue wants near 1 (time in proportion
    to the tiles kept), for:
      attn               the bench's (B, S, H, D) tensors
      attn-cta-per-tile  the same, one CTA per query tile instead of the persistent grid
      attn-bhsd          (B, H, S, D) storage (each head's rows contiguous), through strided views
      flex               FlexAttention on (B, H, S, D) storage (not with --quick: it compiles per window)
    each against its own causal time. Short windows cannot go below one pass over memory: every
    Q, K and V byte read and every O byte written once, whatever the window (`floor_ms`, at the
    copy bandwidth of this run). `vs_bound` divides the time by the larger of that floor and the
    tile-proportional time, so 1.0 is the best any kernel could do."""
    seqlen, tokens, width, D = 4096, 16384, 2048, 128
    B, H = tokens // seqlen, width // D
    set_bytes = 4 * B * seqlen * H * D * 2
    floor_ms = set_bytes / copy_gbs / 1e6
    n_sets = input_sets(set_bytes)
    sets = [tuple(torch.randn(B, seqlen, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)) for _ in range(n_sets)]
    outs = [torch.empty_like(s[0]) for s in sets]
    # The same values in (B, H, S, D) storage, handed over as (B, S, H, D) views.
    head_major = [tuple(x.transpose(1, 2).contiguous().transpose(1, 2) for x in s) for s in sets]
    outs_hm = [torch.empty(B, H, seqlen, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in sets]
    # The masked SDPA reference of the first sequence, once per window for every implementation.
    i = torch.arange(seqlen, device="cuda")
    q, k, v = sets[0]
    refs = {}
    for window in (-1, 1024, 256):
        allowed = (i[None, :] <= i[:, None]) & ((window < 0) | (i[:, None] - i[None, :] <= window))
        refs[window] = F.scaled_dot_product_attention(q[:1].transpose(1, 2), k[:1].transpose(1, 2),
                                                      v[:1].transpose(1, 2), attn_mask=allowed).transpose(1, 2)
    for impl in ["attn", "attn-cta-per-tile", "attn-bhsd"] + (["flex"] if flex else []):
        base = None
        for window in (-1, 1024, 256):
            try:
                if impl == "flex":
                    fns = [flex_window_peer(*(x.transpose(1, 2) for x in s), window) for s in head_major]
                    fns = [lambda fn=fn: fn().transpose(1, 2) for fn in fns]
                elif impl == "attn-bhsd":
                    fns = [attn.prepare(q, k, v, o, causal=True, window_left=window) for (q, k, v), o in zip(head_major, outs_hm)]
                else:
                    fns = [attn.prepare(q, k, v, o, causal=True, window_left=window) for (q, k, v), o in zip(sets, outs)]
                    if impl == "attn-cta-per-tile":
                        fns = [with_env(fn, "ATTN_CUDA_FWD_CTAS", ONE_CTA_PER_TILE) for fn in fns]
                err = rel_err(fns[0]()[:1], refs[window])
                ms = time_ms(fns)
            except Exception as ex:  # a peer that cannot run here
                record(rows, dict(case=f"window {window}", impl=impl, error=str(ex).splitlines()[0][:80]))
                break
            tiles = kept_tiles(seqlen, window)
            if base is None:
                base = ms / tiles
            name = "window causal" if window < 0 else f"window {window}"
            record(rows, dict(case=name, impl=impl, ms=ms, tiles=tiles, per_tile_vs_causal=ms / tiles / base,
                              floor_ms=floor_ms, vs_bound=ms / max(tiles * base, floor_ms), rel_err=err))


def bench_decode(attn, rows):
    B, ctx, Hq, Hk, D, page = 64, 8192, 32, 8, 128, 16
    pages_per_seq = ctx // page
    kv_bytes = 2 * B * ctx * Hk * D * 2
    name = f"decode paged{page}"
    q = torch.randn(B, 1, Hq, D, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    # Pages in a shuffled order, as a block pool hands them out.
    n_pages = B * pages_per_seq
    pool_k = torch.randn(n_pages, page, Hk, D, device="cuda", dtype=torch.bfloat16)
    pool_v = torch.randn(n_pages, page, Hk, D, device="cuda", dtype=torch.bfloat16)
    table = torch.randperm(n_pages, device="cuda", dtype=torch.int64).to(torch.int32).view(B, pages_per_seq)
    seqlens = torch.full((B,), ctx, device="cuda", dtype=torch.int32)
    paged = attn.prepare(q, pool_k, pool_v, out, block_table=table, page_size=page, seqlens_k=seqlens, seqlen_k=ctx)

    # Contiguous copies of the same cache, for attn's padded path and the SDPA peers.
    k = pool_k[table.long()].reshape(B, ctx, Hk, D)
    v = pool_v[table.long()].reshape(B, ctx, Hk, D)
    out2 = torch.empty_like(q)
    contiguous = attn.prepare(q, k, v, out2)
    ref = sdpa_peer(SDPBackend.MATH, q[:4].float(), k[:4].float(), v[:4].float(), False, enable_gqa=True)()
    bytes_moved = kv_bytes + 2 * q.numel() * 2
    for label, fn, check in [("attn paged", paged, True),
                             ("attn contiguous", contiguous, True)] + [
        (label, sdpa_peer(backend, q, k, v, False, enable_gqa=True), False)
        for label, backend in [("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                               ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)]]:
        try:
            result = fn()
            err = rel_err(result[:4], ref) if check else None
            ms = time_ms([fn])
            record(rows, dict(case=name, impl=label, ms=ms, gbs=bytes_moved / ms / 1e6, rel_err=err))
        except Exception as ex:
            record(rows, dict(case=name, impl=label, error=str(ex).splitlines()[0][:80]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="build/libattn_gpu_capi.so")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--quick", action="store_true", help="head_dim 128 only, no FlexAttention")
    ap.add_argument("--variants", default="sm90-plain",
                    help="comma-separated ATTN_CUDA_FWD loop variants to time beside the default at head_dim 128")
    args = ap.parse_args()
    torch.manual_seed(0)
    attn = Attn(args.lib)
    dev = torch.cuda.get_device_name()
    copy_gbs, mm_tflops = ceilings()
    print(f"{dev}: copy {copy_gbs:.0f} GB/s, bf16 matmul {mm_tflops:.0f} TFLOP/s", flush=True)
    rows = []
    for head_dim in [128] if args.quick else [64, 128, 256]:
        for causal in (False, True):
            bench_prefill(attn, head_dim, causal, rows, variants=[v for v in args.variants.split(",") if v])
    bench_window(attn, rows, copy_gbs, flex=not args.quick)
    bench_decode(attn, rows)
    if not args.quick:  # last: compiling FlexAttention takes the longest
        for causal in (False, True):
            bench_prefill(attn, 128, causal, rows, peers_only="flex")

    print(f"{dev}: copy {copy_gbs:.0f} GB/s (read + write), bf16 matmul 8192^3 {mm_tflops:.0f} TFLOP/s")
    print(f"{'case':<22} {'impl':<16} {'ms':>8} {'TFLOP/s':>8} {'GB/s':>7} {'%ceil':>6} {'rel_err':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<22} {r['impl']:<16} {'n/a':>8}  {r['error']}")
            continue
        if "per_tile_vs_causal" in r:  # window rows: time per kept tile against plain causal
            print(f"{r['case']:<22} {r['impl']:<16} {r['ms']:8.3f} {r['tiles']:>8} tiles, "
                  f"{r['per_tile_vs_causal']:.2f}x causal's time per tile, {r['vs_bound']:.2f}x the bound "
                  f"(memory floor {r['floor_ms']:.3f} ms) {r['rel_err']:8.1e}")
            continue
        rate = r.get("tflops")
        pct = 100 * rate / mm_tflops if rate is not None else 100 * r["gbs"] / copy_gbs
        err = "" if r.get("rel_err") is None else f"{r['rel_err']:.1e}"
        print(f"{r['case']:<22} {r['impl']:<16} {r['ms']:8.3f} {rate if rate else 0:8.1f} {r.get('gbs', 0):7.0f} "
              f"{pct:6.1f} {err:>8}")
    bad = [r for r in rows if r.get("rel_err") is not None and not r["rel_err"] < 2e-2]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=dev, copy_gbs=copy_gbs, matmul_tflops=mm_tflops, rows=rows), f, indent=1)
    if bad:
        print("attn output disagrees with the peer in:", ", ".join(f"{r['case']} {r['impl']}" for r in bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
