#!/usr/bin/env python3
"""GPU benchmark of attn's CUDA backward beside the PyTorch peers' backward, in one process.

Same conventions as bench/gpu_bench.py (whose C ABI wrapper, timer and ceilings this reuses):
CUDA events around one call after warm-up, input sets rotated so the L2 holds none of the next
call's inputs, medians. attn runs its backward through the C ABI on torch tensors, with out
and lse from attn's own forward; the peers run torch.autograd.grad on an SDPA forward graph
built once outside the timing (retain_graph), so only their backward is timed.

  bf16, batch x seqlen = 16k tokens, heads x head_dim = 2048, head_dim 128 (and 64 unless --quick),
  seqlen 4096, causal and not: attn (atomics), attn deterministic, SDPA flash / cuDNN / efficient.
  TFLOP/s counts the backward as 2.5x the forward's 4 * B * H * S^2 * D (x0.5 causal).

Each attn result is compared with SDPA flash's gradients so a fast wrong kernel cannot hide.

  python3 bench/gpu_bench_backward.py --lib build-gpu/libattn_gpu_capi.so [--json out.json] [--quick]
"""
import argparse
import ctypes
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import AttnFwdDesc, ceilings, input_sets, rel_err, time_ms, with_env  # noqa: E402


class AttnBwdDesc(ctypes.Structure):
    """Mirror of AttnBwdDesc in bench/gpu/attn_capi.cpp."""

    _fields_ = [
        ("fwd", AttnFwdDesc),
        ("dout", ctypes.c_void_p), ("dq", ctypes.c_void_p), ("dk", ctypes.c_void_p), ("dv", ctypes.c_void_p),
        ("deterministic", ctypes.c_int),
    ]


class AttnBackward:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.attn_last_error.restype = ctypes.c_char_p
        for name, desc in [("forward", AttnFwdDesc), ("backward", AttnBwdDesc)]:
            size = getattr(self.lib, f"attn_cuda_{name}_workspace_size")
            size.restype, size.argtypes = ctypes.c_size_t, [ctypes.POINTER(desc)]
            run = getattr(self.lib, f"attn_cuda_{name}")
            run.restype, run.argtypes = ctypes.c_int, [ctypes.POINTER(desc), ctypes.c_void_p, ctypes.c_size_t]

    def _call(self, name, desc):
        ws_bytes = getattr(self.lib, f"attn_cuda_{name}_workspace_size")(ctypes.byref(desc))
        if ws_bytes == ctypes.c_size_t(-1).value:
            raise RuntimeError(self.lib.attn_last_error().decode())
        ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device="cuda")
        return ws, ws_bytes

    def prepare(self, q, k, v, dout, causal, deterministic):
        """Runs attn's forward once (out, lse), then returns a callable running the backward."""
        B, S, H, D = q.shape
        out, lse = torch.empty_like(q), torch.empty(B, H, S, device="cuda", dtype=torch.float32)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        d = AttnBwdDesc()
        f = d.fwd
        f.dtype = {torch.float16: 0, torch.bfloat16: 1}[q.dtype]
        f.batch, f.seqlen_q, f.seqlen_k, f.heads_q, f.heads_kv, f.head_dim, f.head_dim_v = B, S, S, H, k.shape[2], D, D
        f.q, f.k, f.v, f.out, f.lse = q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr()
        f.block_table, f.block_table_stride, f.page_size, f.seqlens_k = None, 0, 0, None
        f.causal, f.window_left, f.window_right, f.scale, f.softcap = int(causal), -1, -1, 0.0, 0.0
        ws, ws_bytes = self._call("forward", f)
        if self.lib.attn_cuda_forward(ctypes.byref(f), ws.data_ptr(), ws_bytes) != 0:
            raise RuntimeError(self.lib.attn_last_error().decode())
        d.dout, d.dq, d.dk, d.dv = dout.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr()
        d.deterministic = int(deterministic)
        ws, ws_bytes = self._call("backward", d)
        keep = (q, k, v, dout, out, lse, dq, dk, dv, ws)  # the descriptor points into these

        def run():
            if self.lib.attn_cuda_backward(ctypes.byref(d), ws.data_ptr(), ws_bytes) != 0:
                raise RuntimeError(self.lib.attn_last_error().decode())
            return keep[6:9]

        return run


def sdpa_backward_peer(backend, q, k, v, dout, causal):
    """torch.autograd.grad through an SDPA graph built once, on (B, H, S, D) transposed views."""
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    with sdpa_kernel(backend):
        out = F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in leaves), is_causal=causal).transpose(1, 2)

    def run():
        with sdpa_kernel(backend):
            return torch.autograd.grad(out, leaves, dout, retain_graph=True)

    return run


def bench_case(attn, head_dim, causal, rows):
    seqlen, tokens, width = 4096, 16384, 2048
    B, H, D = tokens // seqlen, width // head_dim, head_dim
    set_bytes = 9 * B * seqlen * H * D * 2  # q k v out dout dq dk dv, plus the f32 dq accumulator ~ 2 more
    sets = [tuple(torch.randn(B, seqlen, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
            for _ in range(input_sets(set_bytes))]
    flops = 2.5 * 4 * B * H * seqlen * seqlen * D * (0.5 if causal else 1.0)
    name = f"bwd d{D} {'causal' if causal else 'full'}"

    reference = sdpa_backward_peer(SDPBackend.FLASH_ATTENTION, *sets[0], causal)()
    peers = []
    for label, deterministic in [("attn", False), ("attn determ.", True)]:
        fns = [attn.prepare(*s, causal, deterministic) for s in sets]
        grads = fns[0]()
        err = max(rel_err(g, r) for g, r in zip(grads, reference))
        peers.append((label, fns, err))
    if head_dim in (64, 128):
        # At D 128 and 64 attn runs the Hopper kernel (src/cuda/sm90/flash_bwd.cuh) on an H100;
        # the mma.sync kernel beside it on the same inputs.
        fns = [with_env(fn, "ATTN_CUDA_BWD", "sm80") for fn in (attn.prepare(*s, causal, False) for s in sets)]
        try:
            grads = fns[0]()
            peers.append(("attn-sm80", fns, max(rel_err(g, r) for g, r in zip(grads, reference))))
        except Exception as ex:
            rows.append(dict(case=name, impl="attn-sm80", error=str(ex).splitlines()[0][:80]))
    for label, backend in [("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                           ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            peers.append((label, [sdpa_backward_peer(backend, *s, causal) for s in sets], None))
        except Exception as ex:  # a peer without support for this shape
            rows.append(dict(case=name, impl=label, error=str(ex).splitlines()[0][:80]))
    for label, fns, e in peers:
        try:
            ms = time_ms(fns)
            rows.append(dict(case=name, impl=label, ms=ms, tflops=flops / ms / 1e9, rel_err=e))
        except Exception as ex:
            rows.append(dict(case=name, impl=label, error=str(ex).splitlines()[0][:80]))
    del sets
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default="build/libattn_gpu_capi.so")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--quick", action="store_true", help="head_dim 128 only")
    args = ap.parse_args()
    torch.manual_seed(0)
    attn = AttnBackward(args.lib)
    dev = torch.cuda.get_device_name()
    copy_gbs, mm_tflops = ceilings()
    rows = []
    for head_dim in [128] if args.quick else [128, 64]:
        for causal in (False, True):
            bench_case(attn, head_dim, causal, rows)

    print(f"{dev}: bf16 matmul 8192^3 {mm_tflops:.0f} TFLOP/s")
    print(f"{'case':<18} {'impl':<16} {'ms':>8} {'TFLOP/s':>8} {'%mm':>6} {'vs flash':>8} {'rel_err':>8}")
    flash_ms = {r["case"]: r["ms"] for r in rows if r["impl"] == "sdpa-flash" and "ms" in r}
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<18} {r['impl']:<16} {'n/a':>8}  {r['error']}")
            continue
        speedup = f"{flash_ms[r['case']] / r['ms']:.2f}x" if r["case"] in flash_ms else ""
        err = "" if r.get("rel_err") is None else f"{r['rel_err']:.1e}"
        print(f"{r['case']:<18} {r['impl']:<16} {r['ms']:8.3f} {r['tflops']:8.1f} {100 * r['tflops'] / mm_tflops:6.1f} "
              f"{speedup:>8} {err:>8}")
    bad = [r for r in rows if r.get("rel_err") is not None and not r["rel_err"] < 2e-2]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=dev, copy_gbs=copy_gbs, matmul_tflops=mm_tflops, rows=rows), f, indent=1)
    if bad:
        print("attn gradients disagree with SDPA flash in:", ", ".join(f"{r['case']} {r['impl']}" for r in bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
