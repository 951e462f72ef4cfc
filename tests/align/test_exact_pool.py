"""The exact solvers' process pool (tokenflow.align.transport._exact): how it starts its processes,
that a spawned pool gives the in-process plans, and that it shuts down (on call and at exit)."""

import subprocess
import sys
import textwrap

import pytest
import torch

from tokenflow.align.transport import _exact, exact_plans, exact_pool, pool_start_method, shutdown_pool


@pytest.fixture
def no_pool():
    shutdown_pool()
    yield
    shutdown_pool()


def _block(gen, p=24, l1=5, l2=7):
    """A block of P problems with some padded tokens and masses that sum to one."""
    c = torch.rand(p, l1, l2, generator=gen, dtype=torch.float64)
    rows = torch.rand(p, l1, generator=gen) < 0.8
    cols = torch.rand(p, l2, generator=gen) < 0.8
    rows[:, 0] = cols[:, 0] = True
    a = (torch.rand(p, l1, generator=gen, dtype=torch.float64) + 0.1) * rows
    b = (torch.rand(p, l2, generator=gen, dtype=torch.float64) + 0.1) * cols
    return c, a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True), rows, cols


def test_a_spawned_pool_gives_the_in_process_plans_and_shuts_down(gen, monkeypatch, no_pool):
    monkeypatch.setattr(_exact, "POOL_MIN_PAIRS", 0)
    c, a, b, rows, cols = _block(gen)
    uniform = rows / rows.sum(1, keepdim=True), cols / cols.sum(1, keepdim=True)
    cases = [("exact", 1.0, (a, b)), ("exact", 0.7, (a, b)), ("hungarian", 1.0, uniform)]
    serial = []
    for kind, mass, (aa, bb) in cases:
        serial.append(exact_plans(c, aa, bb, rows, cols, kind, mass, workers=1))
        assert _exact._POOL is None  # one worker: solved here
    pool, procs = None, []  # one spawned pool for the three cases: each spawn starts cold interpreters
    for want, (kind, mass, (aa, bb)) in zip(serial, cases, strict=True):
        pooled = exact_plans(c, aa, bb, rows, cols, kind, mass, workers=2, start_method="spawn")
        assert torch.equal(want, pooled), (kind, mass)
        pid, workers, method, held = _exact._POOL
        assert (workers, method) == (2, "spawn") and (pool is None or held is pool)  # the same pool each time
        pool = held
        procs += [p for p in pool._processes.values() if p not in procs]
        assert procs and all(p.is_alive() for p in procs)
    shutdown_pool()
    assert _exact._POOL is None and not any(p.is_alive() for p in procs)
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(int)
    shutdown_pool()  # twice is fine


def test_the_pool_forks_only_while_cuda_is_not_initialised(monkeypatch):
    monkeypatch.delenv("TOKENFLOW_EXACT_START_METHOD", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert pool_start_method() == "fork"
    assert pool_start_method("spawn") == "spawn"
    monkeypatch.setenv("TOKENFLOW_EXACT_START_METHOD", "forkserver")
    assert pool_start_method() == "forkserver"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.delenv("TOKENFLOW_EXACT_START_METHOD")
    assert pool_start_method() == "spawn"
    with pytest.warns(RuntimeWarning, match="CUDA is initialised"):
        assert pool_start_method("fork") == "spawn"
    with pytest.raises(ValueError, match="start method must be one of"):
        pool_start_method("threads")


def test_a_forked_pool_is_replaced_once_cuda_starts(monkeypatch, no_pool):
    monkeypatch.delenv("TOKENFLOW_EXACT_START_METHOD", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    forked = exact_pool(2)
    assert exact_pool(2) is forked and _exact._POOL[2] == "fork"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    spawned = exact_pool(2)
    assert spawned is not forked and _exact._POOL[2] == "spawn"
    with pytest.raises(RuntimeError, match="shutdown"):
        forked.submit(int)  # the forked pool was shut down, not left to fork new workers


def test_the_pool_is_shut_down_at_exit():
    code = textwrap.dedent("""
        import atexit
        import torch
        from tokenflow.align.transport import _exact
        _exact.POOL_MIN_PAIRS = 0
        c = torch.rand(8, 3, 4, dtype=torch.float64)
        a, b = torch.full((8, 3), 1 / 3, dtype=torch.float64), torch.full((8, 4), 0.25, dtype=torch.float64)
        _exact.exact_plans(c, a, b, a > 0, b > 0, "exact", workers=2)
        procs = list(_exact._POOL[3]._processes.values())
        assert procs and all(p.is_alive() for p in procs)
        atexit._run_exitfuncs()  # what the interpreter runs at exit
        assert _exact._POOL is None and not any(p.is_alive() for p in procs)
        print("OK")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout
