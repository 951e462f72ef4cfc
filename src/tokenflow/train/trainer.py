"""One training run: the pieces it is built from and the :class:`Trainer` that runs it.

Output folder (``run.out``)::

    config.yaml        the resolved configuration
    log.jsonl          one JSON object per logged step, validation run, skipped file
    last.safetensors   the resume checkpoint (whole training state, replaced atomically, with the
                       resolved configuration, the tokenflow version and the date)
    .tokenflow.lock    the folder's lock, held by the process that writes it (its pid inside)
    best/              the model with the best validation score (a folder that
                       ``tokenflow evaluate --model`` and ``load_backbone`` read)
    val_best.json      validation report of that model
    test.json          test report of the best model, evaluated once at the end

The checkpoint is chosen on the validation split only; the test split is touched once, after
training, with the chosen checkpoint. Both evaluations are shared by every process
(:func:`evaluate_sharded`), so that no process idles at a barrier for a whole evaluation (NCCL's
collective timeout); rank 0 alone logs and writes files.

``--resume`` refuses a configuration that would change the result (see
:mod:`tokenflow.train.runfolder`) before anything in the folder is written, and a finished run
says so and does nothing. A non-finite loss or gradient norm stops the run at that step with
:class:`~tokenflow.errors.Diverged`; the last checkpoint and ``best/`` stay those of good steps.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..align import Aligner, aligner_for
from ..data import load_split
from ..data.base import OnError, RetrievalSplit, collate_media
from ..data.frame_cache import with_frame_cache
from ..errors import Diverged, UserError
from ..eval.evaluate import encode_items, encode_texts, evaluate, protocol_folds, retrieval_report, similarity
from ..losses import FeatureQueue, ema_update
from ..models import TinyCLIP, WordTokenizer, load_backbone
from ..models.base import DualEncoder, VideoTokens
from ..models.retrieval import RetrievalModel
from ..tokens import Tokens
from ..utils import check_writable, folder_lock, write_text_atomic
from .checkpoint import (load_checkpoint, mark_finished, read_checkpoint_info, rng_state, save_checkpoint,
                         set_rng_state)
from .config import ConfigError, TrainConfig
from .data import PairDataset, StepBatchSampler, UnpairedPool, epoch_order
from .distributed import DistInfo, all_gather_objects, all_gather_rows, all_gather_tokens, gather_sizes, shard
from .objective import Batch, Objective, initial_logits
from .runfolder import (config_changes, format_changes, kill_point, read_log, recover_model_dir, remove_leftovers,
                        save_model_dir)

#: Seconds between the plain progress lines written when stderr is not a terminal.
PLAIN_PROGRESS_S = 30.0

__all__ = ["Trainer", "build_model", "deterministic_algorithms", "evaluate_sharded", "lr_at", "param_groups"]


# -- building blocks ---------------------------------------------------------------------------
def _resolved(config: dict) -> dict:
    """A saved configuration in this version's resolved form (keys added since, with their
    defaults; renamed keys moved), so that only real changes count on ``--resume``; as saved when
    this version cannot read it."""
    try:
        return json.loads(json.dumps(TrainConfig.model_validate(config).model_dump(mode="json")))
    except Exception:  # noqa: BLE001 (any validation failure: compare the raw form, which refuses it)
        return config


def build_model(cfg: TrainConfig, train_split: RetrievalSplit) -> RetrievalModel:
    """Backbone (a local folder, or a new tiny encoder whose vocabulary comes from the training
    captions) + plan + fusion weights + logit scale (sigmoid: the cap rises to the starting scale)."""
    m = cfg.model
    if m.backbone == "tiny":
        tok = WordTokenizer.build(train_split.texts, max_len=cfg.data.max_words)
        if len(tok) > m.tiny.vocab_size:
            raise ConfigError(f"model.tiny.vocab_size: the training captions have {len(tok)} distinct words and "
                              f"specials, more than {m.tiny.vocab_size}; raise it")
        backbone = TinyCLIP(m.tiny, tok)
    else:
        backbone = load_backbone(m.backbone)
        try:  # data.max_words exactly, up to the backbone's positional limit (77 for CLIP)
            backbone.set_max_text_len(cfg.data.max_words)
        except ValueError as e:
            raise ConfigError(f"data.max_words: {e}") from None
    aligner = None if m.aligner is None else aligner_for(m.aligner, m.hparams, dim=backbone.embed_dim)
    scale, bias = initial_logits(cfg.loss.kind, backbone, m.logit_scale, cfg.loss.bias)
    cap = m.max_logit_scale if bias is None else max(m.max_logit_scale, scale)  # SigLIP's own t (~110-118) stays
    return RetrievalModel(backbone, aligner, w_global=m.w_global, w_fine=m.w_fine, logit_scale=scale,
                          max_logit_scale=cap, logit_bias=bias)


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


@contextlib.contextmanager
def deterministic_algorithms(on: bool = True) -> Iterator[None]:
    """Inside the block (when ``on``): ``torch.use_deterministic_algorithms(True)`` and cuBLAS's
    fixed workspace (``CUBLAS_WORKSPACE_CONFIG``). The process's previous settings come back
    when the block ends, also on an error, so later runs in the process do not inherit them."""
    if not on:
        yield
        return
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


# -- evaluation shared by every process ----------------------------------------------------------
@torch.no_grad()
def evaluate_sharded(backbone: DualEncoder, split: RetrievalSplit, aligner: Aligner | None, info: DistInfo, *,
                     w_global: float = 1.0, w_fine: float = 1.0, batch_size: int = 64, num_frames: int = 12,
                     video_tokens: VideoTokens = "frames", on_error: OnError = "fail",
                     folds: int | None = None) -> dict | None:
    """:func:`~tokenflow.eval.evaluate.evaluate` with every process taking part: the report on
    rank 0, ``None`` on the others (one process: ``evaluate`` itself).

    Each process encodes a contiguous share of the visual items and of the texts; the text
    features are gathered, each process scores its own items' rows against every text, and the
    rows of both similarities ([N_visual, N_text]) are gathered for rank 0 to measure.
    """
    kw = {"w_global": w_global, "w_fine": w_fine, "batch_size": batch_size, "num_frames": num_frames,
          "video_tokens": video_tokens, "on_error": on_error}
    if not info.enabled:
        return evaluate(backbone, split, aligner, folds=folds, **kw)
    t0 = time.perf_counter()
    vis, kept, skipped = encode_items(backbone, split, shard(len(split), info), batch_size=batch_size,
                                      num_frames=num_frames, video_tokens=video_tokens, on_error=on_error)
    parts = all_gather_objects((kept, skipped), info)
    kept_all, skipped_all = [i for k, _ in parts for i in k], [f for _, s in parts for f in s]
    if not kept_all:
        raise UserError(f"{split.name}: none of its {len(split)} {split.modality}s could be read (all skipped); "
                        f"first: {skipped_all[0]['path']}: {skipped_all[0]['reason']}")
    evaluated = split.subset(kept_all) if skipped_all else split
    txt = _texts_everywhere(backbone, evaluated.texts, info, batch_size)
    t1 = time.perf_counter()
    device = backbone.device
    rows = _score_rows(vis, txt, aligner, w_global, w_fine, device)
    sim = all_gather_rows(rows.to(device), info, gather_sizes(len(rows), info, device)).cpu()
    if not info.main:
        return None
    t2 = time.perf_counter()
    timings = {"encode_s": round(t1 - t0, 3), "score_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3)}
    return retrieval_report(backbone, split, aligner, evaluated, sim[:, 0], sim[:, 1], folds=folds,
                            skipped=skipped_all, timings=timings, **kw)


def _texts_everywhere(backbone: DualEncoder, texts: Sequence[str], info: DistInfo, batch_size: int) -> Tokens:
    """Every text's features on every process, each process encoding a contiguous share."""
    if len(texts) < info.world:  # a share would be empty: each process encodes the few texts itself
        return encode_texts(backbone, texts, batch_size=batch_size)
    mine = shard(len(texts), info)
    tok = encode_texts(backbone, texts[mine.start : mine.stop], batch_size=batch_size).to(backbone.device)
    return all_gather_tokens(tok, info, gather_sizes(len(tok), info, tok.device), grad=False).to("cpu")


def _score_rows(vis: Tokens | None, txt: Tokens, aligner: Aligner | None, w_global: float, w_fine: float,
                device: torch.device) -> Tensor:
    """This process's rows of ``(sim_v2t, sim_t2v)`` stacked: [n_local, 2, N_text], fp32 on the CPU."""
    if vis is None:  # no readable item in this process's share
        return torch.zeros(0, 2, len(txt))
    v2t, t2v = similarity(vis, txt, aligner, w_global=w_global, w_fine=w_fine, device=device)
    return torch.stack([v2t, t2v], 1)


def _load_everywhere(folder: Path, info: DistInfo, device: torch.device) -> RetrievalModel:
    """Rank 0's model folder, loaded by every process; the files travel over the process group,
    so the processes need no shared disk."""
    if info.enabled:
        files = [{p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
                  if p.is_file()} if info.main else None]
        torch.distributed.broadcast_object_list(files, src=0)
        if not info.main:
            with tempfile.TemporaryDirectory() as tmp:
                for name, data in files[0].items():
                    (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                    (Path(tmp) / name).write_bytes(data)
                return RetrievalModel.from_pretrained(tmp).to(device)
    return RetrievalModel.from_pretrained(folder).to(device)


# -- files of a run ----------------------------------------------------------------------------
def _with_positives(split: RetrievalSplit, positives: Path | None, name: str) -> RetrievalSplit:
    if positives is None:
        return split
    from ..data.positives import add_positives

    return add_positives(split, positives, name)


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
        elif path.is_file():  # resuming: drop what the lost run logged after the checkpoint, and its end
            kept = [r for r in read_log(path) if r.get("step", 0) <= keep_until and r.get("kind") != "done"]
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        with open(self.path, "a") as f:
            f.write(line[: len(line) // 2])
            kill_point("log-line", flush=f)  # a test's kill tears the line here
            f.write(line[len(line) // 2:])
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record.get("step", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


_save_model_dir, _recover_model_dir = save_model_dir, recover_model_dir  # the swap with a journal: runfolder.py


def _grad_norm(model: nn.Module) -> Tensor:
    """The L2 norm of all gradients together (what ``clip_grad_norm_`` measures), without clipping."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def _finite(x: float) -> float | str:
    """A number for JSON: non-finite ones as text (``"nan"``), which strict JSON readers accept."""
    return x if math.isfinite(x) else str(x)


# -- the run -----------------------------------------------------------------------------------
class Trainer:
    """One run of ``tokenflow train`` on this process: ``Trainer(cfg, info, device).run()``.

    :meth:`setup` builds everything in the order that fixes the random stream (so that a resumed
    run is bit-identical), :meth:`step` is one optimizer step, :meth:`validate` and :meth:`test`
    are the two evaluations, :meth:`run` is the whole schedule. Rank 0 alone writes files.
    """

    def __init__(self, cfg: TrainConfig, info: DistInfo, device: torch.device, *, resume: bool = False,
                 argv: list[str] | None = None, force_config: bool = False):
        self.cfg, self.info, self.device, self.resume, self.argv = cfg, info, device, resume, argv
        self.force_config = force_config
        self.out = cfg.run.out
        self.ckpt_path = self.out / "last.safetensors"
        self.log: _Log | None = None
        self.changes: dict = {}  # configuration keys changed on --resume --force-config
        self.config_json = json.loads(json.dumps(cfg.model_dump(mode="json")))
        self.held = contextlib.ExitStack()  # the run folder's lock, from _prepare_out to the end of run()

    def run(self) -> dict:
        """Set up, train to the last step, test the chosen checkpoint; returns the summary.

        ``run.deterministic`` holds for this run only: the process's previous settings come back
        when it ends, also on an error.
        """
        with deterministic_algorithms(self.cfg.run.deterministic), self.held:
            try:
                if self._check_resume():
                    return self._already_finished()
                self.setup()
                self.fit()
                return self.finish()
            finally:
                if self.log is not None:
                    self.log.close()

    # -- setup --------------------------------------------------------------------------------
    def setup(self) -> None:
        """Output folder, model, optimizer, schedule, state (the checkpoint's when resuming), data."""
        self._prepare_out()
        torch.manual_seed(self.cfg.run.seed)
        self._build_model()
        self._plan_steps()
        self._restore()
        self._build_data()

    def _check_resume(self) -> bool:
        """Before anything is written: the run folder fits the request, and on ``--resume`` the
        configuration changes nothing that alters the result (unless ``force_config``). Returns
        whether the checkpoint's run is finished."""
        out, ckpt = self.out, self.ckpt_path
        if self.resume and not ckpt.is_file():
            raise ConfigError(f"--resume: {ckpt} not found (nothing to resume in {out})")
        if not self.resume and ckpt.is_file():
            raise ConfigError(f"run.out: {out} already holds a run ({ckpt.name}); pass --resume to continue "
                              "it or choose another run.out")
        if not self.resume:
            return False
        saved = read_checkpoint_info(ckpt)
        self.saved_state = saved["state"]
        if saved["state"].get("finished") or self._done_logged(saved["state"]["step"]):
            return True
        if saved["config"] is None:
            if self.info.main:
                print(f"tokenflow train: warning: {ckpt} was written by a tokenflow that did not store the "
                      "configuration; the resumed configuration cannot be checked against it", file=sys.stderr)
            return False
        self.changes = config_changes(_resolved(saved["config"]), self.config_json)
        if self.changes and not self.force_config:
            raise ConfigError(f"--resume: the configuration differs from the one {ckpt} was trained with "
                              f"(tokenflow {saved['tokenflow_version']}, {saved['date']}):\n"
                              f"{format_changes(self.changes)}\nthese keys change the result: set them back, "
                              "start a new run.out, or pass --force-config to resume with them anyway")
        return False

    def _done_logged(self, step: int) -> bool:
        """Whether ``log.jsonl`` records the end of the run at ``step`` (checkpoints written before
        tokenflow marked finished runs, or a kill between that record and the mark)."""
        log = self.out / "log.jsonl"
        return log.is_file() and any(r.get("kind") == "done" and r.get("step") == step for r in read_log(log))

    def _already_finished(self) -> dict:
        """``--resume`` of a finished run: nothing is evaluated or written again."""
        s = self.saved_state
        if self.info.main and not s.get("finished"):  # killed between the done record and the mark
            with folder_lock(self.out):
                mark_finished(self.ckpt_path)
        if self.info.main:
            print(f"tokenflow train: the run in {self.out} is finished (step {s['step']}); nothing to resume. "
                  f"Its test report: {self.out / 'test.json'}", file=sys.stderr)
        return {"already_finished": True, "steps": s["step"], "best_step": s["best_step"],
                self.cfg.run.select: s["best"], "skipped_files": s.get("skipped", 0)}

    def _prepare_out(self) -> None:
        """Rank 0: the folder writable, locked for this process, cleared of a killed run's
        temporary files (``best/`` recovered), and its ``config.yaml``."""
        if not self.info.main:
            return
        out = self.out
        check_writable(out, "run.out")
        out.mkdir(parents=True, exist_ok=True)
        self.held.enter_context(folder_lock(out))
        if self.ckpt_path.is_file() != self.resume:  # another process started or ended a run meanwhile
            self._check_resume()
        remove_leftovers(out)
        write_text_atomic(out / "config.yaml", self.cfg.to_yaml())

    def _build_model(self) -> None:
        """Splits, model, EMA teacher and queues (distillation), objective (DDP-wrapped), AdamW."""
        cfg, d = self.cfg, self.cfg.data
        self.train_split = load_split(d.dataset, d.root, d.train_split, media=d.media)
        self.val_split = _with_positives(load_split(d.dataset, d.root, d.val_split, media=d.media), d.positives,
                                         d.val_split)
        # read now, so that a missing or empty test split stops the run before training, not after
        self.test_split = None if not d.test_split else _with_positives(
            load_split(d.dataset, d.root, d.test_split, media=d.media), d.positives, d.test_split)
        self.model = build_model(cfg, self.train_split).to(self.device)
        bb = self.model.backbone
        self.train_split, self.val_split, self.test_split = (
            with_frame_cache(s, d.frame_cache, d.num_frames, bb.preprocess, bb.image_size)
            for s in (self.train_split, self.val_split, self.test_split))
        self.model.train()
        self.teacher: RetrievalModel | None = None
        self.queues: tuple[FeatureQueue, FeatureQueue] | None = None
        if cfg.distill.enabled:
            self.teacher = copy.deepcopy(self.model).requires_grad_(False)
            self.queues = (FeatureQueue(cfg.distill.queue), FeatureQueue(cfg.distill.queue))
        objective = Objective(self.model, d.video_tokens, alpha=cfg.distill.alpha, cs=cfg.cs, loss=cfg.loss.kind)
        self.runner: nn.Module = objective
        if self.info.enabled:
            self.runner = nn.parallel.DistributedDataParallel(
                objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg), lr=o.lr, betas=o.betas, eps=o.eps)

    def _plan_steps(self) -> None:
        """Optimizer steps per epoch, in all (``total``) and of warm-up."""
        o, d, split = self.cfg.optim, self.cfg.data, self.train_split
        if o.batch_size % self.info.world:
            raise ConfigError(f"optim.batch_size: {o.batch_size} does not split evenly over {self.info.world} "
                              "processes")
        pairs_per_epoch = len(split.texts) if d.sampling == "caption" else len(set(split.text_item))
        micro_per_epoch = pairs_per_epoch // o.batch_size
        self.steps_per_epoch = micro_per_epoch // o.accum
        if self.steps_per_epoch == 0:
            raise ConfigError(f"optim.batch_size x optim.accum = {o.batch_size * o.accum} is more than the "
                              f"{pairs_per_epoch} training pairs per epoch of {split.name}")
        total = o.epochs * self.steps_per_epoch
        self.total = min(total, self.cfg.run.max_steps) if self.cfg.run.max_steps else total
        self.warmup = int(o.warmup * self.total) if o.warmup < 1 else int(o.warmup)

    def _restore(self) -> None:
        """The run's state and log: fresh, or the checkpoint's (weights, optimizer, teacher, queues, RNG)."""
        self.state = {"step": 0, "best": None, "best_step": None, "last_eval_step": None, "skipped": 0}
        if self.resume:
            configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
            self.state = load_checkpoint(self.ckpt_path, model=self.model, optimizer=self.optimizer,
                                         teacher=self.teacher, queues=self.queues)
            for g, hyper in zip(self.optimizer.param_groups, configured, strict=True):
                g.update(hyper)  # the configuration's rates and decay (the same unless --force-config)
            if self.info.main:
                print(f"resumed from {self.ckpt_path} at step {self.state['step']}", file=sys.stderr)
        self.log = _Log(self.out / "log.jsonl", self.info.main, self.state["step"] if self.resume else None)
        if self.changes:
            if self.info.main:
                print(f"tokenflow train: --force-config: resuming with changed keys\n"
                      f"{format_changes(self.changes)}", file=sys.stderr)
            self.log.write({"kind": "config_override", "step": self.state["step"],
                            "changes": {k: {"old": a, "new": b} for k, (a, b) in self.changes.items()}})

    def _build_data(self) -> None:
        """The training pairs, the unpaired pool of the CS term, the mixed-precision choice."""
        cfg, d = self.cfg, self.cfg.data
        self.amp = cfg.optim.amp == "bf16" or (cfg.optim.amp == "auto" and self.device.type == "cuda")
        preprocess = self.model.backbone.preprocess
        self.dataset = PairDataset(self.train_split, preprocess, num_frames=d.num_frames, on_error=d.on_error,
                                   cache=d.cache)
        self.pool = None
        if cfg.cs.unpaired_media is not None or cfg.cs.unpaired_texts is not None:
            self.pool = UnpairedPool(cfg.cs.unpaired_media, cfg.cs.unpaired_texts, self.train_split.modality,
                                     preprocess, d.num_frames, d.on_error)
        self.item_ids = torch.tensor(self.train_split.text_item)

    # -- training -----------------------------------------------------------------------------
    def fit(self) -> None:
        """Optimizer steps up to ``total``, validating and saving on schedule; a last validation
        when the last step had none."""
        from tqdm import tqdm

        show = self.cfg.run.progress and self.info.main and sys.stderr.isatty()
        self.plain = self.cfg.run.progress and self.info.main and not show  # a log file, not a terminal
        self.bar = tqdm(total=self.total, initial=self.state["step"], desc="train", unit="step", disable=not show,
                        file=sys.stderr)
        self.t_start, self.seen, self.t_log = time.perf_counter(), 0, time.perf_counter()
        self.t_plain, self.first_step = self.t_start, self.state["step"]
        while self.state["step"] < self.total:
            epoch, within = divmod(self.state["step"], self.steps_per_epoch)
            batches = iter(self._loader(epoch, within))
            for _ in range(within, self.steps_per_epoch):
                if self.state["step"] >= self.total:
                    break
                stats = self.step(batches)
                kill_point("step")
                self._after_step(epoch, stats)
        self.bar.close()
        if self.state["last_eval_step"] != self.state["step"]:
            self.validate(self.state["step"] // self.steps_per_epoch)
            self.save_last()

    def _loader(self, epoch: int, within: int) -> torch.utils.data.DataLoader:
        """This process's batches of ``epoch`` from its optimizer step ``within`` on; the order is
        a function of the seed and the epoch, so a resumed run reads the same batches."""
        cfg, d, o = self.cfg, self.cfg.data, self.cfg.optim
        order = epoch_order(self.train_split, cfg.run.seed, epoch, d.sampling)
        sampler = StepBatchSampler(order, o.batch_size, self.info.rank, self.info.world, start=within * o.accum)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, num_workers=d.workers,
                                           collate_fn=collate_media,
                                           generator=torch.Generator().manual_seed(cfg.run.seed + epoch))

    def step(self, batches: Iterator) -> dict[str, float]:
        """One optimizer step over ``optim.accum`` micro-batches from ``batches``; returns the loss
        terms averaged over the micro-batches and the processes (those of the global batch)."""
        o, state = self.cfg.optim, self.state
        scale = lr_at(state["step"], self.total, self.warmup, o.min_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = g["peak_lr"] * scale
        stats: dict[str, float] = {}
        for micro in range(o.accum):
            batch = self._micro_batch(next(batches), micro)
            for k, v in self._forward_backward(batch, last=micro == o.accum - 1).items():
                stats[k] = stats.get(k, 0.0) + v / o.accum
            self.seen += len(batch.item_ids) * self.info.world
        stats = self._global_mean(stats)
        if o.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        else:
            norm = _grad_norm(self.model)
        self._stop_if_diverged(stats["loss"], float(norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.clamp_logit_scale()
        if self.teacher is not None:
            ema_update(self.teacher, self.model, self.cfg.distill.ema)
        state["step"] += 1
        return stats

    def _stop_if_diverged(self, loss: float, grad_norm: float) -> None:
        """A non-finite loss or gradient norm stops the run before the optimizer step, so that
        nothing saved afterwards holds it; the log gets the reason (every process raises alike:
        both numbers are global)."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        step, lr = self.state["step"] + 1, self.optimizer.param_groups[0]["lr"]
        msg = (f"diverged at step {step} (loss {loss:.4g}, grad norm {grad_norm:.4g}, lr {lr:.3g}); "
               f"{self.ckpt_path.name} and best/ keep the last good state. Lower optim.lr / optim.lr_new or set "
               "optim.grad_clip, then start a new run.out (or --resume --force-config)")
        self.log.write({"kind": "diverged", "step": step, "loss": _finite(loss), "grad_norm": _finite(grad_norm),
                        "lr": lr, "message": msg})
        raise Diverged(msg)

    def _micro_batch(self, loaded: tuple, micro: int) -> Batch:
        """A loader batch on the device, with its texts tokenized and the unpaired extras added;
        skipped files are counted, and logged (rank 0) for every process."""
        idx, pixels, fmask, bad = loaded
        if self.info.enabled and self.cfg.data.on_error == "skip":
            bad = [b for part in all_gather_objects(bad, self.info) for b in part]
        self._log_skipped(bad)
        if not idx:
            raise RuntimeError(f"a whole batch of {self.train_split.name} was unreadable ({len(bad)} files); "
                               "see log.jsonl")
        dev = self.device
        ids, tmask = self.model.backbone.tokenize([self.train_split.texts[k] for k in idx])
        batch = Batch(pixels.to(dev, non_blocking=True), None if fmask is None else fmask.to(dev), ids.to(dev),
                      tmask.to(dev), self.item_ids[idx].to(dev))
        if self.pool is not None:
            self._add_unpaired(batch, micro)
        return batch

    def _add_unpaired(self, batch: Batch, micro: int) -> None:
        """Unpaired extras for the CS term only, drawn as a function of (seed, micro-step, rank)."""
        cs, dev = self.cfg.cs, self.device
        xp, xm, xt, xbad = self.pool.draw(cs.unpaired_batch, self.cfg.run.seed,
                                          self.state["step"] * self.cfg.optim.accum + micro, self.info.rank)
        self._log_skipped(xbad, unpaired=True)
        if xp is not None:
            batch.extra_pixels = xp.to(dev)
            batch.extra_frame_mask = None if xm is None else xm.to(dev)
        if xt is not None:
            xi, xtm = self.model.backbone.tokenize(xt)
            batch.extra_ids, batch.extra_text_mask = xi.to(dev), xtm.to(dev)

    def _log_skipped(self, bad: list, **extra) -> None:
        """Log every skip; ``state["skipped"]`` counts distinct files (a broken file is met every epoch)."""
        if bad:
            seen = self.state.setdefault("skipped_paths", [])
            seen.extend(sorted({p for _, p, _ in bad} - set(seen)))
            self.state["skipped"] = len(seen)
            self.log.write({"kind": "skipped", "step": self.state["step"], **extra,
                            "files": [{"path": p, "reason": r} for _, p, r in bad]})

    def _forward_backward(self, batch: Batch, last: bool) -> dict[str, float]:
        """Loss and gradients of one micro-batch (DDP averages gradients after the ``last`` one
        only); the teacher's features join the queues after the backward pass."""
        sync = last or not self.info.enabled
        ctx = self.runner.no_sync() if not sync else contextlib.nullcontext()
        with ctx, torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            res = self.runner(batch, self.info, self.teacher, self.queues)
        (res.loss / self.cfg.optim.accum).backward()
        if self.queues is not None and res.enqueue is not None:
            tv, tt, tids = res.enqueue
            self.queues[0].push(tv, tids)
            self.queues[1].push(tt, tids)
        return res.stats

    def _global_mean(self, stats: dict[str, float]) -> dict[str, float]:
        """The mean over processes: the loss of the global batch, not of this process's rows."""
        if not self.info.enabled:
            return stats
        keys = sorted(stats)
        t = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.info.world for k, v in zip(keys, t.tolist(), strict=True)}

    def _after_step(self, epoch: int, stats: dict[str, float]) -> None:
        """Progress bar and train log line; validation at the end of every ``run.eval_every``-th
        epoch and of the run; the resume checkpoint every ``run.save_every`` steps and epochs."""
        run, step, total = self.cfg.run, self.state["step"], self.total
        self.bar.update(1)
        now = time.perf_counter()
        rate = self.seen / max(now - self.t_log, 1e-9)
        self.bar.set_postfix(loss=f"{stats['loss']:.3f}", pairs_per_s=f"{rate:.0f}")
        if self.plain and (now - self.t_plain >= PLAIN_PROGRESS_S or step == total):
            self._plain_progress(stats["loss"], now)
        if step % run.log_every == 0 or step == total:
            self.log.write({"kind": "train", "step": step, "epoch": epoch, **stats,
                            "logit_scale": float(self.model.scale().detach()),
                            **({} if self.model.logit_bias is None else
                               {"logit_bias": float(self.model.logit_bias.detach())}),
                            "lr": self.optimizer.param_groups[0]["lr"], "pairs_per_s": round(rate, 2)})
            self.seen, self.t_log = 0, now
        end_of_epoch = step % self.steps_per_epoch == 0
        if end_of_epoch and ((epoch + 1) % run.eval_every == 0 or step == total):
            self.validate(epoch)
        if step % run.save_every == 0 or end_of_epoch or step == total:
            self.save_last()

    def _plain_progress(self, loss: float, now: float) -> None:
        """One line to stderr (a log file, not a terminal): step, loss, speed, time left."""
        step, total = self.state["step"], self.total
        per_step = (now - self.t_start) / max(1, step - self.first_step)
        left = int(per_step * (total - step))
        print(f"train: step {step}/{total}  loss {loss:.4f}  {per_step:.2f} s/step  ETA "
              f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}", file=sys.stderr, flush=True)
        self.t_plain = now

    def save_last(self) -> None:
        """The resume checkpoint (rank 0): weights, optimizer, teacher, queues, state, RNG."""
        if self.info.main:
            save_checkpoint(self.ckpt_path, model=self.model, optimizer=self.optimizer, state=self.state,
                            teacher=self.teacher, queues=self.queues, config=self.config_json)

    # -- evaluation ---------------------------------------------------------------------------
    def _eval_settings(self) -> dict:
        d = self.cfg.data
        return {"batch_size": self.cfg.run.eval_batch_size, "num_frames": d.num_frames,
                "video_tokens": d.video_tokens, "on_error": d.on_error}

    def validate(self, epoch: int) -> None:
        """Score the validation split (every process its share); rank 0 keeps the model when it is
        the best so far and logs the scores."""
        was = self.model.training
        self.model.eval()
        report = evaluate_sharded(self.model.backbone, self.val_split, self.model.aligner, self.info,
                                  w_global=self.model.w_global, w_fine=self.model.w_fine, **self._eval_settings())
        self.model.train(was)
        if report is not None:
            self._keep_if_best(report, epoch)
        self.state["last_eval_step"] = self.state["step"]
        if self.info.enabled:  # nobody moves on while rank 0 writes best/
            torch.distributed.barrier()

    def _keep_if_best(self, report: dict, epoch: int) -> None:
        """Rank 0: ``best/`` and ``val_best.json`` when the score beats the best so far; a log line."""
        rule, state = self.cfg.run.select, self.state
        score = _select(report, rule)
        better = state["best"] is None or score > state["best"]
        if better:
            state["best"], state["best_step"] = score, state["step"]
            _save_model_dir(self.model, self.out / "best")
            kill_point("val-best")
            report["step"], report["epoch"] = state["step"], epoch
            write_text_atomic(self.out / "val_best.json", json.dumps(report, indent=2) + "\n")
        self.log.write({"kind": "val", "step": state["step"], "epoch": epoch, rule: round(score, 3), "best": better,
                        **{f"{dr}_{k}": v for dr in ("t2v", "v2t") for k, v in report["metrics"][dr].items()}})

    def test(self) -> dict | None:
        """Score the chosen checkpoint once on ``data.test_split`` (every process its share); rank 0
        writes ``test.json`` and returns its metrics, the other processes ``None``."""
        d, split = self.cfg.data, self.test_split
        if split is None:
            return None
        best = _load_everywhere(self.out / "best", self.info, self.device)
        report = evaluate_sharded(best.backbone, split, best.aligner, self.info, w_global=best.w_global,
                                  w_fine=best.w_fine, folds=protocol_folds(d.dataset, d.test_split, len(split)),
                                  **self._eval_settings())
        if report is None:
            return None
        report["checkpoint"] = {"folder": str(self.out / "best"), "step": self.state["best_step"],
                                "chosen_on": f"{d.val_split} ({self.cfg.run.select})"}
        report["command"] = ["tokenflow", *(self.argv or [])]
        write_text_atomic(self.out / "test.json", json.dumps(report, indent=2) + "\n")
        return report["metrics"]

    def finish(self) -> dict:
        """The run's summary, with the test of the chosen checkpoint; rank 0 logs it."""
        s = self.state
        summary = {"steps": s["step"], "best_step": s["best_step"], self.cfg.run.select: s["best"],
                   "skipped_files": s["skipped"], "seconds": round(time.perf_counter() - self.t_start, 1)}
        rng = rng_state()  # testing draws from the RNGs; the saved state is the training's own
        metrics = self.test()
        set_rng_state(*rng)
        if metrics is not None:
            summary["test"] = metrics
        self.log.write({"kind": "done", "step": s["step"], **{k: v for k, v in summary.items() if k != "test"}})
        kill_point("done")
        s["finished"] = True  # a later --resume says so instead of testing again
        self.save_last()
        if self.info.enabled:  # no process tears the group down while another still uses it
            torch.distributed.barrier()
        return summary
