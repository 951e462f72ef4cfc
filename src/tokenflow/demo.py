"""``tokenflow demo`` and ``tokenflow ablate``: one table comparing plans under equal budgets.

``demo`` needs nothing downloaded: it writes the synthetic benchmark in the real dataset
formats, trains the built-in tiny encoder once per method (same seed, data, steps and
hyperparameters; each plan at its documented defaults, fused with the global similarity as in
training), evaluates each on the held-out test split with the checkpoint chosen on validation,
and writes the table (Markdown and JSON) and explanation figures for a few test pairs.
``ablate`` runs the same comparison for any training config (a real dataset and backbone).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from . import __version__
from .utils import write_text_atomic

__all__ = ["METHODS", "format_markdown", "run_ablation", "run_demo"]

#: The demo's methods: "global" is CLIP's global similarity alone; the others add a plan, except
#: "cs-aligner", which adds the Cauchy-Schwarz divergence term to the global loss.
METHODS = ("global", "uniform", "max-avg", "scan", "emd", "sinkhorn", "tokenflow", "omit", "mpa", "dive", "cs-aligner")
MARKER = ".tokenflow-demo"

# Budgets: (train, val, test) sizes and training length. The default fits 15 minutes on a
# 2-core CPU with every method; --quick fits 3 minutes.
PRESETS = {
    ("images", False): {"sizes": (1000, 100, 100), "epochs": 8, "batch_size": 64, "eval_every": 2},
    ("images", True): {"sizes": (256, 40, 60), "epochs": 8, "batch_size": 32, "eval_every": 2},
    ("videos", False): {"sizes": (400, 50, 50), "epochs": 20, "batch_size": 32, "eval_every": 2, "frames": 8},
    ("videos", True): {"sizes": (160, 20, 30), "epochs": 10, "batch_size": 16, "eval_every": 2, "frames": 6},
}


def machine() -> str:
    """A one-line description of this machine for result tables."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()}-core {cpu}{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


#: Methods that are not a plan name: a plan (or none) plus settings of the training config.
RECIPES: dict[str, dict] = {
    # CS-Aligner (seed 004): CLIP's global InfoNCE plus the Cauchy-Schwarz divergence term.
    # Weight 0.1: a better validation rsum than 0.3 on the quick synthetic demo; 1.0 stalls InfoNCE.
    "cs-aligner": {"aligner": None, "cs": {"weight": 0.1}},
}


def parse_method(spec: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:key=value,key=value`` (values read as YAML) -> (name, hyperparameters)."""
    name, _, rest = spec.partition(":")
    hp = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"method {spec!r}: expected NAME:key=value,... (got {item!r})")
        hp[key.strip()] = yaml.safe_load(value)
    return name.strip(), hp


def _check_methods(methods: Sequence[str]) -> list[str]:
    from .align import list_aligners

    known = {"global", *RECIPES, *list_aligners()}
    bad = [m for m in methods if parse_method(m)[0] not in known]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from global, {', '.join(RECIPES)}, "
                         f"{', '.join(list_aligners())} (a plan may take NAME:key=value,...)")
    if not methods:
        raise ValueError("no methods given")
    return list(dict.fromkeys(methods))


def _method_config(base: dict, method: str, recipe_settings: dict | None = None) -> dict:
    """The config of one row: ``base`` with the method's plan, hyperparameters and recipe."""
    data = yaml.safe_load(yaml.safe_dump(base))
    name, hp = parse_method(method)
    if name in RECIPES:
        recipe = RECIPES[name]
        data["model"]["aligner"] = recipe["aligner"]
        cs = {**recipe.get("cs", {}), **(recipe_settings or {}).get(name, {}).get("cs", {})}
        if cs:
            given = data.setdefault("cs", {})
            if given.get("weight"):  # the config's own weight wins
                cs.pop("weight", None)
            given.update(cs)
        data.setdefault("cs", {}).update(hp)  # cs-aligner:weight=0.5,token_weight=0.1
        hp = {}
    else:
        data["model"]["aligner"] = None if name == "global" else name
    data["model"]["hparams"] = hp
    return data


def _folder_name(method: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in method)


def run_methods(base: dict, methods: Sequence[str], runs: Path, *, log=print,
                recipe_settings: dict | None = None) -> list[dict]:
    """Train and test ``base`` (a config dict) once per method; one result row per method.

    A method is ``global``, a recipe of :data:`RECIPES` (``cs-aligner``), or a plan name with
    optional hyperparameters, ``omit:marginals=l2g,mass=0.8``. ``recipe_settings`` adds settings
    to a recipe (the demo's unpaired data for ``cs-aligner``).
    """
    from .train import load_config, train

    rows = []
    for method in _check_methods(methods):
        data = _method_config(base, method, recipe_settings)
        data["run"]["out"] = str(runs / _folder_name(method))
        cfg = load_config(None, data=data)
        if not cfg.data.test_split:
            raise ValueError("the config has no data.test_split to compare the methods on")
        t0 = time.perf_counter()
        summary = train(cfg)
        seconds = time.perf_counter() - t0
        test = json.loads((runs / _folder_name(method) / "test.json").read_text())
        row = {"method": method, "t2v": test["metrics"]["t2v"], "v2t": test["metrics"]["v2t"],
               "train_s": round(seconds, 1), "score_s": test["timings"]["score_s"],
               "best_step": summary["best_step"], "steps": summary["steps"],
               "hparams": (test.get("aligner") or {}).get("hparams", {})}
        for k, v in test.items():
            if k.startswith("metrics_folds_"):
                row[k] = v
        rows.append(row)
        log(f"{method:<10} t2v R@1 {row['t2v']['R@1']:5.1f}  v2t R@1 {row['v2t']['R@1']:5.1f}  "
            f"train {row['train_s']:6.1f}s  score {row['score_s']:.2f}s")
    return rows


def format_markdown(rows: Sequence[dict], title: str = "") -> str:
    """The rows in the shape of the paper's tables 5/6: R@1, R@5, R@10, MdR, MnR each way."""
    keys = ("R@1", "R@5", "R@10", "MdR", "MnR")
    head = ("| method | " + " | ".join(f"t2v {k}" for k in keys) + " | " + " | ".join(f"v2t {k}" for k in keys)
            + " | train s | score s |")
    sep = "|" + "---|" * (2 + 2 * len(keys) + 1)
    lines = [f"{title}\n" if title else "", head, sep]
    for r in rows:
        cells = [f"{r[d][k]:.1f}" for d in ("t2v", "v2t") for k in keys]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['train_s']:.0f} | {r['score_s']:.2f} |")
    return "\n".join(x for x in lines if x) + "\n"


def _prepare_out(out: Path) -> None:
    """Refuse a folder that is not the demo's; clear what an earlier demo left there."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} exists and was not written by tokenflow demo; choose another --out")
    for sub in ("data", "runs"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by tokenflow demo; its subfolders are replaced on every run\n")


def _write_results(out: Path, rows: list[dict], meta: dict, title: str) -> None:
    write_text_atomic(out / "results.json", json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    write_text_atomic(out / "results.md", format_markdown(rows, title))


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, videos: bool = False,
             methods: Sequence[str] = METHODS, seed: int = 0, workers: int = 0, explain_pairs: int = 3,
             log=print) -> dict:
    """Make the synthetic benchmark, compare ``methods`` on it, write the table and figures."""
    from .data import load_split
    from .data.synthetic import make_synthetic

    methods = _check_methods(methods)
    out = Path(out)
    _prepare_out(out)
    kind = "videos" if videos else "images"
    p = PRESETS[(kind, quick)]
    t0 = time.perf_counter()
    sizes = {"images": p["sizes"], "videos": (0, 0, 0)} if not videos else {"images": (0, 0, 0), "videos": p["sizes"]}
    make_synthetic(out / "data", **sizes, image_size=32, frames=p.get("frames", 8) + 2, seed=seed,
                   unpaired=p["sizes"][0] // 2)
    root = out / "data" / kind
    base = {
        "data": {"dataset": "msrvtt" if videos else "flickr30k", "root": str(root), "sampling": "item",
                 "num_frames": p.get("frames", 12), "video_tokens": "frames", "workers": workers},
        "model": {"backbone": "tiny", "w_global": 1.0, "w_fine": 1.0},
        "optim": {"epochs": p["epochs"], "batch_size": p["batch_size"], "lr": 1e-3, "lr_new": 1e-3,
                  "weight_decay": 0.05, "warmup": 0.05, "grad_clip": 1.0},
        "run": {"out": "", "seed": seed, "save_every": 10_000, "log_every": 10, "progress": False,
                "eval_every": p["eval_every"]},
    }
    log(f"tokenflow demo: synthetic {kind} {p['sizes']} (train, val, test) in {out / 'data'}; "
        f"{p['epochs']} epochs x batch {p['batch_size']} per method on {machine()}")
    unpaired = {"cs-aligner": {"cs": {"unpaired_media": str(root / "unpaired" / kind),
                                      "unpaired_texts": str(root / "unpaired" / "captions.txt"),
                                      "unpaired_batch": p["batch_size"] // 2}}}
    rows = run_methods(base, methods, out / "runs", log=log, recipe_settings=unpaired)
    meta = {"tokenflow_version": __version__, "date": _dt.date.today().isoformat(), "machine": machine(),
            "benchmark": f"synthetic {kind}", "sizes": list(p["sizes"]), "quick": quick, "seed": seed,
            "training": base["optim"], "selection": "best validation rsum; test evaluated once",
            "command": ["tokenflow", *sys.argv[1:]], "seconds": None}
    figures = []
    from .align.registry import _REGISTRY

    def token_plan(method: str) -> bool:
        cls = _REGISTRY.get(parse_method(method)[0])
        return cls is not None and cls.token_plan

    # Figures need a token plan: the first such method, tokenflow preferred (set methods have none).
    fine = [m for m in ("tokenflow", *methods) if m in methods and token_plan(m)]
    if fine and explain_pairs:
        from .viz import explain, render

        test = load_split(base["data"]["dataset"], root, "test")
        model_dir = out / "runs" / _folder_name(fine[0]) / "best"
        for i in range(min(explain_pairs, len(test))):
            k = test.text_item.index(i)
            expl = explain(model_dir, test.item_paths[i], test.texts[k], num_frames=p.get("frames", 12))
            figures.append(str(render(expl, out / f"explain-{_folder_name(fine[0])}-{i}.png")))
    meta["figures"] = figures
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    title = (f"Synthetic {kind}, test split ({p['sizes'][2]} items), tiny encoder from scratch; "
             f"{meta['date']}, {meta['machine']}")
    _write_results(out, rows, meta, title)
    log("")
    log(format_markdown(rows, title))
    log(f"results: {out / 'results.md'}, {out / 'results.json'}; figures: {', '.join(figures) or 'none'}; "
        f"{meta['seconds']:.0f} s in all")
    return {**meta, "rows": rows}


def run_ablation(config: str | Path, methods: Sequence[str], overrides: Sequence[str] = (), *,
                 log=print) -> dict:
    """``demo`` for any training config: one run per method under ``run.out``/METHOD."""
    from .train import load_config

    cfg = load_config(config, overrides)
    base = yaml.safe_load(cfg.to_yaml())
    out = cfg.run.out
    rows = run_methods(base, methods, out, log=log)
    meta = {"tokenflow_version": __version__, "date": _dt.date.today().isoformat(), "machine": machine(),
            "config": str(config), "overrides": list(overrides), "dataset": cfg.data.dataset,
            "backbone": cfg.model.backbone, "selection": f"best validation {cfg.run.select}; test evaluated once"}
    title = (f"{cfg.data.dataset} {cfg.data.test_split}, backbone {cfg.model.backbone}; "
             f"{meta['date']}, {meta['machine']}")
    _write_results(out, rows, meta, title)
    log("")
    log(format_markdown(rows, title))
    return {**meta, "rows": rows}
