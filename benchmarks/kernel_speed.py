"""Benchmark the Triton kernels against plain torch on one CUDA GPU (issue 4).

    python benchmarks/kernel_speed.py

kv_copy: a cache of 32 layers (K and V: 64 tensors), 8 KV heads, head_dim 128, 4096 columns, fp16;
a fork copies one source row to n = 8 / 32 / 128 destination rows (all 4096 columns). Reported as
GB/s (bytes read + written) for (a) the Triton kernel (one launch), (b) a per-layer torch
index_select / index_copy_ loop, (c) a device-to-device copy of the same bytes (contiguous, in
chunks of at most 1 GiB) and (d) the device's copy bandwidth measured by one large torch tensor
copy. Targets (GOALS): kv_copy >= 80% of (c) and >= 5x (b).

score: bf16 logits [B, 152064], 4 candidate ids per row, B = 1 / 64 / 256, vs torch
log_softmax(float) + gather (and vs the full reference, which also computes the entropy).
Target: >= 2x torch (GOALS). Kernel timings skip the token-id range check (a host sync); the column
``triton_checked_ms`` includes it.

Prints a table and writes benchmarks/results/kernels.json. Without CUDA it says so and exits 0.
Runs in well under a minute on an H100 (the fork of 128 rows needs about 65 GiB of GPU memory
and is skipped, and recorded as skipped, where there is less).

    python benchmarks/kernel_speed.py --smoke --out /tmp/kernels_smoke.json

runs the same code on CPU under TRITON_INTERPRET=1 at toy sizes (its timings mean nothing): a
check that the script works before GPU time is spent on it (tests/test_benchmarks.py runs it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common import RESULTS, environment, write_report

OUT = RESULTS / "kernels.json"
GOALS = {"kv_copy_frac_of_same_bytes_copy": 0.8, "kv_copy_speedup_vs_loop": 5.0, "score_speedup_vs_lsm_gather": 2.0}


@dataclass(frozen=True)
class Sizes:
    layers: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    cols: int = 4096
    forks: tuple[int, ...] = (8, 32, 128)
    vocab: int = 152064
    batches: tuple[int, ...] = (1, 64, 256)
    candidates: int = 4
    copy_bytes: int = 1 << 30  # each way, for the device copy bandwidth
    warmup: int = 3
    reps: int = 20


SMOKE = Sizes(layers=2, kv_heads=2, head_dim=16, cols=32, forks=(2, 4), vocab=1000, batches=(1, 3),
              copy_bytes=1 << 20, warmup=0, reps=1)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn, device, warmup: int, reps: int) -> float:
    """Median milliseconds of ``fn()``: CUDA events on a GPU, wall clock on CPU (smoke runs)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _free_cache(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _copy_bandwidth(device, sz: Sizes) -> float:
    """GB/s (read + write) of one large device-to-device tensor copy."""
    n = sz.copy_bytes
    src_dst = [torch.empty(n, dtype=torch.uint8, device=device) for _ in range(2)]
    ms = _time_ms(lambda: src_dst[1].copy_(src_dst[0]), device, warmup=sz.warmup, reps=max(sz.reps // 2, 1))
    src_dst.clear()  # free both before emptying the cache
    _free_cache(device)
    return 2 * n / (ms * 1e-3) / 1e9


def _same_bytes_copy_gbs(device, nbytes: int, sz: Sizes) -> float:
    """GB/s (read + write) of device-to-device copies of ``nbytes`` in all (chunks of <= 1 GiB)."""
    chunk = min(nbytes, 1 << 30)
    bufs = [torch.empty(chunk, dtype=torch.uint8, device=device) for _ in range(2)]
    sizes = [chunk] * (nbytes // chunk) + ([nbytes % chunk] if nbytes % chunk else [])

    def copy():
        for k in sizes:
            bufs[1][:k].copy_(bufs[0][:k])

    ms = _time_ms(copy, device, warmup=sz.warmup, reps=max(sz.reps // 2, 1))
    bufs.clear()
    return 2 * nbytes / (ms * 1e-3) / 1e9


def bench_kv_copy(device, copy_gbs: float, sz: Sizes) -> list[dict]:
    from decodesearch.kernels.kv_kernels import kv_copy_triton

    LAYERS, KV_HEADS, HEAD_DIM, COLS = sz.layers, sz.kv_heads, sz.head_dim, sz.cols
    dtype = torch.float16
    row_bytes = KV_HEADS * COLS * HEAD_DIM * torch.finfo(dtype).bits // 8  # per tensor
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 1 << 62
    fits = [n for n in sz.forks if (n + 1) * row_bytes * 2 * LAYERS + (n * row_bytes + (4 << 30)) < free]
    results = [
        {"fork_rows": n, "skipped": f"needs ~{((n + 1) * row_bytes * 2 * LAYERS) / 2**30:.0f} GiB of GPU memory"}
        for n in sz.forks
        if n not in fits
    ]
    if not fits:
        return results
    rows = max(fits) + 1
    ks = [torch.empty(rows, KV_HEADS, COLS, HEAD_DIM, dtype=dtype, device=device) for _ in range(LAYERS)]
    vs = [torch.empty(rows, KV_HEADS, COLS, HEAD_DIM, dtype=dtype, device=device) for _ in range(LAYERS)]
    ks[0][0].normal_()
    for n in fits:
        src, dst = [0] * n, list(range(1, n + 1))
        src_t = torch.tensor(src, device=device)
        dst_t = torch.tensor(dst, device=device)
        moved = 2 * n * row_bytes * 2 * LAYERS  # read + write, all tensors

        def triton_fork():
            kv_copy_triton(ks, vs, src, dst, COLS)

        def torch_loop():
            for t in (*ks, *vs):
                t.index_copy_(0, dst_t, t.index_select(0, src_t))

        ms_tri = _time_ms(triton_fork, device, sz.warmup, sz.reps)
        assert torch.equal(ks[0][n], ks[0][0]), "kv_copy produced a wrong copy"
        ms_loop = _time_ms(torch_loop, device, min(sz.warmup, 1), max(sz.reps // 5, 1))
        gbs_tri = moved / (ms_tri * 1e-3) / 1e9
        gbs_loop = moved / (ms_loop * 1e-3) / 1e9
        gbs_same = _same_bytes_copy_gbs(device, moved // 2, sz)
        results.append(
            {
                "fork_rows": n,
                "bytes_moved": moved,
                "triton_ms": ms_tri,
                "triton_gbs": gbs_tri,
                "torch_loop_ms": ms_loop,
                "torch_loop_gbs": gbs_loop,
                "copy_gbs": copy_gbs,
                "frac_of_copy_bw": gbs_tri / copy_gbs,
                "same_bytes_copy_gbs": gbs_same,
                "frac_of_same_bytes_copy": gbs_tri / gbs_same,
                "speedup_vs_loop": ms_loop / ms_tri,
                "meets_goals": gbs_tri / gbs_same >= GOALS["kv_copy_frac_of_same_bytes_copy"]
                and ms_loop / ms_tri >= GOALS["kv_copy_speedup_vs_loop"],
            }
        )
    ks.clear()
    vs.clear()
    _free_cache(device)
    return sorted(results, key=lambda r: r["fork_rows"])


def bench_score(device, sz: Sizes) -> list[dict]:
    from decodesearch.kernels.score_kernel import score_reference, score_triton

    VOCAB, CANDIDATES = sz.vocab, sz.candidates
    results = []
    gen = torch.Generator(device=device).manual_seed(0)
    for B in sz.batches:
        logits = (torch.randn(B, VOCAB, device=device, generator=gen) * 4).to(torch.bfloat16)
        ids = torch.randint(0, VOCAB, (B, CANDIDATES), device=device, generator=gen)
        ref = score_reference(logits, ids)
        got = score_triton(logits, ids)
        for a, b, tol in zip(ref, got, (1e-4, 1e-4, 1e-3)):
            torch.testing.assert_close(b, a, atol=tol, rtol=1e-4)

        def lsm_gather():
            return torch.log_softmax(logits.float(), dim=-1).gather(1, ids)

        timed = {"device": device, "warmup": sz.warmup, "reps": sz.reps}
        ms_tri = _time_ms(lambda: score_triton(logits, ids, check_ids=False), **timed)
        ms_tri_checked = _time_ms(lambda: score_triton(logits, ids), **timed)
        ms_lsm = _time_ms(lsm_gather, **timed)
        ms_ref = _time_ms(lambda: score_reference(logits, ids), **timed)
        results.append(
            {
                "batch": B,
                "vocab": VOCAB,
                "candidates": CANDIDATES,
                "dtype": "bfloat16",
                "triton_ms": ms_tri,
                "triton_checked_ms": ms_tri_checked,
                "torch_lsm_gather_ms": ms_lsm,
                "torch_reference_ms": ms_ref,
                "triton_gbs": B * VOCAB * 2 / (ms_tri * 1e-3) / 1e9,
                "speedup_vs_lsm_gather": ms_lsm / ms_tri,
                "speedup_vs_reference": ms_ref / ms_tri,
                "meets_goal": ms_lsm / ms_tri >= GOALS["score_speedup_vs_lsm_gather"],
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="toy sizes on CPU under TRITON_INTERPRET=1: checks the script, times nothing")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON to write (default {OUT}; required with --smoke)")
    args = ap.parse_args(argv)
    if args.smoke:
        if args.out is None or args.out.resolve() == OUT:
            ap.error(f"--smoke needs --out elsewhere than {OUT}: its timings are not a reference run")
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels (and triton.jit) are imported
        device, sz, name = torch.device("cpu"), SMOKE, "cpu (smoke, TRITON_INTERPRET=1)"
    else:
        if not torch.cuda.is_available():
            print("benchmarks/kernel_speed.py needs a CUDA GPU and none is available; nothing was run.")
            return 0
        os.environ.pop("TRITON_INTERPRET", None)
        device, sz = torch.device("cuda"), Sizes()
        name = torch.cuda.get_device_name(device)
    out = args.out or OUT
    t0 = time.time()
    copy_gbs = _copy_bandwidth(device, sz)
    kv = bench_kv_copy(device, copy_gbs, sz)
    sc = bench_score(device, sz)
    report = {
        **environment(args),
        "device": name,
        "smoke": args.smoke,
        "sizes": asdict(sz),
        "triton": __import__("triton").__version__,
        "copy_bandwidth_gbs": copy_gbs,
        "goals": GOALS,
        "kv_copy": {
            "dtype": "float16",
            "pattern": "one source row forked to n destination rows, all columns",
            "results": kv,
        },
        "score": sc,
        "seconds": time.time() - t0,
    }

    print(f"device: {report['device']}   torch copy bandwidth: {copy_gbs:.0f} GB/s")
    print(f"\nkv_copy ({sz.layers} layers x K,V; {sz.kv_heads} heads; head_dim {sz.head_dim}; {sz.cols} cols; fp16; "
          "one row forked to n)")
    print(f"{'fork':>6} {'triton ms':>10} {'GB/s':>8} {'%copy':>7} {'%same':>7} {'loop ms':>9} {'loop GB/s':>10} "
          f"{'x loop':>7}")
    for r in kv:
        if "skipped" in r:
            print(f"{r['fork_rows']:>6}  skipped: {r['skipped']}")
            continue
        print(
            f"{r['fork_rows']:>6} {r['triton_ms']:>10.3f} {r['triton_gbs']:>8.0f} {100 * r['frac_of_copy_bw']:>6.0f}% "
            f"{100 * r['frac_of_same_bytes_copy']:>6.0f}% "
            f"{r['torch_loop_ms']:>9.3f} {r['torch_loop_gbs']:>10.0f} {r['speedup_vs_loop']:>7.2f}"
        )
    print(f"\nscore (bf16 logits, vocab {sz.vocab}, {sz.candidates} candidates per row)")
    print(f"{'batch':>6} {'triton ms':>10} {'+check ms':>10} {'lsm+gather ms':>14} {'reference ms':>13} "
          f"{'x lsm':>7} {'x ref':>7}")
    for r in sc:
        print(
            f"{r['batch']:>6} {r['triton_ms']:>10.4f} {r['triton_checked_ms']:>10.4f} {r['torch_lsm_gather_ms']:>14.4f} "
            f"{r['torch_reference_ms']:>13.4f} {r['speedup_vs_lsm_gather']:>7.2f} {r['speedup_vs_reference']:>7.2f}"
        )
    write_report(out, report, quiet=True)
    print(f"\nwrote {out} ({report['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
