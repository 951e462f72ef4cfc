"""The gathered-negatives path of training inside a process group (NCCL on a GPU, gloo on a CPU).

    python -m torch.distributed.run --nproc_per_node=1 benchmarks/gpu_ddp.py --clip CLIP --data SYNTH/videos
        [--batch 16] [--frames 4] [--steps 3] [--json FILE]

(also runs without torchrun: it then makes a group of one itself.) ``tokenflow train`` joins a
group only when ``WORLD_SIZE`` > 1, and with one process it never gathers. One GPU still checks
the distributed path: this script joins the group (NCCL when CUDA is available), treats it as a
distributed run of one (:class:`GroupOfOne`: ``DistInfo.enabled`` true), and

1. compares one DDP-wrapped objective (``all_gather_single`` with gradients, gathered ids and
   sizes, the teacher's features gathered without gradients) against the single-process
   objective on the same batch in fp32, with and without momentum distillation: loss and every
   gradient must agree (relative 1e-3; the two compute the t2v scores by different routes);
2. runs a whole :class:`~tokenflow.train.Trainer` through that group for ``--steps`` optimizer
   steps with bf16 autocast and distillation (DDP, ``mean_over_processes``, the sharded
   validation, the barrier after ``best/``), and checks that its losses are finite. Its backbone
   is ``--run-clip`` (default ``--clip``): the run writes ``best/`` and two resume checkpoints,
   some GB at ViT-B/32 size, which a small backbone spares.

With several GPUs (``--nproc_per_node`` > 1) the same runs go through the real multi-process
path (part 1 is then skipped: one process no longer holds the whole batch).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenflow.distributed import DistInfo  # noqa: E402

TOLERANCE = 1e-3


@dataclass(frozen=True)
class GroupOfOne(DistInfo):
    """A process group treated as distributed whatever its size (one GPU still gathers)."""

    @property
    def enabled(self) -> bool:
        return True


def join_group(device: torch.device) -> tuple[DistInfo, str]:
    """Join torchrun's group (or make a group of one); the run's DistInfo and the backend."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)
    else:
        store = tempfile.NamedTemporaryFile(prefix="gpu-ddp-", delete=False).name
        os.unlink(store)
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    info = GroupOfOne(rank, world, local) if world == 1 else DistInfo(rank, world, local)
    return info, dist.get_backend()


def config(args: argparse.Namespace, device: torch.device, out: str, overrides: list[str], clip: Path):
    from tokenflow.train import load_config

    return load_config(ROOT / "configs" / "msrvtt.yaml", [
        f"data.root={args.data}", "data.workers=0", f"data.num_frames={args.frames}", "data.test_split=null",
        f"model.backbone={clip}", f"optim.batch_size={args.batch}", f"run.out={args.work / out}",
        f"run.device={device}", "run.progress=false", "run.log_every=1", f"run.eval_batch_size={args.batch}",
        *overrides])


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def count_gathers() -> dict:
    """Count the objective's token gathers from now on (proof that the gathered path ran)."""
    import tokenflow.train.objective as objective

    counter, inner = {"n": 0}, objective.all_gather_tokens

    def counted(*a, **k):
        counter["n"] += 1
        return inner(*a, **k)

    objective.all_gather_tokens = counted
    return counter


def compare_paths(args: argparse.Namespace, device: torch.device, info: DistInfo) -> dict:
    """Part 1: the gathered (DDP) objective against the single-process one, fp32, same batch."""
    from tokenflow.train.objective import Objective
    from tokenflow.train.trainer import Trainer

    cfg = config(args, device, "compare", ["optim.amp=none", "distill.enabled=true"], args.clip)
    tr = Trainer(cfg, DistInfo(), device)
    with tr.held:
        tr.setup()
        batch = tr._micro_batch(next(iter(tr._loader(0, 0))), 0)
        tr.log.close()
    model, vt, alpha = tr.model, cfg.data.video_tokens, cfg.distill.alpha
    other, teacher = copy.deepcopy(model), copy.deepcopy(model).requires_grad_(False)
    plain = Objective(model, vt, alpha=alpha, cs=cfg.cs)
    ddp = torch.nn.parallel.DistributedDataParallel(
        Objective(other, vt, alpha=alpha, cs=cfg.cs), device_ids=[device.index] if device.type == "cuda" else None)
    out = {}
    gathers = count_gathers()
    for name, t in (("plain", None), ("distill", teacher)):
        model.zero_grad(set_to_none=True)
        other.zero_grad(set_to_none=True)
        a = plain(batch, DistInfo(), t, None)
        a.loss.backward()
        before = gathers["n"]
        b = ddp(batch, info, t, None)
        b.loss.backward()
        gathered = gathers["n"] - before
        ga, gb = _grads(model), _grads(other)
        scale = max(float(g.abs().max()) for g in ga.values())
        worst = max(float((ga[k] - gb[k]).abs().max()) for k in ga)
        la, lb = float(a.loss.detach()), float(b.loss.detach())
        out[name] = {"loss_single": la, "loss_gathered": lb, "gathers": gathered,
                     "loss_rel_diff": abs(la - lb) / max(abs(la), 1e-12),
                     "grad_max_abs_diff": worst, "grad_max_abs": scale, "grad_rel_diff": worst / max(scale, 1e-12),
                     "same_parameters": sorted(ga) == sorted(gb)}
        out[name]["ok"] = (gathered > 0 and out[name]["same_parameters"] and out[name]["loss_rel_diff"] < TOLERANCE
                           and out[name]["grad_rel_diff"] < TOLERANCE)
    return out


def train_through_group(args: argparse.Namespace, device: torch.device, info: DistInfo) -> dict:
    """Part 2: a whole Trainer run through the group (bf16 autocast, distillation, validation)."""
    from tokenflow.train.runfolder import read_log
    from tokenflow.train.trainer import Trainer

    cfg = config(args, device, "train", ["optim.amp=bf16", "distill.enabled=true", f"run.max_steps={args.steps}"],
                 args.run_clip or args.clip)
    t0 = time.perf_counter()
    summary = Trainer(cfg, info, device).run()
    out = {"seconds": round(time.perf_counter() - t0, 2), "summary": summary}
    if info.main:
        losses = [r["loss"] for r in read_log(cfg.run.out / "log.jsonl") if r.get("kind") == "train"]
        out["losses"] = losses
        out["ok"] = summary.get("steps") == args.steps and bool(losses) and all(math.isfinite(x) for x in losses)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", type=Path, required=True, help="CLIP folder (benchmarks/gpu_clip.py)")
    p.add_argument("--data", type=Path, required=True,
                   help="MSR-VTT-layout folder (tokenflow make-data OUT: OUT/videos)")
    p.add_argument("--run-clip", type=Path, default=None,
                   help="backbone of part 2's whole run (default --clip; a small one saves writing checkpoints)")
    p.add_argument("--batch", type=int, default=16, help="global batch (default 16)")
    p.add_argument("--frames", type=int, default=4, help="frames per video (default 4)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps of the Trainer run (default 3)")
    p.add_argument("--device", default="auto", help="auto (this rank's GPU if CUDA is available), cuda, cpu")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tokenflow-gpu-ddp")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    info, backend = join_group(device)
    report = {"benchmark": "gpu_ddp", "backend": backend, "world": info.world, "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if cuda else None, "torch": torch.__version__,
              "nccl": str(torch.cuda.nccl.version()) if cuda else None}
    try:
        if info.world == 1:
            report["compare"] = compare_paths(args, device, info)
        report["train"] = train_through_group(args, device, info)
    finally:
        dist.barrier()
        dist.destroy_process_group()
    if not info.main:
        return 0
    checks = [v["ok"] for v in report.get("compare", {}).values()] + [report["train"]["ok"]]
    report["ok"] = all(checks)
    diffs = ", ".join(f"{k} loss {v['loss_rel_diff']:.1e} grad {v['grad_rel_diff']:.1e}"
                      for k, v in report.get("compare", {}).items())
    line = (f"{backend} world {info.world} on {report['gpu'] or 'cpu'}: gathered vs single-process ({diffs}); "
            f"Trainer {report['train']['summary'].get('steps')} steps in {report['train']['seconds']} s, losses "
            f"{'finite' if report['train']['ok'] else 'NOT OK'}: {'ok' if report['ok'] else 'FAILED'}")
    report["summary_line"] = line
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"SUMMARY ddp: {line}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
