"""Helpers shared by the training tests and the scripts they run under torchrun (import them from
here, not from another test module)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from safetensors.torch import load_file

from tokenflow import Tokens, get_aligner
from tokenflow.data import load_split
from tokenflow.models import TinyCLIP, TinyConfig, WordTokenizer
from tokenflow.models.retrieval import RetrievalModel
from tokenflow.train import Batch

if TYPE_CHECKING:
    from tokenflow.distributed import DistInfo

ROOT = Path(__file__).resolve().parents[2]
TINY = {"image_size": 16, "width": 32, "layers": 1, "heads": 2, "embed_dim": 16}


def _config(tmp_path: Path, root: Path, out: str, **sections) -> Path:
    data = {"data": {"dataset": "flickr30k", "root": str(root), "test_split": None},
            "model": {"backbone": "tiny", "aligner": "tokenflow", "tiny": TINY},
            "distill": {"enabled": True, "queue": 6},
            "optim": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "lr_new": 1e-2, "warmup": 0},
            "run": {"out": str(tmp_path / out), "deterministic": True, "log_every": 1, "progress": False}}
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v}
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _log(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines() if ln.strip()]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _torchrun(args: list[str], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0",
           "--rdzv-backend=c10d", "--rdzv-endpoint=localhost:0", *args]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]


# -- a fixed tiny model and batch (test_objective, test_sigmoid_objective, the gradient check) ------
S = float(torch.tensor(math.log(3.0), dtype=torch.float32).double().exp())
TEXTS = ["a red circle left", "blue square right", "small green triangle", "red square", "a big blue circle"]


def _model(aligner="tokenflow", seed=0, logit_bias=None) -> RetrievalModel:
    """A float64 tiny model with logit scale ~3 (its exact value, a rounded log, is ``S``) and, for the
    sigmoid loss, ``logit_bias``."""
    torch.manual_seed(seed)
    tiny = TinyCLIP(TinyConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2, embed_dim=16),
                    WordTokenizer.build(TEXTS))
    return RetrievalModel(tiny, None if aligner is None else get_aligner(aligner), w_global=0.7, w_fine=1.3,
                          logit_scale=3.0, logit_bias=logit_bias).double()


def _batch(model, item_ids, seed=1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids, mask = model.backbone.tokenize([TEXTS[i % len(TEXTS)] for i in item_ids])
    return Batch(torch.randn(len(item_ids), 3, 16, 16, generator=g, dtype=torch.float64), None, ids, mask,
                 torch.tensor(item_ids))


def _pair_scores(model, vis: Tokens, txt: Tokens):
    """Per pair: global dot product and the plan's directional scores from ``plan()``."""
    vis, txt = vis.detach(), txt.detach()
    n, m = len(vis), len(txt)
    g = [[float(vis.pooled[i] @ txt.pooled[j]) for j in range(m)] for i in range(n)]
    if model.aligner is None:
        return g, g, g
    fv = [[0.0] * m for _ in range(n)]
    ft = [[0.0] * m for _ in range(n)]
    for i in range(n):
        for j in range(m):
            with torch.no_grad():
                p = model.aligner.plan(vis[i], txt[j])
            fv[i][j], ft[i][j] = float(p.score_v2t), float(p.score_t2v)
    return g, fv, ft


def grad_setup(kind: str = "tokenflow"):
    """A fixed model and batch for the gradient check (test_train.py and _ddp_grads.py).
    ``kind``: "tokenflow", or "mpa-cs" (set heads with their losses, plus the CS term)."""
    from tokenflow.align import aligner_for
    from tokenflow.train import Objective
    from tokenflow.train.config import CSConfig

    model = _model("tokenflow").float()
    cs = None
    if kind == "mpa-cs":
        torch.manual_seed(0)
        model.aligner = aligner_for("mpa", {"heads": 2}, dim=16)
        cs = CSConfig(weight=0.5)
    batch = _batch(model, [0, 1, 2, 3, 4, 0, 1, 2], seed=5)
    batch.pixels = batch.pixels.float()
    return model, Objective(model, cs=cs), batch


# -- sharded evaluation (test_sharded_eval.py and _sharded_eval.py) ------------------------------
def eval_cases(folder: Path) -> dict[str, tuple[RetrievalModel, object, dict]]:
    """name -> (model, split, settings), read from ``folder`` (test_sharded_eval.py and _sharded_eval.py).

    The validation split has 6 images (3 per process) and 5 captions each (12 and 13 texts per
    process); a broken image leaves the processes 2 and 3 rows; a one-item split leaves one
    process with no row and fewer texts than processes."""
    model = RetrievalModel.from_pretrained(folder / "model")
    only_global = RetrievalModel.from_pretrained(folder / "model")
    only_global.aligner = None
    val = load_split("flickr30k", folder / "data" / "images", "val")
    one = val.subset([0])
    return {
        "tokenflow": (model, val, {}),
        "global, folds of 2": (only_global, val, {"folds": 2}),
        "a broken image skipped": (model, load_split("flickr30k", folder / "broken", "val"), {"on_error": "skip"}),
        "one item, one text": (model, dataclasses.replace(one, texts=one.texts[:1], text_item=[0]), {}),
    }


def run_case(model: RetrievalModel, split, settings: dict, info: DistInfo) -> dict | None:
    from tokenflow.eval.sharded import evaluate_sharded

    return evaluate_sharded(model.backbone, split, model.aligner, info, w_global=model.w_global,
                            w_fine=model.w_fine, batch_size=4, **settings)
