"""``tokenflow ablate``: train and test one config once per method; one table.

A method is ``global`` (the global similarity alone), a recipe of :data:`RECIPES`
(``cs-aligner``), or a plan name with optional hyperparameters, ``omit:marginals=l2g,mass=0.8``;
a loss suffix picks ``loss.kind`` for that row (``max-avg+sigmoid``, ``global+infonce``).
Every method gets the same config and budget; each checkpoint is chosen on validation and
tested once. ``tokenflow demo`` runs its per-seed fine-tunes through :func:`run_methods` too.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

import yaml

from .. import __version__
from ..align import list_aligners
from ..errors import InputError
from ..utils import check_writable, folder_lock, machine, write_text_atomic
from .config import LossKind, load_config
from .trainer import train

__all__ = ["LOSSES", "RECIPES", "check_methods", "folder_name", "format_markdown", "method_loss", "parse_method",
           "run_ablation", "run_methods"]


#: Methods that are not a plan name: a plan (or none) plus settings of the training config.
RECIPES: dict[str, dict] = {
    # CS-Aligner (docs/methods.md): CLIP's global InfoNCE plus the Cauchy-Schwarz divergence term.
    # Weight 0.1: a better validation rsum than 0.3 on the quick synthetic demo; 1.0 stalls InfoNCE.
    "cs-aligner": {"aligner": None, "cs": {"weight": 0.1}},
}


#: loss suffixes of a method (``max-avg+sigmoid``): the training config's ``loss.kind``
LOSSES = get_args(LossKind)


def method_loss(spec: str) -> tuple[str, str | None]:
    """``max-avg:lam=2+sigmoid`` -> (``max-avg:lam=2``, ``"sigmoid"``); no suffix: (spec, None)."""
    head, plus, tail = spec.rpartition("+")
    return (head, tail.strip()) if plus and tail.strip() in LOSSES else (spec, None)


def parse_method(spec: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:key=value,key=value`` (values read as YAML), with an optional loss
    suffix ``+sigmoid`` / ``+infonce`` (see :func:`method_loss`) -> (name, hyperparameters)."""
    name, _, rest = method_loss(spec)[0].partition(":")
    hp = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"method {spec!r}: expected NAME:key=value,... (got {item!r})")
        hp[key.strip()] = yaml.safe_load(value)
    return name.strip(), hp


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods in order, duplicates dropped; an unknown name raises, listing the known ones."""
    known = {"global", *RECIPES, *list_aligners()}
    bad = [m for m in methods if parse_method(m)[0] not in known]
    if bad:
        raise InputError(f"unknown method(s) {bad}; choose from global, {', '.join(RECIPES)}, "
                         f"{', '.join(list_aligners())} (a plan may take NAME:key=value,..., and any method a "
                         f"loss suffix {' or '.join('+' + k for k in LOSSES)})")
    if not methods:
        raise InputError("no methods given")
    return list(dict.fromkeys(methods))


def _method_config(base: dict, method: str, recipe_settings: dict | None = None) -> dict:
    """The config of one row: ``base`` with the method's plan, hyperparameters, recipe and loss
    suffix. ``+sigmoid`` also turns distillation off; where the config had it on, the row's config
    says so (``distill.disabled_by: sigmoid``, kept in the run's ``config.yaml``) and a line on
    stderr tells the user."""
    data = yaml.safe_load(yaml.safe_dump(base))
    name, hp = parse_method(method)
    loss = method_loss(method)[1]
    if loss is not None:  # the suffix's loss; the sigmoid loss trains without distillation (softmax targets)
        data.setdefault("loss", {})["kind"] = loss
        if loss == "sigmoid":
            distill = data.setdefault("distill", {})
            if distill.get("enabled"):
                distill["disabled_by"] = "sigmoid"
                print(f"tokenflow ablate: {method}: distillation turned off (its soft targets are softmaxes; "
                      "distill.disabled_by: sigmoid)", file=sys.stderr)
            distill["enabled"] = False
        else:
            data["loss"].pop("bias", None)
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


def folder_name(method: str) -> str:
    """A method's run folder: ``omit:mass=0.8`` -> ``omit_mass_0.8``, ``max-avg+sigmoid`` ->
    ``max-avg_sigmoid``."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in method)


def run_methods(base: dict, methods: Sequence[str], runs: Path, *, log=print,
                recipe_settings: dict | None = None) -> list[dict]:
    """Train and test ``base`` (a config dict) once per method; one result row per method.

    A method is ``global``, a recipe of :data:`RECIPES` (``cs-aligner``), or a plan name with
    optional hyperparameters, ``omit:marginals=l2g,mass=0.8``. ``recipe_settings`` adds settings
    to a recipe (the demo's unpaired data for ``cs-aligner``).
    """
    rows = []
    for method in check_methods(methods):
        data = _method_config(base, method, recipe_settings)
        data["run"]["out"] = str(runs / folder_name(method))
        cfg = load_config(None, data=data)
        if not cfg.data.test_split:
            raise InputError("the config has no data.test_split to compare the methods on")
        t0 = time.perf_counter()
        summary = train(cfg)
        seconds = time.perf_counter() - t0
        test = json.loads((runs / folder_name(method) / "test.json").read_text())
        row = {"method": method, "t2v": test["metrics"]["t2v"], "v2t": test["metrics"]["v2t"],
               "train_s": round(seconds, 1), "score_s": test["timings"]["score_s"],
               "best_step": summary["best_step"], "steps": summary["steps"],
               "hparams": (test.get("aligner") or {}).get("hparams", {}),
               "test_items": test["evaluated"]["items"], "test_texts": test["evaluated"]["texts"],
               "texts_with_several_positives": test["split"].get("texts_with_several_positives", 0)}
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


def _write_results(out: Path, rows: list[dict], meta: dict, title: str) -> None:
    write_text_atomic(out / "results.json", json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    write_text_atomic(out / "results.md", format_markdown(rows, title))


def run_ablation(config: str | Path, methods: Sequence[str], overrides: Sequence[str] = (), *,
                 log=print) -> dict:
    """``demo`` for any training config: one run per method under ``run.out``/METHOD."""
    cfg = load_config(config, overrides)
    base = yaml.safe_load(cfg.to_yaml())
    out = cfg.run.out
    check_writable(out, "run.out")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):  # one ablation per folder; each method's run locks its own subfolder too
        rows = run_methods(base, methods, out, log=log)
        meta = {"tokenflow_version": __version__, "date": _dt.date.today().isoformat(), "machine": machine(),
                "config": str(config), "overrides": list(overrides), "dataset": cfg.data.dataset,
                "backbone": cfg.model.backbone,
                "selection": f"best validation {cfg.run.select}; test evaluated once"}
        title = (f"{cfg.data.dataset} {cfg.data.test_split}, backbone {cfg.model.backbone}; "
                 f"{meta['date']}, {meta['machine']}")
        _write_results(out, rows, meta, title)
    return {**meta, "rows": rows}

