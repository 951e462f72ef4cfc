"""One training run: the :class:`Trainer` that runs it, and :func:`train`, its entry point.

The run writes its folder (``run.out``, listed in :mod:`tokenflow.train.runfolder`); rank 0
alone logs and writes files. The checkpoint is chosen on the validation split only; the test
split is touched once, after training, with the chosen checkpoint. Both evaluations are shared
by every process (:func:`~tokenflow.eval.sharded.evaluate_sharded`), so that no process idles at
a barrier for a whole evaluation (NCCL's collective timeout).

``--resume`` refuses a configuration that would change the result (see
:mod:`tokenflow.train.resume`) before anything in the folder is written, and a finished run
says so and does nothing. A non-finite loss or gradient norm stops the run at that step with
:class:`~tokenflow.errors.Diverged`; the last checkpoint and ``best/`` stay those of good steps.

What the run is built from: :mod:`~tokenflow.train.build` (model, parameter groups,
determinism), :mod:`~tokenflow.train.schedule` (learning rate, steps),
:mod:`~tokenflow.train.state` (:class:`TrainState`), :mod:`~tokenflow.train.runlog` (log and
progress) and :mod:`~tokenflow.train.checkpoint`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..data.base import RetrievalSplit, collate_media
from ..data.errors import MediaError
from ..data.frame_cache import with_frame_cache
from ..distributed import DistInfo, all_gather_objects, mean_over_processes
from ..errors import Diverged
from ..eval.evaluate import protocol_folds
from ..eval.sharded import evaluate_sharded, load_everywhere
from ..losses import FeatureQueue, ema_update
from ..models.retrieval import RetrievalModel
from ..utils import check_writable, folder_lock, write_text_atomic
from .build import build_model, deterministic_algorithms, load_splits, param_groups
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .data import PairDataset, StepBatchSampler, UnpairedPool, epoch_order
from .distributed import init_distributed
from .objective import Batch, Objective, grad_norm
from .resume import Resume, check_resume, finished_summary
from .runfolder import format_changes, kill_point, remove_leftovers, save_model_dir
from .runlog import Progress, RunLog, json_number
from .schedule import StepPlan, lr_at, plan_steps
from .state import TrainState

#: Seconds between the plain progress lines written when stderr is not a terminal.
PLAIN_PROGRESS_S = 30.0

__all__ = ["Trainer", "train"]


def train(cfg: TrainConfig, *, resume: bool = False, argv: list[str] | None = None,
          force_config: bool = False) -> dict:
    """Run (or resume) the training that ``cfg`` describes, on one process or under torchrun;
    returns a summary dict.

    ``force_config``: resume even where ``cfg`` changes keys that alter the result (the change
    is recorded in ``log.jsonl``)."""
    info, device = init_distributed(cfg.run.device)
    try:
        return Trainer(cfg, info, device, resume=resume, argv=argv, force_config=force_config).run()
    finally:
        if info.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _select(report: dict, rule: str) -> float:
    t, v = report["metrics"]["t2v"], report["metrics"]["v2t"]
    if rule == "rsum":
        return sum(t[k] + v[k] for k in ("R@1", "R@5", "R@10"))
    if rule == "r1":
        return t["R@1"] + v["R@1"]
    return (t if rule == "t2v_r1" else v)["R@1"]


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
        self.config_json = json.loads(json.dumps(cfg.model_dump(mode="json")))
        self.held = contextlib.ExitStack()  # the run folder's lock, from _prepare_out to the end of run()
        self.found = Resume()  # the checkpoint's state and the keys --force-config changes (_check_resume)
        self.state = TrainState()  # the checkpoint's when resuming (_restore)
        self.log: RunLog | None = None
        # built by setup(), in the order that fixes the random stream
        self.train_split: RetrievalSplit | None = None
        self.val_split: RetrievalSplit | None = None
        self.test_split: RetrievalSplit | None = None
        self.model: RetrievalModel | None = None
        self.teacher: RetrievalModel | None = None  # the EMA teacher of distillation
        self.queues: tuple[FeatureQueue, FeatureQueue] | None = None
        self.runner: nn.Module | None = None  # the objective, DDP-wrapped under torchrun
        self.optimizer: torch.optim.Optimizer | None = None
        self.plan = StepPlan(0, 0, 0)
        self.amp = False
        self.dataset: PairDataset | None = None
        self.pool: UnpairedPool | None = None  # the CS term's unpaired extras
        self.item_ids: Tensor | None = None
        self.progress: Progress | None = None  # fit()'s

    def run(self) -> dict:
        """Set up, train to the last step, test the chosen checkpoint; returns the summary.

        ``run.deterministic`` holds for this run only: the process's previous settings come back
        when it ends, also on an error.
        """
        with deterministic_algorithms(self.cfg.run.deterministic), self.held:
            try:
                self._check_resume()
                if self.found.finished:
                    return finished_summary(self.out, self.found.saved, self.cfg.run.select, main=self.info.main)
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
        self.plan = plan_steps(self.cfg, self.train_split, self.info.world)
        self._restore()
        self._build_data()

    def _check_resume(self) -> None:
        """Before anything is written: the run folder fits the request, and on ``--resume`` the
        configuration changes nothing that alters the result (unless ``force_config``)."""
        self.found = check_resume(self.out, self.resume, self.config_json, force_config=self.force_config,
                                  main=self.info.main)

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
        self.train_split, self.val_split, self.test_split = load_splits(cfg)
        self.model = build_model(cfg, self.train_split).to(self.device)
        bb = self.model.backbone
        self.train_split, self.val_split, self.test_split = (
            with_frame_cache(s, d.frame_cache, d.num_frames, bb.preprocess, bb.image_size)
            for s in (self.train_split, self.val_split, self.test_split))
        self.model.train()
        if cfg.distill.enabled:
            self.teacher = copy.deepcopy(self.model).requires_grad_(False)
            self.queues = (FeatureQueue(cfg.distill.queue), FeatureQueue(cfg.distill.queue))
        objective = Objective(self.model, d.video_tokens, alpha=cfg.distill.alpha, cs=cfg.cs, loss=cfg.loss.kind)
        self.runner = objective
        if self.info.enabled:
            self.runner = nn.parallel.DistributedDataParallel(
                objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg), lr=o.lr, betas=o.betas, eps=o.eps)

    def _restore(self) -> None:
        """The run's state and log: fresh, or the checkpoint's (weights, optimizer, teacher, queues, RNG)."""
        self.state = TrainState()
        if self.resume:
            configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
            self.state = TrainState.from_dict(load_checkpoint(self.ckpt_path, model=self.model,
                                                              optimizer=self.optimizer, teacher=self.teacher,
                                                              queues=self.queues))
            for g, hyper in zip(self.optimizer.param_groups, configured, strict=True):
                g.update(hyper)  # the configuration's rates and decay (the same unless --force-config)
            if self.info.main:
                print(f"resumed from {self.ckpt_path} at step {self.state.step}", file=sys.stderr)
        self.log = RunLog(self.out / "log.jsonl", self.info.main, self.state.step if self.resume else None)
        changes = self.found.changes
        if changes:
            if self.info.main:
                print(f"tokenflow train: --force-config: resuming with changed keys\n"
                      f"{format_changes(changes)}", file=sys.stderr)
            self.log.write({"kind": "config_override", "step": self.state.step,
                            "changes": {k: {"old": a, "new": b} for k, (a, b) in changes.items()}})

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
        state, plan = self.state, self.plan
        self.progress = Progress(plan.total, state.step, enabled=self.cfg.run.progress and self.info.main,
                                 plain_every_s=PLAIN_PROGRESS_S)
        while state.step < plan.total:
            epoch, within = divmod(state.step, plan.steps_per_epoch)
            batches = iter(self._loader(epoch, within))
            for _ in range(within, plan.steps_per_epoch):
                if state.step >= plan.total:
                    break
                stats = self.step(batches)
                kill_point("step")
                self._after_step(epoch, stats)
        self.progress.close()
        if state.last_eval_step != state.step:
            self.validate(state.step // plan.steps_per_epoch)
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
        o, plan = self.cfg.optim, self.plan
        scale = lr_at(self.state.step, plan.total, plan.warmup, o.min_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = g["peak_lr"] * scale
        stats: dict[str, float] = {}
        for micro in range(o.accum):
            batch = self._micro_batch(next(batches), micro)
            for k, v in self._forward_backward(batch, last=micro == o.accum - 1).items():
                stats[k] = stats.get(k, 0.0) + v / o.accum
            self.progress.count(len(batch.item_ids) * self.info.world)
        stats = mean_over_processes(stats, self.info, self.device)
        if o.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        else:
            norm = grad_norm(self.model)
        self._stop_if_diverged(stats["loss"], float(norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.clamp_logit_scale()
        if self.teacher is not None:
            ema_update(self.teacher, self.model, self.cfg.distill.ema)
        self.state.step += 1
        return stats

    def _stop_if_diverged(self, loss: float, grad_norm: float) -> None:
        """A non-finite loss or gradient norm stops the run before the optimizer step, so that
        nothing saved afterwards holds it; the log gets the reason (every process raises alike:
        both numbers are global)."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        step, lr = self.state.step + 1, self.optimizer.param_groups[0]["lr"]
        msg = (f"diverged at step {step} (loss {loss:.4g}, grad norm {grad_norm:.4g}, lr {lr:.3g}); "
               f"{self.ckpt_path.name} and best/ keep the last good state. Lower optim.lr / optim.lr_new or set "
               "optim.grad_clip, then start a new run.out (or --resume --force-config)")
        self.log.write({"kind": "diverged", "step": step, "loss": json_number(loss),
                        "grad_norm": json_number(grad_norm), "lr": lr, "message": msg})
        raise Diverged(msg)

    def _micro_batch(self, loaded: tuple, micro: int) -> Batch:
        """A loader batch on the device, with its texts tokenized and the unpaired extras added;
        skipped files are counted, and logged (rank 0) for every process."""
        idx, pixels, fmask, bad = loaded
        if self.info.enabled and self.cfg.data.on_error == "skip":
            bad = [b for part in all_gather_objects(bad, self.info) for b in part]
        self._log_skipped(bad)
        if not idx:
            _, path, reason = bad[0]
            raise MediaError(path, f"{reason}; the whole batch of {self.train_split.name} was unreadable "
                             f"({len(bad)} files, listed in log.jsonl)")
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
                                          self.state.step * self.cfg.optim.accum + micro, self.info.rank)
        self._log_skipped(xbad, unpaired=True)
        if xp is not None:
            batch.extra_pixels = xp.to(dev)
            batch.extra_frame_mask = None if xm is None else xm.to(dev)
        if xt is not None:
            xi, xtm = self.model.backbone.tokenize(xt)
            batch.extra_ids, batch.extra_text_mask = xi.to(dev), xtm.to(dev)

    def _log_skipped(self, bad: list, **extra) -> None:
        """Log every skip; ``state.skipped`` counts distinct files (a broken file is met every epoch)."""
        if bad:
            self.state.skip({p for _, p, _ in bad})
            self.log.write({"kind": "skipped", "step": self.state.step, **extra,
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

    def _after_step(self, epoch: int, stats: dict[str, float]) -> None:
        """Progress and train log line; validation at the end of every ``run.eval_every``-th epoch
        and of the run; the resume checkpoint every ``run.save_every`` steps and epochs."""
        run, step, total = self.cfg.run, self.state.step, self.plan.total
        log_line = step % run.log_every == 0 or step == total
        rate = self.progress.tick(step, stats["loss"], restart=log_line)
        if log_line:
            self.log.write({"kind": "train", "step": step, "epoch": epoch, **stats,
                            "logit_scale": float(self.model.scale().detach()),
                            **({} if self.model.logit_bias is None else
                               {"logit_bias": float(self.model.logit_bias.detach())}),
                            "lr": self.optimizer.param_groups[0]["lr"], "pairs_per_s": round(rate, 2)})
        end_of_epoch = step % self.plan.steps_per_epoch == 0
        if end_of_epoch and ((epoch + 1) % run.eval_every == 0 or step == total):
            self.validate(epoch)
        if step % run.save_every == 0 or end_of_epoch or step == total:
            self.save_last()

    def save_last(self) -> None:
        """The resume checkpoint (rank 0): weights, optimizer, teacher, queues, state, RNG."""
        if self.info.main:
            save_checkpoint(self.ckpt_path, model=self.model, optimizer=self.optimizer, state=self.state.to_dict(),
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
        self.state.last_eval_step = self.state.step
        if self.info.enabled:  # nobody moves on while rank 0 writes best/
            torch.distributed.barrier()

    def _keep_if_best(self, report: dict, epoch: int) -> None:
        """Rank 0: ``best/`` and ``val_best.json`` when the score beats the best so far; a log line."""
        rule, state = self.cfg.run.select, self.state
        score = _select(report, rule)
        better = state.best is None or score > state.best
        if better:
            state.best, state.best_step = score, state.step
            save_model_dir(self.model, self.out / "best")
            kill_point("val-best")
            report["step"], report["epoch"] = state.step, epoch
            write_text_atomic(self.out / "val_best.json", json.dumps(report, indent=2) + "\n")
        self.log.write({"kind": "val", "step": state.step, "epoch": epoch, rule: round(score, 3), "best": better,
                        **{f"{dr}_{k}": v for dr in ("t2v", "v2t") for k, v in report["metrics"][dr].items()}})

    def test(self) -> dict | None:
        """Score the chosen checkpoint once on ``data.test_split`` (every process its share); rank 0
        writes ``test.json`` and returns its metrics, the other processes ``None``."""
        d, split = self.cfg.data, self.test_split
        if split is None:
            return None
        best = load_everywhere(self.out / "best", self.info, self.device)
        report = evaluate_sharded(best.backbone, split, best.aligner, self.info, w_global=best.w_global,
                                  w_fine=best.w_fine, folds=protocol_folds(d.dataset, d.test_split, len(split)),
                                  **self._eval_settings())
        if report is None:
            return None
        report["checkpoint"] = {"folder": str(self.out / "best"), "step": self.state.best_step,
                                "chosen_on": f"{d.val_split} ({self.cfg.run.select})"}
        report["command"] = ["tokenflow", *(self.argv or [])]
        write_text_atomic(self.out / "test.json", json.dumps(report, indent=2) + "\n")
        return report["metrics"]

    def finish(self) -> dict:
        """The run's summary, with the test of the chosen checkpoint; rank 0 logs it."""
        s = self.state
        summary = {"steps": s.step, "best_step": s.best_step, self.cfg.run.select: s.best,
                   "skipped_files": s.skipped, "seconds": round(self.progress.seconds(), 1)}
        rng = rng_state()  # testing draws from the RNGs; the saved state is the training's own
        metrics = self.test()
        set_rng_state(*rng)
        if metrics is not None:
            summary["test"] = metrics
        self.log.write({"kind": "done", "step": s.step, **{k: v for k, v in summary.items() if k != "test"}})
        kill_point("done")
        s.finished = True  # a later --resume says so instead of testing again
        self.save_last()
        if self.info.enabled:  # no process tears the group down while another still uses it
            torch.distributed.barrier()
        return summary
