#!/usr/bin/env python3
"""Where the Hopper forward spends each work item: clock64 stamps, per item, of its first CTAs.

Needs a development build of the library with the trace compiled in (it is not in normal
builds; docs/cuda.md "Tracing the Hopper forward"):

  cmake -S . -B build-trace -G Ninja -DCMAKE_BUILD_TYPE=Release -DATTN_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90a-real -DCMAKE_CUDA_FLAGS=-DATTN_SM90_FWD_TRACE=1
  cmake --build build-trace --target attn_gpu_capi
  python3 bench/gpu_trace_fwd.py --lib build-trace/libattn_gpu_capi.so [WINDOW ...]

WINDOW: -1 plain causal (the default runs -1, 1024, 256 and 0). bf16, B 4, S 4096, H 16, D 128
(the bench's prefill shape). One traced launch after warm-up; medians over the items of the
first 8 CTAs (their first 64 items, the first and last left out), in SM clocks, of:

  item      one item's start to the next one's (consumer warpgroup 0)
  qwait     waiting for the item's Q after the previous epilogue
  book      the item's decode and tile range, up to its first tile
  kvw1      finding the first tile and waiting for its K / V
  turn      waiting for the turn to issue (the two warpgroups alternate)
  S1        the first S = Q K^T
  body      first S done to the last P V done
  epi_calc  normalisation (1 / l, lse)
  stores    the output stores, in the staged epilogue (output by TMA) split into:
    qe_wait     waiting for both warpgroups' last S (the K half it writes to must be dead)
    staging     normalised rows into shared memory (stmatrix) and the async-proxy fence
    store_read  the warpgroup's barrier, the TMA store's issue and the wait for its read
  kvwait    all K / V waits of the item
  qlat      the producer's Q issue to the consumers' start
  wgskew    warpgroup 1's start after warpgroup 0's
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import Attn  # noqa: E402

# Must match kTraceCtas, kTraceItems, kTraceSlots in src/cuda/sm90/flash_fwd.cuh.
CTAS, ITEMS, SLOTS = 8, 64, 32
# Slots: producer 0 grab, 1 Q issued, 2 tiles issued; consumer warpgroup w at base 3 + 10 w:
# +0 start, +1 first S done, +2 last P V done, +3 epilogue done, +4 K / V wait clocks,
# +5 decode done, +6 first K / V landed, +7 turn taken, +8 stores start; 23 key tiles;
# staged epilogue of warpgroup w: 24 + w both last S done, 26 + w rows staged and fenced.
KEYS = ("item", "qwait", "book", "kvw1", "turn", "S1", "body", "epi_calc", "stores", "qe_wait", "staging",
        "store_read", "kvwait", "qlat", "wgskew")


def item_rows(t):
    rows = {k: [] for k in KEYS + ("tiles",)}
    for c in range(CTAS):
        for n in range(1, ITEMS - 1):
            a, b, nx = t[c][n - 1], t[c][n], t[c][n + 1]
            if nx[3] == 0 or b[3] == 0 or b[23] == 0:
                continue
            rows["item"].append(nx[3] - b[3])
            rows["qwait"].append(b[3] - a[6])
            rows["book"].append(b[8] - b[3])
            rows["kvw1"].append(b[9] - b[8])
            rows["turn"].append(b[10] - b[9])
            rows["S1"].append(b[4] - b[10])
            rows["body"].append(b[5] - b[4])
            rows["epi_calc"].append(b[11] - b[5])
            rows["stores"].append(b[6] - b[11])
            staged = b[24] != 0  # the epilogue through shared memory ran for this item
            rows["qe_wait"].append(b[24] - b[11] if staged else 0)
            rows["staging"].append(b[26] - b[24] if staged else 0)
            rows["store_read"].append(b[6] - b[26] if staged else 0)
            rows["kvwait"].append(b[7])
            rows["qlat"].append(b[3] - b[1])
            rows["wgskew"].append(b[13] - b[3])
            rows["tiles"].append(b[23])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", default="build-trace/libattn_gpu_capi.so")
    ap.add_argument("windows", nargs="*", type=int, default=[-1, 1024, 256, 0])
    args = ap.parse_args()
    attn = Attn(args.lib)
    torch.manual_seed(0)
    B, S, H, D = 4, 4096, 16, 128
    q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    o = torch.empty_like(q)
    for w in args.windows:
        fn = attn.prepare(q, k, v, o, causal=True, window_left=w)
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        trace = torch.zeros(CTAS * ITEMS * SLOTS, dtype=torch.int64, device="cuda")
        os.environ["ATTN_CUDA_TRACE_PTR"] = str(trace.data_ptr())
        fn()
        torch.cuda.synchronize()
        del os.environ["ATTN_CUDA_TRACE_PTR"]
        fn()  # clears the kernel's trace pointer
        torch.cuda.synchronize()
        rows = item_rows(trace.view(CTAS, ITEMS, SLOTS).cpu().tolist())
        if not rows["item"]:
            sys.exit("no items traced: is the library built with -DATTN_SM90_FWD_TRACE=1, and the GPU an sm_90?")
        med = {k: statistics.median(v) for k, v in rows.items()}
        print(f"window {w:5d}: {len(rows['item'])} items, {med['tiles']:.0f} key tiles each; median clocks:",
              "  ".join(f"{k} {med[k]:.0f}" for k in KEYS), f"| per tile {med['item'] / med['tiles']:.0f}", flush=True)


if __name__ == "__main__":
    main()
