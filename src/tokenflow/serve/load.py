"""Many queries at once against a running ``tokenflow serve`` (standard library only).

``load_test(url, bodies, concurrency)`` posts every body to ``url/api/search`` from
``concurrency`` threads (when there are no more bodies than threads, a barrier releases them
all together) and returns each request's latency and the errors; ``benchmarks/serve_load.py``
and the tests use it.
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

__all__ = ["LoadResult", "load_test"]


@dataclass
class LoadResult:
    """Latencies (seconds, in request order) of the requests that succeeded, and the failures."""

    latencies: list[float]
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the latencies, in seconds (nearest rank)."""
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]

    def summary(self) -> dict:
        n = len(self.latencies)
        return {"requests": n + len(self.errors), "errors": len(self.errors), "wall_s": self.wall_s,
                "p50_ms": 1000 * self.percentile(50), "p95_ms": 1000 * self.percentile(95),
                "max_ms": 1000 * max(self.latencies, default=float("nan")),
                "mean_ms": 1000 * statistics.fmean(self.latencies) if n else float("nan"),
                "throughput_qps": n / self.wall_s if self.wall_s else float("nan")}


def _post(url: str, body: dict, timeout: float) -> tuple[float, str | None]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            data = json.loads(res.read())
        if not data.get("plans") or not data["plans"][0]["results"]:
            return time.perf_counter() - t0, "no results"
        return time.perf_counter() - t0, None
    except (urllib.error.URLError, OSError, ValueError) as e:
        return time.perf_counter() - t0, f"{type(e).__name__}: {e}"


def load_test(url: str, bodies: Sequence[dict], concurrency: int | None = None, timeout: float = 120.0) -> LoadResult:
    """Post ``bodies`` to ``url + "/api/search"``, ``concurrency`` at a time (default: all at once)."""
    concurrency = concurrency or len(bodies)
    # all at once: a barrier releases every thread together (else the pool's threads keep busy)
    start = threading.Barrier(len(bodies)) if len(bodies) <= concurrency else None

    def one(body: dict) -> tuple[float, str | None]:
        if start is not None:
            try:
                start.wait(timeout)
            except threading.BrokenBarrierError:
                pass
        return _post(url.rstrip("/") + "/api/search", body, timeout)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    return LoadResult([t for t, e in outcomes if e is None], [e for _, e in outcomes if e is not None], wall)
