#!/usr/bin/env python3
"""GPU benchmark of attn's MLA absorbed decode (DeepSeek-V3 shapes) beside a PyTorch formulation.

The absorbed decode is an MQA over the latent cache: per sequence, Sq queries x 128 heads of
576 channels ([c_kv ; k_rope]) against the cached rows of 576, values = the rows' first 512
channels, scale 1 / sqrt(192). The cache is a page pool (pages of 64 rows, shuffled) with a
block table. attn runs through its C ABI (bench/gpu/attn_capi.cpp, attn_cuda_mla_decode).

  GB/s     latent-cache bytes read once + q + out, over time; against a measured device copy
  TFLOP/s  2 * Sq * heads * keys * (576 + 512) per sequence; against a bf16 8192^3 matmul

Peers (no FlashMLA / FlashInfer here): PyTorch SDPA on a cache gathered into contiguous
(B, 1, ctx, 576) outside the timing, the heads laid out as query rows of the one latent head
(the form an MQA kernel wants), on each SDPA backend that accepts head dim 576 / 512; and the
same through enable_gqa. Every attn row is checked against a float32 PyTorch computation.

  python3 bench/gpu_bench_mla.py --lib build-gpu/libattn_gpu_capi.so [--json out.json] [--quick]
"""
import argparse
import ctypes
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import AttnFwdDesc, ceilings, input_sets, record, rel_err, time_ms  # noqa: E402

D, DV, ROPE_SCALE_DIM = 576, 512, 192


class AttnMla:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.attn_last_error.restype = ctypes.c_char_p
        self.lib.attn_cuda_mla_decode_workspace_size.restype = ctypes.c_size_t
        self.lib.attn_cuda_mla_decode_workspace_size.argtypes = [ctypes.POINTER(AttnFwdDesc)]
        self.lib.attn_cuda_mla_decode.restype = ctypes.c_int
        self.lib.attn_cuda_mla_decode.argtypes = [ctypes.POINTER(AttnFwdDesc), ctypes.c_void_p, ctypes.c_size_t]

    def prepare(self, q, pool, table, seqlens, max_len, out, lse, causal):
        """A callable running the decode: q (B, Sq, H, 576), pool (pages, page, 1, 576)."""
        B, Sq, H, _ = q.shape
        d = AttnFwdDesc()
        d.dtype = {torch.float16: 0, torch.bfloat16: 1}[q.dtype]
        d.batch, d.seqlen_q, d.seqlen_k, d.heads_q, d.heads_kv, d.head_dim, d.head_dim_v = B, Sq, max_len, H, 1, D, DV
        d.q, d.k, d.v, d.out, d.lse = q.data_ptr(), pool.data_ptr(), pool.data_ptr(), out.data_ptr(), lse.data_ptr()
        d.block_table, d.block_table_stride, d.page_size = table.data_ptr(), table.stride(0), pool.shape[1]
        d.seqlens_k = seqlens.data_ptr()
        d.causal, d.window_left, d.window_right = int(causal), -1, -1
        d.scale, d.softcap = 1.0 / math.sqrt(ROPE_SCALE_DIM), 0.0
        ws_bytes = self.lib.attn_cuda_mla_decode_workspace_size(ctypes.byref(d))
        if ws_bytes == ctypes.c_size_t(-1).value:
            raise RuntimeError(self.lib.attn_last_error().decode())
        ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device="cuda")
        keep = (q, pool, table, seqlens, out, lse, ws)  # the descriptor points into these

        def run():
            if self.lib.attn_cuda_mla_decode(ctypes.byref(d), ws.data_ptr(), ws_bytes) != 0:
                raise RuntimeError(self.lib.attn_last_error().decode())
            return keep[4]

        return run


def reference_f32(q, cache, causal):
    """float32 absorbed attention: q (b, Sq, H, 576), cache (b, ctx, 576) -> (b, Sq, H, 512)."""
    b, Sq, H, _ = q.shape
    ctx = cache.shape[1]
    s = torch.einsum("bihd,bjd->bihj", q.float(), cache.float()) / math.sqrt(ROPE_SCALE_DIM)
    if causal:
        pos = torch.arange(Sq, device=q.device)[:, None] + ctx - Sq
        s = s.masked_fill((torch.arange(ctx, device=q.device)[None, :] > pos)[None, :, None, :], float("-inf"))
    return torch.einsum("bihj,bjd->bihd", s.softmax(-1), cache[..., :DV].float())


def sdpa_peer(backend, q, cache, gqa):
    """SDPA over a contiguous cache, one query per sequence. Rows form: q (B, 1, H, 576), the
    heads as query rows of the one latent head; GQA form: q (B, H, 1, 576) with enable_gqa."""
    B, Sq, H, _ = q.shape
    k = cache.unsqueeze(1)  # (B, 1, ctx, 576)
    v = k[..., :DV]
    qx = q.transpose(1, 2) if gqa else q.reshape(B, 1, Sq * H, D)
    scale = 1.0 / math.sqrt(ROPE_SCALE_DIM)

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(qx, k, v, scale=scale, enable_gqa=gqa)

    return run


def bench_case(attn, B, ctx, Sq, causal, H, page, rows, peers):
    name = f"mla b{B} ctx{ctx} sq{Sq}{' causal' if causal else ''}"
    pages_per_seq = ctx // page
    n_pages = B * pages_per_seq
    cache_bytes = B * ctx * D * 2
    flops = 2 * B * Sq * H * ctx * (D + DV)
    io_bytes = cache_bytes + B * Sq * H * (D + DV) * 2
    n_sets = input_sets(cache_bytes)
    sets = []
    for _ in range(n_sets):
        q = torch.randn(B, Sq, H, D, device="cuda", dtype=torch.bfloat16)
        pool = torch.randn(n_pages, page, 1, D, device="cuda", dtype=torch.bfloat16)
        # Pages in a shuffled order, as a block pool hands them out.
        table = torch.randperm(n_pages, device="cuda", dtype=torch.int64).to(torch.int32).view(B, pages_per_seq)
        seqlens = torch.full((B,), ctx, device="cuda", dtype=torch.int32)
        out = torch.empty(B, Sq, H, DV, device="cuda", dtype=torch.bfloat16)
        lse = torch.empty(B, H, Sq, device="cuda", dtype=torch.float32)
        sets.append((q, pool, table, seqlens, out, lse))
    fns = [attn.prepare(q, pool, table, seqlens, ctx, out, lse, causal) for q, pool, table, seqlens, out, lse in sets]
    q, pool, table = sets[0][:3]
    check = 4  # sequences compared against float32
    gathered = pool[table[:check].long()].reshape(check, ctx, D)
    err = rel_err(fns[0]()[:check], reference_f32(q[:check], gathered, causal))
    ms = time_ms(fns)
    record(rows, dict(case=name, impl="attn paged", ms=ms, tflops=flops / ms / 1e9, gbs=io_bytes / ms / 1e6, rel_err=err))
    if not peers:
        return
    del gathered
    cache = pool[table.long()].reshape(B, ctx, D)  # contiguous copy, gathered outside the timing
    forms = [("sdpa-efficient rows", SDPBackend.EFFICIENT_ATTENTION, False),
             ("sdpa-cudnn rows", SDPBackend.CUDNN_ATTENTION, False),
             ("sdpa-math rows", SDPBackend.MATH, False),
             ("sdpa-efficient gqa", SDPBackend.EFFICIENT_ATTENTION, True)]
    for label, backend, gqa in forms:
        try:
            fn = sdpa_peer(backend, q, cache, gqa)
            fn()
            ms = time_ms([fn])
            record(rows, dict(case=name, impl=label, ms=ms, tflops=flops / ms / 1e9, gbs=io_bytes / ms / 1e6))
        except Exception as ex:  # a backend without support for these head dims
            record(rows, dict(case=name, impl=label, error=str(ex).splitlines()[0][:80]))
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="build/libattn_gpu_capi.so")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--quick", action="store_true", help="batch 64, context 4096 only, no peers")
    args = ap.parse_args()
    torch.manual_seed(0)
    attn = AttnMla(args.lib)
    dev = torch.cuda.get_device_name()
    copy_gbs, mm_tflops = ceilings()
    print(f"{dev}: copy {copy_gbs:.0f} GB/s, bf16 matmul {mm_tflops:.0f} TFLOP/s", flush=True)
    rows = []
    H, page = 128, 64
    shapes = [(64, 4096, 1, False)] if args.quick else [
        (64, 4096, 1, False), (64, 8192, 1, False), (128, 4096, 1, False), (128, 8192, 1, False), (64, 4096, 2, True)]
    for B, ctx, Sq, causal in shapes:
        bench_case(attn, B, ctx, Sq, causal, H, page, rows, peers=not args.quick and (B, ctx, Sq, causal) == (64, 4096, 1, False))
        torch.cuda.empty_cache()

    print(f"{dev}: copy {copy_gbs:.0f} GB/s (read + write), bf16 matmul 8192^3 {mm_tflops:.0f} TFLOP/s")
    print(f"{'case':<28} {'impl':<20} {'ms':>8} {'TFLOP/s':>8} {'%mm':>5} {'GB/s':>7} {'%copy':>6} {'rel_err':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<28} {r['impl']:<20} {'n/a':>8}  {r['error']}")
            continue
        err = "" if r.get("rel_err") is None else f"{r['rel_err']:.1e}"
        print(f"{r['case']:<28} {r['impl']:<20} {r['ms']:8.3f} {r['tflops']:8.1f} {100 * r['tflops'] / mm_tflops:5.1f} "
              f"{r['gbs']:7.0f} {100 * r['gbs'] / copy_gbs:6.1f} {err:>8}")
    bad = [r for r in rows if r.get("rel_err") is not None and not r["rel_err"] < 2e-2]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=dev, copy_gbs=copy_gbs, matmul_tflops=mm_tflops, rows=rows), f, indent=1)
    if bad:
        print("attn output disagrees with float32 in:", ", ".join(f"{r['case']} {r['impl']}" for r in bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
