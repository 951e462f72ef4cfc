"""Resume checkpoints: the whole training state in one safetensors file, written atomically.

One file holds the student and teacher weights, the optimizer's tensors, the queues and the
torch RNG states as tensors; the rest (step, epoch, best validation score, optimizer
hyperparameters, Python and NumPy RNG states) sits in the file's string metadata as JSON, with the
run's resolved configuration, the tokenflow version and the date (:func:`read_checkpoint_info`
reads them without the tensors; ``--resume`` compares the configuration).
The learning-rate schedule is a pure function of the step and the config, so the step is its
whole state. Loading reads tensors and JSON only: nothing is unpickled.

The file is written to a temporary name and renamed over the previous checkpoint, so a kill
during a save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import datetime as _dt
import json
import random
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .._extras import require
from .._version import __version__
from ..errors import FileError, InputError
from ..losses import FeatureQueue
from ..utils import atomic_path
from .runfolder import kill_point

__all__ = ["FORMAT", "load_checkpoint", "mark_finished", "read_checkpoint_info", "rng_state", "save_checkpoint", "set_rng_state"]

FORMAT = "tokenflow-train-state/1"


def rng_state() -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every RNG's state: torch (CPU, each CUDA device) as tensors, Python and NumPy as JSON."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    v, state, gauss = random.getstate()
    np_state = np.random.get_state()
    meta = {"rng.python": json.dumps([v, list(state), gauss]),
            "rng.numpy": json.dumps([np_state[0], np_state[1].tolist(), *[float(x) if isinstance(x, float) else int(x)
                                                                          for x in np_state[2:]]])}
    return tensors, meta


def set_rng_state(tensors: dict[str, Tensor], meta: dict[str, str]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    v, state, gauss = json.loads(meta["rng.python"])
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = json.loads(meta["rng.numpy"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def _cpu_tensors(prefix: str, state: dict[str, Tensor], seen: dict[int, str], out: dict[str, Tensor]) -> None:
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        key = (t.data_ptr(), t.numel())
        if t.numel() and key in seen:  # safetensors refuses shared storage (tied weights): copy
            t = t.clone()
        seen[key] = prefix + k
        out[prefix + k] = t


def save_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, teacher: nn.Module | None = None,
                    queues: tuple[FeatureQueue, FeatureQueue] | None = None, config: dict | None = None) -> Path:
    """Write the full training state to ``path`` atomically; ``config`` (the resolved training
    configuration, JSON-able) is stored with the tokenflow version and the date."""
    require("safetensors", "train", "saving a checkpoint")
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    seen: dict[int, str] = {}
    _cpu_tensors("model.", model.state_dict(), seen, tensors)
    if teacher is not None:
        _cpu_tensors("teacher.", teacher.state_dict(), seen, tensors)
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if not isinstance(v, Tensor):
                raise TypeError(f"optimizer state {pid}.{k} is not a tensor ({type(v).__name__}); cannot save it")
            tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
    if queues is not None:
        for name, q in zip(("vis", "txt"), queues, strict=True):
            for k, v in q.state_dict().items():
                tensors[f"queue.{name}.{k}"] = v.contiguous()
    rng_t, rng_meta = rng_state()
    tensors.update(rng_t)
    meta = {"format": FORMAT, "state": json.dumps(state), "optim.param_groups": json.dumps(opt["param_groups"]),
            "tokenflow_version": __version__, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **rng_meta}
    if config is not None:
        meta["config"] = json.dumps(config)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
        kill_point("checkpoint")  # a test's kill leaves the temporary file, the previous checkpoint whole
    return path


def mark_finished(path: str | Path) -> None:
    """Rewrite the checkpoint at ``path`` (atomically) with ``state["finished"] = True``, every
    tensor and every other field unchanged: the end of a run killed between its ``done`` record
    and that mark."""
    require("safetensors", "train", "rewriting a checkpoint")
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    state = json.loads(meta["state"])
    state["finished"] = True
    meta["state"] = json.dumps(state)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    teacher: nn.Module | None = None, queues: tuple[FeatureQueue, FeatureQueue] | None = None,
                    restore_rng: bool = True) -> dict:
    """Restore what :func:`save_checkpoint` wrote into the given objects; returns ``state``."""
    require("safetensors", "train", "reading a checkpoint")
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise FileError(f"{path}: not a readable safetensors checkpoint ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise FileError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    device = next(model.parameters()).device

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    _load_strict(model, part("model."), path, "model")
    if teacher is not None:
        _load_strict(teacher, part("teacher."), path, "teacher")
    groups = json.loads(meta["optim.param_groups"])
    opt_state: dict[int, dict[str, Tensor]] = {}
    for k, v in part("optim.").items():
        pid, name = k.split(".", 1)
        opt_state.setdefault(int(pid), {})[name] = v if name == "step" else v.to(device)
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    if queues is not None:
        for name, q in zip(("vis", "txt"), queues, strict=True):
            st = part(f"queue.{name}.")
            if not st:
                raise InputError(f"{path}: no {name} queue in the checkpoint (was distillation off in that run?)")
            q.load_state_dict(st, device)
    if restore_rng:
        set_rng_state(part(""), meta)
    return json.loads(meta["state"])


def read_checkpoint_info(path: str | Path) -> dict:
    """What a checkpoint says about its run, read without its tensors: ``state`` (step, best
    score, ``finished``), ``config`` (the resolved configuration; ``None`` in checkpoints written
    before tokenflow stored it), ``tokenflow_version`` and ``date``."""
    require("safetensors", "train", "reading a checkpoint")
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise FileError(f"{path}: not a readable safetensors checkpoint ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT:
        raise FileError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return {"state": json.loads(meta["state"]), "config": json.loads(meta["config"]) if "config" in meta else None,
            "tokenflow_version": meta.get("tokenflow_version"), "date": meta.get("date")}


def _load_strict(module: nn.Module, state: dict[str, Tensor], path: Path, what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"{path}: {what} weights do not match this configuration (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
