"""Throughput and memory of ``aligner.pairwise`` for every plan (``tokenflow bench``, whose options
are read in :mod:`tokenflow.cli.bench`; ``benchmarks/`` scripts call :func:`run` directly).

For each token count l1, dtype and plan it reports, on the same machine and in the same run:

* pairs scored per second by ``pairwise`` (no autograd, as in evaluation);
* the best throughput of a plain matrix multiply doing the same token-similarity FLOPs
  (2 N M l1 l2 D), measured interleaved with the plans, and the ratio of the two;
* the speed-up over a naive implementation that materialises the whole [n, m, l1, l2]
  similarity tensor with ``einsum`` and applies the plan's definition (on a size where it fits);
* the peak memory a call adds beyond its inputs and its [N, M] outputs, at two collection
  sizes, which should not grow with N.

Slow plans (exact and entropic transport) are timed on fewer texts; the report says how many.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from dataclasses import asdict, dataclass, field

import torch

from .align import Tokens, aligner_for, list_aligners
from .align.block import work_dtype
from .utils import machine_info

FAST_PLANS = ("uniform", "learnable", "scan", "max-avg", "max-sum", "tokenflow")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclass
class BenchConfig:
    n: int = 1000
    m: int = 1000
    l1: tuple[int, ...] = (12, 50)
    l2: int = 32
    dim: int = 512
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    aligners: tuple[str, ...] = field(default_factory=lambda: tuple(list_aligners()))
    slow_m: int = 50  # texts for the transport plans' timing and memory runs
    naive_n: int = 100
    naive_m: int = 250
    memory_n: tuple[int, ...] = (1000, 4000)
    repeats: int = 3
    device: str = "cpu"
    seed: int = 0


def random_tokens(n: int, length: int, dim: int, dtype: torch.dtype, device: str, gen: torch.Generator) -> Tokens:
    """Unit-norm random tokens (as CLIP's) with a quarter of the items padded to 3/4 length."""
    feats = torch.nn.functional.normalize(torch.randn(n, length, dim, generator=gen), dim=-1)
    pooled = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=-1)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[: n // 4, (3 * length) // 4 :] = False
    return Tokens(feats.to(device, dtype), mask.to(device), pooled.to(device, dtype))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


class PeakMemory:
    """Peak memory added during a block of code: CUDA allocator stats on a GPU; on the CPU a
    thread sampling the resident set size every millisecond (after returning freed heap pages
    to the system, so that the baseline is honest)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self._base = self._peak = self._rss()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._peak = max(self._peak, self._rss())
                time.sleep(0.001)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self._peak, self._rss()) - self._base


def matmul_gflops(vis: Tokens, txt: Tokens, repeats: int, device: str) -> float:
    """Best GFLOP/s of plain ``torch.mm`` computing the token similarities of vis x txt, over a
    few block shapes (whole text side at once, and cache-sized blocks) and, for half-precision
    inputs, over multiplying them as they are or upcast to fp32."""
    l1, l2 = vis.feats.shape[1], txt.feats.shape[1]
    flops = 2.0 * len(vis) * l1 * len(txt) * l2 * vis.dim
    best = 0.0
    operands = [(vis.feats.reshape(-1, vis.dim), txt.feats.reshape(-1, txt.dim))]
    if work_dtype(vis.dtype) != vis.dtype:  # half inputs may multiply faster upcast (CPUs without bf16 units)
        operands.append(tuple(x.to(work_dtype(vis.dtype)) for x in operands[0]))
    shapes = ((len(vis), len(txt)), (64, 64), (128, 128), (48, 256))
    for (a, b), (rows_per_block, cols_per_block) in ((ops, sh) for ops in operands for sh in shapes):
        rb, cb = min(rows_per_block, len(vis)) * l1, min(cols_per_block, len(txt)) * l2
        out = torch.empty(rb, cb, dtype=a.dtype, device=a.device)

        def run() -> None:
            for i in range(0, a.shape[0], rb):
                for j in range(0, b.shape[0], cb):
                    ai, bj = a[i : i + rb], b[j : j + cb]
                    torch.mm(ai, bj.T, out=out[: ai.shape[0], : bj.shape[0]])

        run()  # warm-up
        for _ in range(repeats):
            best = max(best, flops / _timed(run, device) / 1e9)
    return best


def naive_pairwise(aligner, vis: Tokens, txt: Tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole [n, m, l1, l2] similarity tensor by einsum, then the plan's definition."""
    v, t = vis.zero_padding(), txt.zero_padding()
    c = torch.einsum("isd,jtd->ijst", v.feats, t.feats).to(work_dtype(v.dtype))  # materialised
    cv = c.permute(0, 2, 1, 3)  # the plans' [n, l1, m, l2] layout, as a view
    tv, tt = aligner.plans(cv, v, t)
    return (cv * tv).sum((1, 3)), (cv * tt).sum((1, 3))


def bench_one(name: str, cfg: BenchConfig, l1: int, dtype_name: str, gen: torch.Generator) -> dict:
    dtype = DTYPES[dtype_name]
    dev = cfg.device
    aligner = aligner_for(name, dim=cfg.dim).to(dev)
    slow = name not in FAST_PLANS
    m = min(cfg.slow_m, cfg.m) if slow else cfg.m
    vis = random_tokens(cfg.n, l1, cfg.dim, dtype, dev, gen)
    txt = random_tokens(m, cfg.l2, cfg.dim, dtype, dev, gen)
    row: dict = {"aligner": name, "l1": l1, "l2": cfg.l2, "dim": cfg.dim, "dtype": dtype_name, "n": cfg.n, "m": m}
    with torch.no_grad():
        # Same-run reference on a slice of the rows: the rate does not depend on N.
        ref = matmul_gflops(vis[: min(len(vis), 200)], txt, cfg.repeats, dev)
        aligner.pairwise(vis[:8], txt[:8], check=False)  # warm-up
        times = []
        with PeakMemory(dev) as mem:
            times.append(_timed(lambda: aligner.pairwise(vis, txt, check=False), dev))
        for _ in range(cfg.repeats - 1):
            times.append(_timed(lambda: aligner.pairwise(vis, txt, check=False), dev))
        best = min(times)
        pairs = cfg.n * m
        flops_per_pair = 2.0 * l1 * cfg.l2 * cfg.dim
        row.update(
            pairs_per_s=pairs / best,
            seconds=best,
            matmul_gflops=ref,
            matmul_pairs_per_s=ref * 1e9 / flops_per_pair,
            ratio_to_matmul=(pairs / best) / (ref * 1e9 / flops_per_pair),
        )
        out_bytes = 2 * pairs * torch.finfo(work_dtype(dtype)).bits // 8
        row["memory"] = [{"n": cfg.n, "m": m, "extra_mib": max(0, mem.peak_bytes - out_bytes) / 2**20}]
        for n_mem in cfg.memory_n:
            if n_mem == cfg.n:
                continue
            big = random_tokens(n_mem, l1, cfg.dim, dtype, dev, gen)
            with PeakMemory(dev) as mem:
                aligner.pairwise(big, txt, check=False)
            out_bytes = 2 * n_mem * m * torch.finfo(work_dtype(dtype)).bits // 8
            row["memory"].append({"n": n_mem, "m": m, "extra_mib": max(0, mem.peak_bytes - out_bytes) / 2**20})
            del big
        if not aligner.token_plan:  # set methods score K x K sets: there is no token-pair tensor to compare with
            row.update(naive_n=0, naive_m=0, speedup_vs_naive=None)
            return row
        # Naive full-tensor route vs pairwise, both on the same small problem.
        nv, nt = vis[: cfg.naive_n], txt[: min(cfg.naive_m, m)]
        naive_pairwise(aligner, nv, nt)
        t_naive = min(_timed(lambda: naive_pairwise(aligner, nv, nt), dev) for _ in range(cfg.repeats))
        t_fast = min(_timed(lambda: aligner.pairwise(nv, nt, check=False), dev) for _ in range(cfg.repeats))
        row.update(naive_n=len(nv), naive_m=len(nt), speedup_vs_naive=t_naive / t_fast)
    return row


def run(cfg: BenchConfig, progress=print, on_row=None) -> dict:
    """Benchmark every (l1, dtype, plan); ``on_row(report)`` sees the report after each row."""
    gen = torch.Generator().manual_seed(cfg.seed)
    rows: list[dict] = []
    report = {"config": asdict(cfg), "machine": machine_info(), "rows": rows}
    for l1 in cfg.l1:
        for dtype_name in cfg.dtypes:
            for name in cfg.aligners:
                row = bench_one(name, cfg, l1, dtype_name, gen)
                rows.append(row)
                if on_row is not None:
                    on_row(report)
                naive = row["speedup_vs_naive"]
                progress(
                    f"  {name:10s} l1={l1:<3d} {dtype_name}: {row['pairs_per_s']:>12,.0f} pairs/s  "
                    f"x{row['ratio_to_matmul']:.2f} of matmul  {'-' if naive is None else f'x{naive:.1f}'} vs naive"
                )
    return report


def _naive(speedup: float | None) -> str:
    return "-" if speedup is None else f"{speedup:.1f}"


def markdown(report: dict) -> str:
    """The report as a Markdown table."""
    mem_ns = sorted({m["n"] for r in report["rows"] for m in r["memory"]})
    head = (
        "| plan | l1 | dtype | N x M timed | pairs/s | matmul GFLOP/s (same run) | x of matmul | x vs naive "
        + "".join(f"| extra MiB N={n} " for n in mem_ns)
        + "|\n"
    )
    sep = "|" + "---|" * (8 + len(mem_ns)) + "\n"
    lines = []
    for r in report["rows"]:
        mem = {m["n"]: m["extra_mib"] for m in r["memory"]}
        lines.append(
            f"| {r['aligner']} | {r['l1']} | {r['dtype']} | {r['n']} x {r['m']} | {r['pairs_per_s']:,.0f} | "
            f"{r['matmul_gflops']:.0f} | {r['ratio_to_matmul']:.2f} | {_naive(r['speedup_vs_naive'])} "
            + "".join(f"| {mem[n]:.0f} " if n in mem else "| - " for n in mem_ns)
            + "|"
        )
    return head + sep + "\n".join(lines) + "\n"
