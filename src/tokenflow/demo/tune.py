"""Hyperparameters of the demo's plans, chosen on validation.

Each plan with a hyperparameter that matters declares a small grid in :data:`GRIDS`.
``tokenflow demo --full`` searches it once per (task, protocol), on the *validation* split of a
tuning seed that is not one of the reported seeds, at the demo's budget for every point; the test
split is never loaded (the runs have no ``data.test_split``). The chosen values are written to
``tuned.json`` beside this module (and to the demo's output folder), and every later demo run,
default or full, takes its plans' hyperparameters from there.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
from pathlib import Path

from ..errors import InputError
from ..utils import machine, write_text_atomic

__all__ = ["GRIDS", "TUNED_FILE", "TUNING_SEED", "apply_tuned", "read_tuned", "search_grid", "tune"]

#: plan -> hyperparameter -> values tried. tokenflow's and scan's lam is the inverse softmax
#: temperature of eq 11/15-16 (scan's default 9 is SCAN's own text-image value; tokenflow's
#: default 20 the OMIT re-implementation's).
GRIDS: dict[str, dict[str, list]] = {
    "tokenflow": {"lam": [1.0, 5.0, 20.0]},
    "scan": {"lam": [5.0, 9.0, 20.0]},
    "sinkhorn": {"eps": [0.05, 0.1]},
}
TUNING_SEED = 1000
TUNED_FILE = Path(__file__).with_name("tuned.json")
FORMAT = "tokenflow-demo-tuned/1"


def _points(name: str) -> list[str]:
    """Run specs of every grid point of plan ``name`` (``tokenflow:lam=5.0``)."""
    grid = GRIDS[name]
    keys = sorted(grid)
    return [f"{name}:" + ",".join(f"{k}={v}" for k, v in zip(keys, vals, strict=True))
            for vals in itertools.product(*(grid[k] for k in keys))]


def search_grid(base: dict, names: list[str], runs: Path, log=print) -> dict:
    """Train every grid point of each plan in ``names`` from ``base`` (a stage config with no
    test split) and pick the point with the best validation score (the config's ``run.select``).

    Returns ``{name: {"chosen": {hp}, "val": {spec: score}}}``.
    """
    from ..train import load_config, train
    from ..train.ablate import _method_config, folder_name, parse_method

    if base["data"].get("test_split"):
        raise ValueError("the grid search must not read a test split; its config has data.test_split "
                         f"{base['data']['test_split']!r}")
    out = {}
    for name in names:
        val = {}
        for spec in _points(name):
            data = _method_config(base, spec)
            data["run"]["out"] = str(runs / folder_name(spec))
            cfg = load_config(None, data=data)
            val[spec] = float(train(cfg)[cfg.run.select])
            log(f"tune {spec:<24} val {cfg.run.select} {val[spec]:.2f}")
        best = max(val, key=lambda s: val[s])  # the first of equal scores: the grid's order
        out[name] = {"chosen": parse_method(best)[1], "val": val}
    return out


def tune(task: str, protocol: str, names: list[str], out: Path, quick: bool, videos: bool, workers: int,
         log=print) -> dict:
    """The grid search of one (task, protocol) on :data:`TUNING_SEED`'s validation split."""
    from .budget import budget
    from .protocol import make_task_data, pretrain, stage_config

    p = budget(quick, videos)
    where = make_task_data(task, out / "data" / task / f"tune-seed-{TUNING_SEED}", p, TUNING_SEED, videos,
                           pretrain=protocol == "finetune")
    runs = out / "runs" / task / protocol / f"tune-seed-{TUNING_SEED}"
    pre_dir = pretrain(where, p, TUNING_SEED, runs, workers, log) if protocol == "finetune" else None
    base = stage_config(where, p, TUNING_SEED, runs, stage=protocol, backbone=str(pre_dir or "tiny"), test=False)
    base["data"]["workers"] = workers
    return search_grid(base, [n for n in names if n in GRIDS], runs, log)


def read_tuned(path: Path = TUNED_FILE) -> dict:
    """The recorded choices (``{}`` when none were recorded yet)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise InputError(f"{path}: expected \"format\": \"{FORMAT}\", got {data.get('format')!r}")
    return data


def write_tuned(results: dict, quick: bool, path: Path = TUNED_FILE) -> dict:
    """Record ``{task: {protocol: search_grid(...)}}`` with when and where it was searched."""
    data = {"format": FORMAT, "date": _dt.date.today().isoformat(), "machine": machine(),
            "tuning_seed": TUNING_SEED, "budget": "quick" if quick else "default",
            "rule": "best validation score (run.select, rsum by default) of the last checkpoint chosen on val; "
                    "test never loaded", "grids": GRIDS, "results": results}
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
    return data


def apply_tuned(methods: list[str], task: str, protocol: str, tuned: dict) -> list[str]:
    """Run specs: a bare plan name takes its recorded hyperparameters for (task, protocol);
    a method given with its own (``tokenflow:lam=5``) keeps them."""
    from ..train.ablate import method_loss

    chosen = tuned.get("results", {}).get(task, {}).get(protocol, {})
    out = []
    for m in methods:
        plan, loss = method_loss(m)  # a loss suffix (max-avg+sigmoid) stays at the end
        hp = chosen.get(plan, {}).get("chosen") if ":" not in plan else None
        spec = f"{plan}:" + ",".join(f"{k}={v}" for k, v in sorted(hp.items())) if hp else plan
        out.append(spec + (f"+{loss}" if loss else ""))
    return out
