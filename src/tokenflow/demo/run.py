"""``tokenflow demo``: run the protocols over tasks, seeds and methods; write tables and figures."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .. import __version__
from ..errors import FileError, InputError
from ..utils import LOCK_FILE, check_writable, folder_lock, machine, remove_temporaries, write_text_atomic
from .budget import METHODS, PROTOCOLS, QUICK_METHODS, SCENES, TASKS, budget
from .tables import results_markdown, summarise

__all__ = ["run_demo"]

MARKER = ".tokenflow-demo"


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


def _clear_captions(test, boxes: dict) -> list[int]:
    """Test captions, one per image, whose named objects share no word ("a red circle and a blue
    cross", not "a red circle and a red cross"): each object word then has one right box."""
    from ..eval.pointing import boxes_for, object_words

    out, seen = [], set()
    for k, text in enumerate(test.texts):
        i = test.text_item[k]
        if i in seen:
            continue
        objects = boxes_for(boxes, test.item_paths[i])
        named = [objects[j]["words"] for j in sorted({j for _, j in object_words(text.replace(",", "").split(),
                                                                                   objects)})]
        flat = [w for ws in named for w in ws]
        if len(named) > 1 and len(set(flat)) == len(flat):
            out.append(k)
            seen.add(i)
    return out


def _figures(out: Path, summary: list[dict], videos: bool, n: int, log) -> list[str]:
    """Explanation figures of ``n`` test pairs from the (protocol, plan) that points best on
    scenes (pointing by T·c, the contributions the figures draw), seed ``min(seeds)``'s model."""
    from ..data import load_split
    from ..eval.pointing import boxes_for, object_words, read_boxes
    from ..models.retrieval import RetrievalModel
    from ..train.ablate import folder_name
    from ..viz import explain, render

    scored = [s for s in summary if s["task"] == "scenes" and "pointing" in s]
    if not scored or not n or videos:
        return []
    best = max(scored, key=lambda s: s["pointing"]["flow"][0])
    seed = min(best["seeds"])
    where = out / "data" / "scenes" / f"seed-{seed}"
    model = RetrievalModel.from_pretrained(out / "runs" / "scenes" / best["protocol"] / f"seed-{seed}"
                                           / folder_name(best["spec"]) / "best")
    test = load_split("flickr30k", where, "test")
    boxes = read_boxes(where / "boxes.json")
    title = (f"{best['method']} ({best['protocol']}), seed {seed}: pointing {best['pointing']['flow'][0]:.1f} % "
             f"over seeds (chance {best['pointing_chance'][0]:.1f} %)")
    figures = []
    for k in _clear_captions(test, boxes)[:n]:
        i = test.text_item[k]
        expl = explain(model, test.item_paths[i], test.texts[k])
        objects = boxes_for(boxes, test.item_paths[i])
        pt = expl.pointing(objects)
        words = sorted({t for t, _ in object_words(expl.tokens, objects)})  # arrows from the object words
        path = render(expl, out / f"explain-{best['protocol']}-{folder_name(best['method'])}-{i}.png", title=title,
                      top=len(words), tokens=words)
        figures.append(str(path))
        log(f"figure {path.name}: \"{test.texts[k]}\", {pt.hits}/{pt.total} object words point into their box")
    return figures


def _check(tasks: Sequence[str], protocols: Sequence[str], seeds: int, videos: bool, log) -> tuple[list, list]:
    tasks, protocols = list(dict.fromkeys(tasks)), list(dict.fromkeys(protocols))
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise InputError(f"unknown task(s) {bad or tasks}; choose from {', '.join(TASKS)}")
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise InputError(f"unknown protocol(s) {bad or protocols}; choose from {', '.join(PROTOCOLS)}")
    if seeds < 1:
        raise InputError(f"--seeds must be at least 1, got {seeds}")
    if videos and "scenes" in tasks:
        tasks = [t for t in tasks if t != "scenes"] or ["bindings"]
        log("tokenflow demo: --videos runs the bindings task only (scenes has no video form yet)")
    return tasks, protocols


#: Rough cost order of a run, so that the longest start first and the pool ends level.
_COST = {"global": 0, "max-avg": 1}


def _run_all(jobs_list: list[tuple], protocols: list[str], out: Path, quick: bool, videos: bool, workers: int,
             jobs: int, threads: int | None) -> list[dict]:
    """``jobs_list``: (task, seed, {protocol: [specs]}). Each (task, seed) is prepared once (data,
    pretraining); then every (protocol, spec) is one run. In this process (``jobs == 1``) or over
    ``jobs`` spawned processes, a run starting as soon as its (task, seed) is prepared."""
    from .protocol import digest, prepare, run_one

    def runs_of(task: str, seed: int, specs: dict, where: dict) -> list[tuple]:
        todo = [(task, seed, pr, spec, where) for pr, ss in specs.items() for spec in ss]
        return sorted(todo, key=lambda r: -_COST.get(r[3].partition(":")[0], 2))

    rows: list[dict] = []
    if jobs == 1:
        for task, seed, specs in jobs_list:
            where = prepare(task, seed, protocols, str(out), quick, videos, workers)
            rows += [run_one(*r, str(out), quick, videos, workers) for r in runs_of(task, seed, specs, where)]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            prepared = {pool.submit(prepare, t, s, protocols, str(out), quick, videos, workers, threads): (t, s, sp)
                        for t, s, sp in jobs_list}
            running = []
            for f in as_completed(prepared):
                task, seed, specs = prepared[f]
                running += [pool.submit(run_one, *r, str(out), quick, videos, workers, threads)
                            for r in runs_of(task, seed, specs, f.result())]
            rows = [f.result() for f in running]
    cached = {(r["pretrained_from"], r["pretrained_sha256"]) for r in rows if "pretrained_from" in r}
    for folder, sha in sorted(cached):  # each pretrained cache is as it was written
        if digest(Path(folder)) != sha:
            raise FileError(f"{folder} changed during the fine-tunes; the pretrained cache must stay as written")
    return rows


def _tune(out: Path, tasks: list[str], protocols: list[str], methods: list[str], quick: bool, videos: bool,
          workers: int, log) -> dict:
    """``--full``'s grid search, recorded in the package's tuned.json and in ``out``."""
    from .tune import TUNED_FILE, tune, write_tuned

    results = {t: {p: tune(t, p, methods, out, quick, videos, workers,
                           log=lambda line, t=t, p=p: log(f"[{t} {p} tuning] {line}")) for p in protocols}
               for t in tasks}
    data = write_tuned(results, quick, out / "tuned.json")
    try:
        write_tuned(results, quick, TUNED_FILE)
        log(f"tokenflow demo: chosen hyperparameters recorded in {TUNED_FILE}")
    except OSError as err:  # an installed, read-only package: the choice stays in out/tuned.json
        log(f"tokenflow demo: could not record the choice in {TUNED_FILE} ({err}); it is in {out / 'tuned.json'}")
    return data


def _meta(tasks: list[str], protocols: list[str], seeds: list[int], quick: bool, full: bool, videos: bool,
          methods: list[str], p: dict, tuned: dict) -> dict:
    """What results.json records about the run besides its rows."""
    return {"tokenflow_version": __version__, "date": _dt.date.today().isoformat(), "machine": machine(),
            "tasks": tasks, "protocols": protocols, "seeds": seeds, "quick": quick, "full": full, "videos": videos,
            "methods": methods,
            "budget": {**{k: list(v) if isinstance(v, tuple) else v for k, v in p.items()}, "scenes": SCENES},
            "tuned": {k: tuned.get(k) for k in ("date", "machine", "tuning_seed", "budget", "results")},
            "protocol": "scratch: each method trains the tiny encoder from a fresh start; finetune: a global-loss "
                        "pretraining per seed (checkpoint chosen on its val), then one fine-tune per method; every "
                        "method has the same budget, checkpoints are chosen on val (rsum), test is evaluated once",
            "command": ["tokenflow", *sys.argv[1:]]}


def run_demo(out: str | Path = "runs/demo", *, quick: bool = False, full: bool = False, videos: bool = False,
             methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
             protocols: Sequence[str] | None = None, seeds: int | None = None, seed: int = 0,
             jobs: int | None = None, workers: int = 0, explain_pairs: int = 3, log=print) -> dict:
    """Run the protocols for every task and seed, write the tables and figures.

    Default: scenes from scratch, :data:`METHODS`, 3 seeds. ``full``: both protocols, 5 seeds,
    and first the grid search of :mod:`tokenflow.demo.tune` (on a tuning seed's val split).
    ``quick``: both protocols at a smoke-test budget.

    Args:
        methods: rows; a bare plan name takes the hyperparameters recorded in ``tuned.json``.
        seeds: seeds ``seed, seed + 1, ...``; each has its own data and start, shared by every method.
        jobs: processes that prepare (task, seed) groups and then train the runs, each with an
            equal share of the CPU threads (default: as many as the machine has cores); 1 runs
            everything in this process.
    """
    from ..train.ablate import check_methods
    from .budget import label
    from .tune import apply_tuned, read_tuned

    methods = check_methods(list(methods or (QUICK_METHODS if quick else METHODS)))
    full_or_quick = full or quick
    seeds = seeds or (5 if full else 3)
    tasks, protocols = _check(tasks or ["scenes"], protocols or (PROTOCOLS if full_or_quick else ["scratch"]),
                              seeds, videos, log)
    out = Path(out)
    with _prepare_out(out):
        p = budget(quick, videos)
        t0 = time.perf_counter()
        tuned = _tune(out, tasks, protocols, methods, quick, videos, workers, log) if full else read_tuned()
        groups = [(t, s, {pr: apply_tuned(methods, t, pr, tuned) for pr in protocols}) for t in tasks
                  for s in range(seed, seed + seeds)]
        jobs = max(1, min(jobs or os.cpu_count() or 1, len(groups) * len(protocols) * len(methods)))
        threads = max(1, torch.get_num_threads() // jobs) if jobs > 1 else None
        log(f"tokenflow demo: {', '.join(tasks)}, {' and '.join(protocols)}, seeds {seed}..{seed + seeds - 1}; "
            f"per seed and method: {p['sizes'][0]} {'videos' if videos else 'images'} x {p['epochs']} epochs"
            + (f" (finetune after a global pretraining of {p['pretrain'][0]} x {p['pretrain_epochs']})"
               if "finetune" in protocols else "")
            + "; methods " + "; ".join(f"{pr}: {', '.join(ms)}" for pr, ms in groups[0][2].items())
            + f"; {jobs} job(s) on {machine()}")
        rows = _run_all(groups, protocols, out, quick, videos, workers, jobs, threads)
        order = {m: i for i, m in enumerate(dict.fromkeys(label(m) for m in methods))}
        rows.sort(key=lambda r: (tasks.index(r["task"]), protocols.index(r["protocol"]), order[r["method"]],
                                 r["seed"]))
        summary = summarise(rows)
        figures = _figures(out, summary, videos, explain_pairs, log)
        meta = _meta(tasks, protocols, list(range(seed, seed + seeds)), quick, full, videos, methods, p, tuned)
        meta.update({"figures": figures, "seconds": round(time.perf_counter() - t0, 1)})
        text = results_markdown(meta, rows, summary)
        write_text_atomic(out / "results.json", json.dumps({**meta, "summary": summary, "rows": rows}, indent=2) + "\n")
        write_text_atomic(out / "results.md", text)
        log("")
        log(text)
        log(f"results: {out / 'results.md'}, {out / 'results.json'}; figures: {', '.join(figures) or 'none'}; "
            f"{meta['seconds']:.0f} s in all")
        return {**meta, "summary": summary, "rows": rows}
