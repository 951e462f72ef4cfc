"""``tokenflow train``: fine-tune a backbone with any plan, on one process or under torchrun.

Output folder (``run.out``)::

    config.yaml        the resolved configuration
    log.jsonl          one JSON object per logged step, validation run, skipped file
    last.safetensors   the resume checkpoint (whole training state, replaced atomically)
    best/              the model with the best validation score (a folder that
                       ``tokenflow evaluate --model`` and ``load_backbone`` read)
    val_best.json      validation report of that model
    test.json          test report of the best model, evaluated once at the end

The checkpoint is chosen on the validation split only; the test split is touched once, after
training, with the chosen checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..align import aligner_for
from ..data import load_split
from ..data.base import RetrievalSplit, collate_media
from ..eval.evaluate import evaluate, protocol_folds
from ..losses import FeatureQueue, ema_update
from ..models import TinyCLIP, WordTokenizer, load_backbone
from ..models.retrieval import RetrievalModel
from ..utils import write_text_atomic
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .data import PairDataset, StepBatchSampler, UnpairedPool, epoch_order
from .distributed import DistInfo, init_distributed
from .objective import Batch, Objective

__all__ = ["build_model", "lr_at", "param_groups", "train"]


# -- building blocks ---------------------------------------------------------------------------
def build_model(cfg: TrainConfig, train_split: RetrievalSplit) -> RetrievalModel:
    """Backbone (a local folder, or a new tiny encoder whose vocabulary comes from the training
    captions) + plan + fusion weights + logit scale."""
    m = cfg.model
    if m.backbone == "tiny":
        tok = WordTokenizer.build(train_split.texts, max_len=m.max_text_len)
        if len(tok) > m.tiny.vocab_size:
            raise ConfigError(f"model.tiny.vocab_size: the training captions have {len(tok)} distinct words and "
                              f"specials, more than {m.tiny.vocab_size}; raise it")
        backbone = TinyCLIP(m.tiny, tok)
    else:
        backbone = load_backbone(m.backbone)
        if not isinstance(backbone, TinyCLIP):  # a CLIP folder: respect the configured caption length
            backbone.max_text_len = min(m.max_text_len, backbone.max_text_len)
    aligner = None if m.aligner is None else aligner_for(m.aligner, m.hparams, dim=backbone.embed_dim)
    return RetrievalModel(backbone, aligner, w_global=m.w_global, w_fine=m.w_fine, logit_scale=m.logit_scale,
                          max_logit_scale=m.max_logit_scale)


def _with_positives(split: RetrievalSplit, positives: Path | None, name: str) -> RetrievalSplit:
    if positives is None:
        return split
    from ..data.positives import add_positives

    return add_positives(split, positives, name)


def _no_decay(name: str, p: nn.Parameter) -> bool:
    """open_clip's rule: no weight decay on gains and biases (1-d tensors, norms)."""
    return p.ndim < 2 or "bias" in name or "norm" in name


def param_groups(model: RetrievalModel, cfg: TrainConfig) -> list[dict]:
    """Backbone weights at ``optim.lr`` (decayed / not decayed: gains and biases), new
    parameters (logit scale, plan weights) at ``optim.lr_new`` without decay."""
    new = {id(p) for p in model.new_parameters()}
    decay, keep = [], []
    for name, p in model.backbone.named_parameters():
        if p.requires_grad and id(p) not in new:
            (keep if _no_decay(name, p) else decay).append(p)
    o = cfg.optim
    groups = [{"params": decay, "lr": o.lr, "weight_decay": o.weight_decay, "name": "backbone"},
              {"params": keep, "lr": o.lr, "weight_decay": 0.0, "name": "backbone_no_decay"},
              {"params": [p for p in model.new_parameters() if p.requires_grad], "lr": o.lr_new,
               "weight_decay": 0.0, "name": "new"}]
    for g in groups:
        g["peak_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


def lr_at(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based): linear warm-up
    over ``warmup`` steps, then a cosine down to ``min_ratio`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _select(report: dict, rule: str) -> float:
    t, v = report["metrics"]["t2v"], report["metrics"]["v2t"]
    if rule == "rsum":
        return sum(t[k] + v[k] for k in ("R@1", "R@5", "R@10"))
    if rule == "r1":
        return t["R@1"] + v["R@1"]
    return (t if rule == "t2v_r1" else v)["R@1"]


class _Log:
    """Appends JSON lines (rank 0 only); mirrors scalars to TensorBoard if it is installed."""

    def __init__(self, path: Path, enabled: bool, keep_until: int | None):
        self.path, self.enabled, self.tb = path, enabled, None
        if not enabled:
            return
        if keep_until is None:  # a new run starts a new log
            path.unlink(missing_ok=True)
        elif path.is_file():  # resuming: drop what the lost run logged after the checkpoint
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0)
                    <= keep_until]
            write_text_atomic(path, "".join(ln + "\n" for ln in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record.get("step", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _save_model_dir(model: RetrievalModel, folder: Path) -> None:
    """Write a model folder next to ``folder`` and swap it in: readers see the old or the new one."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def _recover_model_dir(folder: Path) -> None:
    """After a kill between the two renames of :func:`_save_model_dir`, put the old folder back."""
    if folder.exists():
        return
    olds = sorted(folder.parent.glob(f".{folder.name}.old-*"))
    if olds:
        os.replace(olds[-1], folder)


def _set_determinism(on: bool) -> None:
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


# -- the loop ----------------------------------------------------------------------------------
def train(cfg: TrainConfig, *, resume: bool = False, argv: list[str] | None = None) -> dict:
    """Run (or resume) the training that ``cfg`` describes; returns a summary dict."""
    info, device = init_distributed(cfg.run.device)
    try:
        return _train(cfg, info, device, resume, argv)
    finally:
        if info.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, info: DistInfo, device: torch.device, resume: bool, argv: list[str] | None) -> dict:
    out = cfg.run.out
    ckpt_path = out / "last.safetensors"
    if info.main:
        if resume and not ckpt_path.is_file():
            raise ConfigError(f"--resume: {ckpt_path} not found (nothing to resume in {out})")
        if not resume and ckpt_path.is_file():
            raise ConfigError(f"run.out: {out} already holds a run ({ckpt_path.name}); pass --resume to continue "
                              "it or choose another run.out")
        out.mkdir(parents=True, exist_ok=True)
        _recover_model_dir(out / "best")
        write_text_atomic(out / "config.yaml", cfg.to_yaml())
    _set_determinism(cfg.run.deterministic)
    torch.manual_seed(cfg.run.seed)

    d = cfg.data
    train_split = load_split(d.dataset, d.root, d.train_split, media=d.media)
    val_split = _with_positives(load_split(d.dataset, d.root, d.val_split, media=d.media), d.positives,
                                d.val_split)
    model = build_model(cfg, train_split).to(device)
    model.train()
    teacher = None
    queues = None
    if cfg.distill.enabled:
        teacher = copy.deepcopy(model).requires_grad_(False)
        queues = (FeatureQueue(cfg.distill.queue), FeatureQueue(cfg.distill.queue))
    objective = Objective(model, d.video_tokens, alpha=cfg.distill.alpha, cs=cfg.cs)
    runner: nn.Module = objective
    if info.enabled:
        runner = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=o.lr, betas=o.betas, eps=o.eps)

    if o.batch_size % info.world:
        raise ConfigError(f"optim.batch_size: {o.batch_size} does not split evenly over {info.world} processes")
    pairs_per_epoch = len(train_split.texts) if d.sampling == "caption" else len(set(train_split.text_item))
    micro_per_epoch = pairs_per_epoch // o.batch_size
    steps_per_epoch = micro_per_epoch // o.accum
    if steps_per_epoch == 0:
        raise ConfigError(f"optim.batch_size x optim.accum = {o.batch_size * o.accum} is more than the "
                          f"{pairs_per_epoch} training pairs per epoch of {train_split.name}")
    total = o.epochs * steps_per_epoch
    if cfg.run.max_steps:
        total = min(total, cfg.run.max_steps)
    warmup = int(o.warmup * total) if o.warmup < 1 else int(o.warmup)

    state = {"step": 0, "best": None, "best_step": None, "last_eval_step": None, "skipped": 0}
    if resume:
        state = load_checkpoint(ckpt_path, model=model, optimizer=optimizer, teacher=teacher, queues=queues)
        if info.main:
            print(f"resumed from {ckpt_path} at step {state['step']}", file=sys.stderr)
    log = _Log(out / "log.jsonl", info.main, state["step"] if resume else None)

    amp = o.amp == "bf16" or (o.amp == "auto" and device.type == "cuda")
    preprocess = model.backbone.preprocess
    dataset = PairDataset(train_split, preprocess, num_frames=d.num_frames, on_error=d.on_error, cache=d.cache)
    pool = None
    if cfg.cs.unpaired_media is not None or cfg.cs.unpaired_texts is not None:
        pool = UnpairedPool(cfg.cs.unpaired_media, cfg.cs.unpaired_texts, train_split.modality, preprocess,
                            d.num_frames, d.on_error)
    item_ids = torch.tensor(train_split.text_item)
    tokenize = model.backbone.tokenize
    show = cfg.run.progress and info.main and sys.stderr.isatty()

    def save_last() -> None:
        if info.main:
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, state=state, teacher=teacher, queues=queues)

    def validate(epoch: int) -> None:
        if info.main:
            was = model.training
            model.eval()
            report = evaluate(model.backbone, val_split, model.aligner, w_global=model.w_global,
                              w_fine=model.w_fine, batch_size=cfg.run.eval_batch_size, num_frames=d.num_frames,
                              video_tokens=d.video_tokens, on_error=d.on_error)
            model.train(was)
            score = _select(report, cfg.run.select)
            better = state["best"] is None or score > state["best"]
            if better:
                state["best"], state["best_step"] = score, state["step"]
                _save_model_dir(model, out / "best")
                report["step"], report["epoch"] = state["step"], epoch
                write_text_atomic(out / "val_best.json", json.dumps(report, indent=2) + "\n")
            log.write({"kind": "val", "step": state["step"], "epoch": epoch, cfg.run.select: round(score, 3),
                       "best": better, **{f"{dr}_{k}": v for dr in ("t2v", "v2t")
                                          for k, v in report["metrics"][dr].items()}})
        state["last_eval_step"] = state["step"]
        if info.enabled:
            torch.distributed.barrier()

    from tqdm import tqdm

    bar = tqdm(total=total, initial=state["step"], desc="train", unit="step", disable=not show, file=sys.stderr)
    t_start, seen, t_log = time.perf_counter(), 0, time.perf_counter()
    while state["step"] < total:
        epoch, within = divmod(state["step"], steps_per_epoch)
        order = epoch_order(train_split, cfg.run.seed, epoch, d.sampling)
        sampler = StepBatchSampler(order, o.batch_size, info.rank, info.world,
                                   start=within * o.accum)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=d.workers,
                                             collate_fn=collate_media,
                                             generator=torch.Generator().manual_seed(cfg.run.seed + epoch))
        it = iter(loader)
        for _ in range(within, steps_per_epoch):
            if state["step"] >= total:
                break
            lr_scale = lr_at(state["step"], total, warmup, o.min_lr_ratio)
            for g in optimizer.param_groups:
                g["lr"] = g["peak_lr"] * lr_scale
            stats_sum: dict[str, float] = {}
            for micro in range(o.accum):
                idx, pixels, fmask, bad = next(it)
                if info.enabled and d.on_error == "skip":  # rank 0 logs every process's skipped files
                    everyone: list = [None] * info.world
                    torch.distributed.all_gather_object(everyone, bad)
                    bad = [b for part in everyone for b in part]
                if bad:
                    state["skipped"] += len(bad)
                    log.write({"kind": "skipped", "step": state["step"],
                               "files": [{"path": p, "reason": r} for _, p, r in bad]})
                if not idx:
                    raise RuntimeError(f"a whole batch of {train_split.name} was unreadable ({len(bad)} files); "
                                       "see log.jsonl")
                ids, tmask = tokenize([train_split.texts[k] for k in idx])
                batch = Batch(pixels.to(device, non_blocking=True),
                              None if fmask is None else fmask.to(device), ids.to(device), tmask.to(device),
                              item_ids[idx].to(device))
                if pool is not None:  # unpaired extras: the CS term only
                    xp, xm, xt, xbad = pool.draw(cfg.cs.unpaired_batch, cfg.run.seed, state["step"] * o.accum + micro,
                                                 info.rank)
                    if xbad:
                        state["skipped"] += len(xbad)
                        log.write({"kind": "skipped", "step": state["step"], "unpaired": True,
                                   "files": [{"path": p, "reason": r} for _, p, r in xbad]})
                    if xp is not None:
                        batch.extra_pixels = xp.to(device)
                        batch.extra_frame_mask = None if xm is None else xm.to(device)
                    if xt is not None:
                        xi, xtm = tokenize(xt)
                        batch.extra_ids, batch.extra_text_mask = xi.to(device), xtm.to(device)
                sync = micro == o.accum - 1 or not info.enabled
                ctx = runner.no_sync() if not sync else contextlib.nullcontext()
                with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    res = runner(batch, info, teacher, queues)
                (res.loss / o.accum).backward()
                if queues is not None and res.enqueue is not None:
                    tv, tt, tids = res.enqueue
                    queues[0].push(tv, tids)
                    queues[1].push(tt, tids)
                for k, v in res.stats.items():
                    stats_sum[k] = stats_sum.get(k, 0.0) + v / o.accum
                seen += len(idx) * info.world
            if info.enabled:  # log the loss of the global batch, not of this process's rows
                keys = sorted(stats_sum)
                t = torch.tensor([stats_sum[k] for k in keys], dtype=torch.float64, device=device)
                torch.distributed.all_reduce(t)
                stats_sum = {k: float(v) / info.world for k, v in zip(keys, t.tolist(), strict=True)}
            if o.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.clamp_logit_scale()
            if teacher is not None:
                ema_update(teacher, model, cfg.distill.ema)
            state["step"] += 1
            bar.update(1)
            now = time.perf_counter()
            rate = seen / max(now - t_log, 1e-9)
            bar.set_postfix(loss=f"{stats_sum['loss']:.3f}", pairs_per_s=f"{rate:.0f}")
            if state["step"] % cfg.run.log_every == 0 or state["step"] == total:
                log.write({"kind": "train", "step": state["step"], "epoch": epoch, **stats_sum,
                           "logit_scale": float(model.scale().detach()), "lr": optimizer.param_groups[0]["lr"],
                           "pairs_per_s": round(rate, 2)})
                seen, t_log = 0, now
            end_of_epoch = (state["step"] % steps_per_epoch == 0)
            if end_of_epoch and ((epoch + 1) % cfg.run.eval_every == 0 or state["step"] == total):
                validate(epoch)
            if state["step"] % cfg.run.save_every == 0 or end_of_epoch or state["step"] == total:
                save_last()
    bar.close()
    if state["last_eval_step"] != state["step"]:
        validate(state["step"] // steps_per_epoch)
        save_last()
    summary = {"steps": state["step"], "best_step": state["best_step"], cfg.run.select: state["best"],
               "skipped_files": state["skipped"], "seconds": round(time.perf_counter() - t_start, 1)}
    if info.main and d.test_split:
        test_split = _with_positives(load_split(d.dataset, d.root, d.test_split, media=d.media), d.positives,
                                     d.test_split)
        best = RetrievalModel.from_pretrained(out / "best").to(device)
        report = evaluate(best.backbone, test_split, best.aligner, w_global=best.w_global, w_fine=best.w_fine,
                          batch_size=cfg.run.eval_batch_size, num_frames=d.num_frames, video_tokens=d.video_tokens,
                          on_error=d.on_error, folds=protocol_folds(d.dataset, d.test_split, len(test_split)))
        report["checkpoint"] = {"folder": str(out / "best"), "step": state["best_step"],
                                "chosen_on": f"{d.val_split} ({cfg.run.select})"}
        report["command"] = ["tokenflow", *(argv or [])]
        write_text_atomic(out / "test.json", json.dumps(report, indent=2) + "\n")
        summary["test"] = report["metrics"]
    if info.main:
        log.write({"kind": "done", "step": state["step"], **{k: v for k, v in summary.items() if k != "test"}})
    log.close()
    if info.enabled:  # rank 0 tests alone: the others wait rather than tear the group down under it
        torch.distributed.barrier()
    return summary

