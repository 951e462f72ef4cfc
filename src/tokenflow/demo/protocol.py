"""One (task, seed, protocol) group of the demo: its data, its runs, and what each row reports.

*scratch*: every method trains the tiny dual encoder from a fresh start on the task's training
split. *finetune*: the encoder is first trained with the global loss alone on a separate
pretraining split (checkpoint chosen on that split's val, cached per seed and shared by every
method), then a copy is fine-tuned once per method. In both, every method has the same budget,
each checkpoint is chosen on val, and test is read once.

Beside R@K each row has, on ``scenes``, the pointing accuracy of a token plan under the three
readings of :data:`tokenflow.eval.pointing.WEIGHTS`, and the hard-negative accuracy of the
fused score on the test split's ``hard_negatives.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import InputError
from .budget import SCENES, VIDEO_FRAMES, budget, label

if TYPE_CHECKING:
    from ..eval.evaluate import Encoded

__all__ = ["digest", "encode_test", "make_task_data", "prepare", "run_one", "stage_config"]


def make_task_data(task: str, folder: Path, p: dict, seed: int, videos: bool, pretrain: bool = True) -> dict:
    """Write one task's data for one seed (with a pretraining split when ``pretrain``); returns
    where things are."""
    from ..data.scenes import make_scenes
    from ..data.synthetic import make_images, make_videos

    pre = p["pretrain"] if pretrain else (0, 0)
    if task == "scenes":
        if videos:
            raise InputError("scenes has no video form yet; run --videos with --tasks bindings")
        make_scenes(folder, p["sizes"], pretrain=pre, image_size=32, seed=seed, **SCENES)
        return {"dataset": "flickr30k", "root": folder, "pretrain": folder / "pretrain",
                "positives": folder / "positives.json", "pretrain_positives": folder / "pretrain" / "positives.json",
                "boxes": folder / "boxes.json"}
    even = [n - n % 2 for n in (*p["sizes"], *pre)]  # twins come in pairs
    if videos:
        make_videos(folder, tuple(even[:3]), frame_size=32, n_frames=VIDEO_FRAMES + 2, seed=seed)
        if pretrain:
            make_videos(folder / "pretrain", (even[3], even[4], 0), frame_size=32, n_frames=VIDEO_FRAMES + 2,
                        seed=seed + 10_007)
        return {"dataset": "msrvtt", "root": folder, "pretrain": folder / "pretrain"}
    make_images(folder, tuple(even[:3]), image_size=32, seed=seed, fmt="png")
    if pretrain:
        make_images(folder / "pretrain", (even[3], even[4], 0), image_size=32, seed=seed + 10_007, fmt="png")
    return {"dataset": "flickr30k", "root": folder, "pretrain": folder / "pretrain"}


def stage_config(where: dict, p: dict, seed: int, out: Path, *, stage: str, backbone: str = "tiny",
                 test: bool = True) -> dict:
    """The training config of a ``pretrain``, ``scratch`` or ``finetune`` stage (a dict for
    :func:`tokenflow.train.load_config`); ``test=False`` leaves the test split unread."""
    pretrain = stage == "pretrain"
    root = where["pretrain"] if pretrain else where["root"]
    positives = where.get("pretrain_positives" if pretrain else "positives")
    return {
        "data": {"dataset": where["dataset"], "root": str(root), "sampling": "item", "cache": True,
                 "num_frames": VIDEO_FRAMES, "video_tokens": "frames",
                 "positives": str(positives) if positives else None,
                 "test_split": "test" if test and not pretrain else None},
        "model": {"backbone": backbone, "aligner": None, "w_global": 1.0, "w_fine": 1.0},
        "optim": {"epochs": p["pretrain_epochs" if pretrain else "epochs"], "batch_size": p["batch_size"],
                  "lr": p["lr_finetune"] if stage == "finetune" else p["lr"], "lr_new": 1e-3,
                  "weight_decay": 0.05, "warmup": 0.05, "grad_clip": 1.0},
        "run": {"out": str(out), "seed": seed, "save_every": 100_000, "log_every": 50, "progress": False,
                "eval_every": 1},
    }


def digest(folder: Path) -> str:
    """sha256 over a model folder's files (names and bytes)."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def pretrain(where: dict, p: dict, seed: int, runs: Path, workers: int, log) -> Path:
    """The global-loss pretraining of one seed; returns its ``best/`` folder."""
    from ..train import load_config, train

    t0 = time.perf_counter()
    cfg = stage_config(where, p, seed, runs / "pretrain", stage="pretrain")
    cfg["data"]["workers"] = workers
    summary = train(load_config(None, data=cfg))
    pre_val = json.loads((runs / "pretrain" / "val_best.json").read_text())["metrics"]
    log(f"pretrained (global loss only) in {time.perf_counter() - t0:.0f} s: val t2v R@1 "
        f"{pre_val['t2v']['R@1']:.1f}, step {summary['best_step']} of {summary['steps']}")
    return runs / "pretrain" / "best"


@torch.no_grad()
def encode_test(model, where: dict) -> Encoded:
    """The test split of ``where`` encoded once by a trained model (a
    :class:`~tokenflow.models.RetrievalModel`), for :func:`pointing_of` and
    :func:`hard_negatives_of` to share."""
    from ..data import load_split
    from ..eval.evaluate import encode_split

    split = load_split(where["dataset"], where["root"], "test")
    return encode_split(model.backbone, split, num_frames=VIDEO_FRAMES)


@torch.no_grad()
def pointing_of(model, where: dict, encoded: Encoded | None = None) -> dict:
    """Pointing accuracy of a trained token-plan model (a :class:`~tokenflow.models.RetrievalModel`)
    over every test caption with its own image, under each reading of
    :data:`~tokenflow.eval.pointing.WEIGHTS` (t2v plan); ``encoded``: the test split already
    encoded by :func:`encode_test` (default: encoded here)."""
    from ..eval.pointing import WEIGHTS, Pointing, boxes_for, pointing, read_boxes

    enc = encoded if encoded is not None else encode_test(model, where)
    split = enc.split
    boxes = read_boxes(where["boxes"])
    aligner, backbone = model.aligner.eval(), model.backbone
    size = tuple(boxes["image_size"])
    total = {w: Pointing() for w in WEIGHTS}
    for k, text in enumerate(split.texts):
        i = split.text_item[k]
        ids, mask = backbone.tokenize([text])
        tokens = backbone.decode_tokens(ids[0][mask[0]].tolist())
        plan = aligner.plan(enc.vis[i], enc.txt[k])
        objs = boxes_for(boxes, split.item_paths[i])
        for w in WEIGHTS:
            total[w] = total[w].add(pointing(plan.t2v.float(), plan.c.float(), tokens, objs, backbone.patch_grid,
                                             size, weight=w))
    out = {w: {"accuracy": pt.accuracy, "hits": pt.hits, "words": pt.total} for w, pt in total.items()}
    return {**out, "chance": total["flow"].chance_accuracy, "direction": "t2v"}


def hard_negatives_of(model, where: dict, encoded: Encoded | None = None) -> dict | None:
    """Accuracy of a trained model's fused score on the test split's hard negatives (None without
    the file); ``encoded``: the test split already encoded by :func:`encode_test`, whose images
    are reused (default: the items' images are encoded here)."""
    from ..data import read_hard_negatives
    from ..eval import evaluate_compositional
    from ..eval.compositional import items_from_encoded

    path = Path(where["root"]) / "hard_negatives.json"
    if not path.is_file():
        return None
    items = read_hard_negatives(path, where["root"])
    shared = None if encoded is None else items_from_encoded(encoded, items, model.backbone)
    report = evaluate_compositional(model.backbone, items, model.aligner, w_global=model.w_global,
                                    w_fine=model.w_fine, num_frames=VIDEO_FRAMES, encoded=shared)
    fused = report["scores"]["fused"]
    return {"accuracy": fused["overall"]["accuracy"], "items": fused["overall"]["items"],
            "ties": fused["overall"]["ties"],
            "categories": {k: v["accuracy"] for k, v in fused["categories"].items()}}


def _logger(tag: str):
    def log(line: str) -> None:
        print(f"{tag} {line}", flush=True)
    return log


def prepare(task: str, seed: int, protocols: list[str], out: str, quick: bool, videos: bool, workers: int,
            threads: int | None = None) -> dict:
    """One (task, seed)'s data (with its pretraining split when ``finetune`` is among ``protocols``)
    and, for ``finetune``, its global pretraining; returns where things are (``pretrained``:
    the pretrained ``best/`` folder and its digest, or None)."""
    if threads:
        torch.set_num_threads(threads)
    p = budget(quick, videos)
    out = Path(out)
    finetune = "finetune" in protocols
    where = make_task_data(task, out / "data" / task / f"seed-{seed}", p, seed, videos, pretrain=finetune)
    if finetune:
        runs = out / "runs" / task / "finetune" / f"seed-{seed}"
        pre_dir = pretrain(where, p, seed, runs, workers, _logger(f"[{task} finetune seed {seed}]"))
        where["pretrained"] = (str(pre_dir), digest(pre_dir))
    return {k: str(v) if isinstance(v, Path) else v for k, v in where.items()}


def run_one(task: str, seed: int, protocol: str, spec: str, where: dict, out: str, quick: bool, videos: bool,
            workers: int, threads: int | None = None) -> dict:
    """Train and test one method (a run spec, ``tokenflow:lam=5``) of one (task, seed, protocol);
    returns its row: the plan's name in ``method``, the spec in ``spec``, R@K, and on scenes the
    pointing and hard-negative accuracy."""
    from ..align.registry import is_token_plan
    from ..models.retrieval import RetrievalModel
    from ..train.ablate import folder_name, parse_method, run_methods

    if threads:
        torch.set_num_threads(threads)
    log = _logger(f"[{task} {protocol} seed {seed}]")
    p = budget(quick, videos)
    runs = Path(out) / "runs" / task / protocol / f"seed-{seed}"
    pre = where.get("pretrained") if protocol == "finetune" else None
    base = stage_config(where, p, seed, runs, stage=protocol, backbone=pre[0] if pre else "tiny")
    base["data"]["workers"] = workers
    row = run_methods(base, [spec], runs, log=log)[0]
    name = parse_method(spec)[0]
    row.update({"task": task, "protocol": protocol, "seed": seed, "method": label(spec), "spec": spec})
    if pre:
        row.update({"pretrained_from": pre[0], "pretrained_sha256": pre[1]})
    model = RetrievalModel.from_pretrained(runs / folder_name(spec) / "best")  # loaded once for both
    enc = None
    if task == "scenes" and is_token_plan(name):
        enc = encode_test(model, where)  # the test images encoded once, for pointing and hard negatives
        row["pointing"] = pointing_of(model, where, enc)
        log(f"{name:<10} pointing (T*c) {row['pointing']['flow']['accuracy']:5.1f} % (chance "
            f"{row['pointing']['chance']:.1f} %)")
    hn = hard_negatives_of(model, where, enc)
    if hn is not None:
        row["hard_negatives"] = hn
    return row
