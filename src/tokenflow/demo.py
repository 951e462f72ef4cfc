"""``tokenflow demo`` and ``tokenflow ablate``: one table comparing plans under equal budgets.

``demo`` runs the TokenFlow paper's protocol in miniature, with nothing downloaded. For each
synthetic task and each seed it writes the data in the real dataset formats, *pretrains* the
built-in tiny dual encoder with the global contrastive loss alone on a pretraining split (the
stand-in for CLIP's own pretraining; once per seed, shared by every method), then *fine-tunes*
a copy of it once per method under the same budget, chooses each checkpoint on validation
and tests it once. The ``global`` row is the global-only fine-tune, the paper's "CLIP
fine-tune" baseline. Tables give mean ± std over the seeds; ``results.json`` keeps every seed.

Tasks: ``scenes`` (cluttered images; each caption names a subset of the objects, so local
content decides; :mod:`tokenflow.data.scenes`) and ``bindings`` (two objects whose colours,
sides or sizes are swapped between twins; :mod:`tokenflow.data.synthetic`). On ``scenes`` the
demo also scores explanations: the pointing accuracy of each token plan against the objects'
boxes (:mod:`tokenflow.eval.pointing`).

``ablate`` runs the one-stage comparison for any training config (a real dataset and backbone);
it lives next to training, in :mod:`tokenflow.train.ablate`, with the methods' parsing and
:func:`~tokenflow.train.ablate.run_methods`, which the demo's fine-tunes go through too.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from . import __version__
from .utils import LOCK_FILE, check_writable, folder_lock, machine, remove_temporaries, write_text_atomic

__all__ = ["ALL_METHODS", "METHODS", "QUICK_METHODS", "TASKS", "format_seed_table", "run_demo"]

#: Every method the demo knows: "global" is the global similarity alone; the others add a plan,
#: except "cs-aligner", which adds the Cauchy-Schwarz divergence term to the global loss.
ALL_METHODS = ("global", "uniform", "max-avg", "scan", "emd", "sinkhorn", "tokenflow", "omit", "wti", "xclip",
               "mpa", "dive", "cs-aligner")
#: The default rows: the global baseline, FILIP's max-avg and TokenFlow, which fit the 5-minute
#: budget with 3 seeds on 2 cores; the rest of ALL_METHODS (scan, transport, sets, CS) with ``--methods``.
METHODS = ("global", "max-avg", "tokenflow")
QUICK_METHODS = METHODS
TASKS = ("scenes", "bindings")
MARKER = ".tokenflow-demo"

# Budgets per seed and task: pretraining split (train, val) and epochs; fine-tuning split
# (train, val, test) and epochs. Every method gets the same fine-tuning budget.
PRESETS = {
    False: {"pretrain": (3000, 100), "pretrain_epochs": 4, "sizes": (1000, 100, 200), "epochs": 4,
            "batch_size": 64, "lr": 1e-3, "lr_finetune": 3e-4},
    True: {"pretrain": (1000, 60), "pretrain_epochs": 3, "sizes": (400, 60, 100), "epochs": 3,
           "batch_size": 32, "lr": 1e-3, "lr_finetune": 3e-4},
}
VIDEO_FRAMES = 6


def _preset(quick: bool, videos: bool) -> dict:
    """The budget; videos (6 frames each) get a quarter of the images' training items."""
    p = dict(PRESETS[quick])
    if videos:
        p["pretrain"] = (p["pretrain"][0] // 4, p["pretrain"][1] // 2)
        p["sizes"] = (p["sizes"][0] // 4, p["sizes"][1] // 2, p["sizes"][2] // 4)
    return p
SCENES = {"objects": 4, "named": 2}  # objects per image, objects named per caption


@contextlib.contextmanager
def _prepare_out(out: Path) -> Iterator[None]:
    """Refuse a folder that is not the demo's or is not writable; hold its lock for the block
    (a second demo into it stops at once); clear what an earlier demo left there."""
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()) and not (out / MARKER).exists():
        raise FileExistsError(f"{out} exists and was not written by tokenflow demo; choose another --out")
    check_writable(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        for sub in ("data", "runs"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for old in out.glob("explain-*.png"):
            old.unlink()
        remove_temporaries(out)
        (out / MARKER).write_text("written by tokenflow demo; its subfolders are replaced on every run\n")
        yield


# -- the two-stage protocol, one (task, seed) at a time ------------------------------------------
def _make_task_data(task: str, folder: Path, p: dict, seed: int, videos: bool) -> dict:
    """Write one task's data for one seed; returns where things are."""
    from .data.scenes import make_scenes
    from .data.synthetic import make_images, make_videos

    if task == "scenes":
        if videos:
            raise ValueError("scenes has no video form yet; run --videos with --tasks bindings")
        make_scenes(folder, p["sizes"], pretrain=p["pretrain"], image_size=32, seed=seed, **SCENES)
        return {"dataset": "flickr30k", "root": folder, "pretrain": folder / "pretrain",
                "positives": folder / "positives.json", "pretrain_positives": folder / "pretrain" / "positives.json",
                "boxes": folder / "boxes.json"}
    even = [n - n % 2 for n in (*p["sizes"], *p["pretrain"])]  # twins come in pairs
    if videos:
        make_videos(folder, tuple(even[:3]), frame_size=32, n_frames=VIDEO_FRAMES + 2, seed=seed)
        make_videos(folder / "pretrain", (even[3], even[4], 0), frame_size=32, n_frames=VIDEO_FRAMES + 2,
                    seed=seed + 10_007)
        return {"dataset": "msrvtt", "root": folder, "pretrain": folder / "pretrain"}
    make_images(folder, tuple(even[:3]), image_size=32, seed=seed, fmt="png")
    make_images(folder / "pretrain", (even[3], even[4], 0), image_size=32, seed=seed + 10_007, fmt="png")
    return {"dataset": "flickr30k", "root": folder, "pretrain": folder / "pretrain"}


def _stage_config(where: dict, p: dict, seed: int, out: Path, *, pretrain: bool, backbone: str = "tiny") -> dict:
    root = where["pretrain"] if pretrain else where["root"]
    positives = where.get("pretrain_positives" if pretrain else "positives")
    return {
        "data": {"dataset": where["dataset"], "root": str(root), "sampling": "item", "cache": True,
                 "num_frames": VIDEO_FRAMES, "video_tokens": "frames",
                 "positives": str(positives) if positives else None,
                 "test_split": None if pretrain else "test"},
        "model": {"backbone": backbone, "aligner": None, "w_global": 1.0, "w_fine": 1.0},
        "optim": {"epochs": p["pretrain_epochs" if pretrain else "epochs"], "batch_size": p["batch_size"],
                  "lr": p["lr"] if pretrain else p["lr_finetune"], "lr_new": 1e-3, "weight_decay": 0.05,
                  "warmup": 0.05, "grad_clip": 1.0},
        "run": {"out": str(out), "seed": seed, "save_every": 100_000, "log_every": 20, "progress": False,
                "eval_every": 1},
    }


def _digest(folder: Path) -> str:
    """sha256 over a model folder's files (names and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@torch.no_grad()
def _pointing_of(model_dir: Path, where: dict, dataset: str) -> dict:
    """Pointing accuracy of a trained token-plan model over every test caption with its own image."""
    from .data import load_split
    from .eval.evaluate import encode_split
    from .eval.pointing import Pointing, boxes_for, pointing, read_boxes
    from .models.retrieval import RetrievalModel

    model = RetrievalModel.from_pretrained(model_dir)
    split = load_split(dataset, where["root"], "test")
    boxes = read_boxes(where["boxes"])
    enc = encode_split(model.backbone, split)
    aligner = model.aligner.eval()
    backbone = model.backbone
    size = tuple(boxes["image_size"])
    total = Pointing()
    for k, text in enumerate(split.texts):
        i = split.text_item[k]
        ids, mask = backbone.tokenize([text])
        tokens = backbone.decode_tokens(ids[0][mask[0]].tolist())
        plan = aligner.plan(enc.vis[i], enc.txt[k])
        total = total.add(pointing(plan.t2v.float(), plan.c.float(), tokens, boxes_for(boxes, split.item_paths[i]),
                                   backbone.patch_grid, size))
    return {**total.to_dict(), "direction": "t2v"}


def _run_group(task: str, seed: int, out: str, quick: bool, videos: bool, methods: list[str], workers: int,
               threads: int | None = None) -> list[dict]:
    """Data, pretraining and every method's fine-tune for one (task, seed); one row per method."""
    from .align.registry import is_token_plan
    from .train import load_config, train
    from .train.ablate import folder_name, parse_method, run_methods

    if threads:
        torch.set_num_threads(threads)
    tag = f"[{task} seed {seed}]"
    p = _preset(quick, videos)
    out = Path(out)
    t0 = time.perf_counter()
    where = _make_task_data(task, out / "data" / task / f"seed-{seed}", p, seed, videos)
    runs = out / "runs" / task / f"seed-{seed}"
    cfg = _stage_config(where, p, seed, runs / "pretrain", pretrain=True)
    cfg["data"]["workers"] = workers
    summary = train(load_config(None, data=cfg))
    pre_dir = runs / "pretrain" / "best"
    digest = _digest(pre_dir)
    pre_val = json.loads((runs / "pretrain" / "val_best.json").read_text())["metrics"]
    print(f"{tag} pretrained (global loss only) in {time.perf_counter() - t0:.0f} s: val t2v R@1 "
          f"{pre_val['t2v']['R@1']:.1f}, step {summary['best_step']} of {summary['steps']}", flush=True)
    base = _stage_config(where, p, seed, runs, pretrain=False, backbone=str(pre_dir))
    base["data"]["workers"] = workers
    rows = run_methods(base, methods, runs, log=lambda line: print(f"{tag} {line}", flush=True))
    for row in rows:
        row.update({"task": task, "seed": seed, "pretrained_from": str(pre_dir), "pretrained_sha256": digest})
        if task == "scenes" and is_token_plan(parse_method(row["method"])[0]):
            row["pointing"] = _pointing_of(runs / folder_name(row["method"]) / "best", where, where["dataset"])
            print(f"{tag} {row['method']:<10} pointing {row['pointing']['accuracy']:5.1f} % (chance "
                  f"{row['pointing']['chance']:.1f} %)", flush=True)
    if _digest(pre_dir) != digest:
        raise RuntimeError(f"{pre_dir} changed during the fine-tunes; the pretrained cache must stay as written")
    return rows


# -- tables -------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Mean and sample std (n - 1) over seeds of every metric, per (task, method), in row order."""
    keys = ("R@1", "R@5", "R@10", "MdR", "MnR")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    out = []
    for (task, method), rs in groups.items():
        s = {"task": task, "method": method, "seeds": [r["seed"] for r in rs]}
        for d in ("t2v", "v2t"):
            s[d] = {k: _mean_std([r[d][k] for r in rs]) for k in keys}
        if all("pointing" in r for r in rs):
            s["pointing"] = _mean_std([r["pointing"]["accuracy"] for r in rs])
            s["pointing_chance"] = _mean_std([r["pointing"]["chance"] for r in rs])
        s["train_s"] = _mean_std([r["train_s"] for r in rs])
        out.append(s)
    return out


def format_seed_table(summary: Sequence[dict], task: str, title: str = "") -> str:
    """One task's rows: mean ± std over seeds of R@1/5/10 and MdR each way, pointing, train seconds."""
    keys = ("R@1", "R@5", "R@10", "MdR")
    rows = [s for s in summary if s["task"] == task]
    point = any("pointing" in s for s in rows)
    head = ("| method | " + " | ".join(f"t2v {k}" for k in keys) + " | " + " | ".join(f"v2t {k}" for k in keys)
            + (" | pointing % | chance % |" if point else " |") + " train s |")
    n_cols = 1 + 2 * len(keys) + (2 if point else 0) + 1
    lines = [title, "", head, "|" + "---|" * n_cols] if title else [head, "|" + "---|" * n_cols]
    for s in rows:
        cells = [f"{s[d][k][0]:.1f} ± {s[d][k][1]:.1f}" for d in ("t2v", "v2t") for k in keys]
        if point:
            cells += ([f"{s['pointing'][0]:.1f} ± {s['pointing'][1]:.1f}", f"{s['pointing_chance'][0]:.1f}"]
                      if "pointing" in s else ["–", "–"])
        cells.append(f"{s['train_s'][0]:.0f}")
        lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figures(out: Path, summary: list[dict], videos: bool, n: int, log) -> list[str]:
    """Explanation figures for ``n`` test pairs of seed 0's scenes model of the plan that points best."""
    from .data import load_split
    from .eval.pointing import boxes_for, read_boxes
    from .models.retrieval import RetrievalModel
    from .train.ablate import folder_name
    from .viz import explain, render

    scored = [s for s in summary if s["task"] == "scenes" and "pointing" in s]
    if not scored or not n or videos:
        return []
    best = max(scored, key=lambda s: s["pointing"][0])
    seed = min(best["seeds"])
    where = out / "data" / "scenes" / f"seed-{seed}"
    model = RetrievalModel.from_pretrained(out / "runs" / "scenes" / f"seed-{seed}" / folder_name(best["method"])
                                           / "best")
    test = load_split("flickr30k", where, "test")
    boxes = read_boxes(where / "boxes.json")
    figures = []
    for i in range(min(n, len(test))):
        k = test.text_item.index(i)
        expl = explain(model, test.item_paths[i], test.texts[k])
        pt = expl.pointing(boxes_for(boxes, test.item_paths[i]))
        path = render(expl, out / f"explain-{folder_name(best['method'])}-{i}.png")
        figures.append(str(path))
        log(f"figure {path.name}: \"{test.texts[k]}\", {pt.hits}/{pt.total} object words point into their box")
    return figures


def _check_tasks(tasks: Sequence[str], seeds: int, videos: bool, log) -> list[str]:
    tasks = list(dict.fromkeys(tasks))
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"unknown task(s) {bad or tasks}; choose from {', '.join(TASKS)}")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    if videos and "scenes" in tasks:
        tasks = [t for t in tasks if t != "scenes"] or ["bindings"]
        log("tokenflow demo: --videos runs the bindings task only (scenes has no video form yet)")
    return tasks


def _run_groups(groups: list[tuple[str, int]], out: Path, quick: bool, videos: bool, methods: list[str],
                workers: int, jobs: int, threads: int | None) -> list[dict]:
    """Every (task, seed) group's rows: in this process (``jobs == 1``) or in spawned processes."""
    rows: list[dict] = []
    if jobs == 1:
        for t, s in groups:
            rows += _run_group(t, s, str(out), quick, videos, methods, workers)
        return rows
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_run_group, t, s, str(out), quick, videos, methods, workers, threads)
                   for t, s in groups]
        for f in futures:
            rows += f.result()
    return rows


def _results_markdown(meta: dict, rows: list[dict], summary: list[dict]) -> str:
    seeds, videos = meta["seeds"], meta["videos"]
    md = [f"# tokenflow demo: {meta['date']}, {meta['machine']}", "",
          f"Mean ± std over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); every seed has its own data, "
          "pretraining and fine-tunes. `global` is the global-only fine-tune (the baseline).", ""]
    for t in meta["tasks"]:
        first = next(r for r in rows if r["task"] == t)
        several = _mean_std([r["texts_with_several_positives"] for r in rows if r["task"] == t
                             and r["method"] == first["method"]])[0]
        title = (f"## {t}: test split, {first['test_items']} {'videos' if videos else 'images'}, "
                 f"{first['test_texts']} captions")
        if t == "scenes":
            title += (f"; {several:.0f} captions on average are true of more than one test image (all count as "
                      "correct); pointing: object words whose strongest patch lies in their object's box (t2v plan)")
        md += [format_seed_table(summary, t, title), ""]
    return "\n".join(md)


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, videos: bool = False,
             methods: Sequence[str] | None = None, tasks: Sequence[str] = TASKS, seeds: int = 3, seed: int = 0,
             jobs: int | None = None, workers: int = 0, explain_pairs: int = 3, log=print) -> dict:
    """Run the two-stage protocol for every task and seed, write the tables and figures.

    Args:
        methods: rows (default :data:`METHODS`, or :data:`QUICK_METHODS` with ``quick``).
        seeds: seeds ``seed, seed + 1, ...``; each seed has its own data, pretraining and fine-tunes.
        jobs: (task, seed) groups run at once in separate processes, each with an equal share of
            the CPU threads (default: as many as the machine has cores, at most the groups); 1
            runs everything in this process.
    """
    from .train.ablate import check_methods

    methods = check_methods(list(methods or (QUICK_METHODS if quick else METHODS)))
    tasks = _check_tasks(tasks, seeds, videos, log)
    out = Path(out)
    with _prepare_out(out):
        p = _preset(quick, videos)
        groups = [(t, s) for t in tasks for s in range(seed, seed + seeds)]
        cores = os.cpu_count() or 1
        jobs = max(1, min(jobs or cores, len(groups)))
        threads = max(1, torch.get_num_threads() // jobs) if jobs > 1 else None
        t0 = time.perf_counter()
        log(f"tokenflow demo: {', '.join(tasks)} x seeds {seed}..{seed + seeds - 1}; per seed: pretrain "
            f"{p['pretrain'][0]} {'videos' if videos else 'images'} x {p['pretrain_epochs']} epochs (global loss), "
            "then "
            f"fine-tune {p['sizes'][0]} x {p['epochs']} epochs per method ({', '.join(methods)}); {jobs} job(s) on "
            f"{machine()}")
        rows = _run_groups(groups, out, quick, videos, methods, workers, jobs, threads)
        order = {m: i for i, m in enumerate(methods)}
        rows.sort(key=lambda r: (tasks.index(r["task"]), order[r["method"]], r["seed"]))
        summary = summarise(rows)
        figures = _figures(out, summary, videos, explain_pairs, log)
        date = _dt.date.today().isoformat()
        meta = {"tokenflow_version": __version__, "date": date, "machine": machine(), "tasks": tasks,
                "seeds": list(range(seed, seed + seeds)), "quick": quick, "videos": videos, "methods": methods,
                "budget": {**{k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
                           "scenes": SCENES},
                "protocol": "per seed: pretrain the tiny dual encoder with the global loss on the pretraining split "
                            "(checkpoint chosen on its val split), then fine-tune a copy per method with the same "
                            "budget; checkpoint chosen on val (rsum), test evaluated once",
                "command": ["tokenflow", *sys.argv[1:]], "figures": figures,
                "seconds": round(time.perf_counter() - t0, 1)}
        text = _results_markdown(meta, rows, summary)
        write_text_atomic(out / "results.json", json.dumps({**meta, "summary": summary, "rows": rows}, indent=2) + "\n")
        write_text_atomic(out / "results.md", text)
        log("")
        log(text)
        log(f"results: {out / 'results.md'}, {out / 'results.json'}; figures: {', '.join(figures) or 'none'}; "
            f"{meta['seconds']:.0f} s in all")
        return {**meta, "summary": summary, "rows": rows}
