"""Whether and how a run folder resumes, decided before anything in it is written.

:func:`check_resume` compares the request (``--resume`` or not) with the folder, and on
``--resume`` the configuration with the checkpoint's (:mod:`tokenflow.train.runfolder` lists the
keys that may change); :func:`finished_summary` answers the ``--resume`` of a finished run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..utils import folder_lock
from .checkpoint import mark_finished, read_checkpoint_info
from .config import ConfigError, TrainConfig
from .runfolder import config_changes, format_changes, read_log
from .state import TrainState

__all__ = ["Resume", "check_resume", "finished_summary"]


@dataclass
class Resume:
    """What :func:`check_resume` found: the checkpoint's state (``None`` for a new run), the
    configuration keys it changes (allowed by ``--force-config``) and whether its run is finished."""

    saved: TrainState | None = None
    changes: dict = field(default_factory=dict)
    finished: bool = False


def _resolved(config: dict) -> dict:
    """A saved configuration in this version's resolved form (keys added since, with their
    defaults; renamed keys moved), so that only real changes count on ``--resume``; as saved when
    this version cannot read it."""
    try:
        return json.loads(json.dumps(TrainConfig.model_validate(config).model_dump(mode="json")))
    except Exception:  # noqa: BLE001 (any validation failure: compare the raw form, which refuses it)
        return config


def _done_logged(out: Path, step: int) -> bool:
    """Whether ``log.jsonl`` records the end of the run at ``step`` (checkpoints written before
    tokenflow marked finished runs, or a kill between that record and the mark)."""
    log = out / "log.jsonl"
    return log.is_file() and any(r.get("kind") == "done" and r.get("step") == step for r in read_log(log))


def check_resume(out: Path, resume: bool, config_json: dict, *, force_config: bool, main: bool) -> Resume:
    """The run folder ``out`` fits the request, and on ``resume`` the configuration (resolved,
    JSON form) changes nothing that alters the result (unless ``force_config``); a
    :class:`ConfigError` otherwise. ``main``: this process warns (rank 0)."""
    ckpt = out / "last.safetensors"
    if resume and not ckpt.is_file():
        raise ConfigError(f"--resume: {ckpt} not found (nothing to resume in {out})")
    if not resume and ckpt.is_file():
        raise ConfigError(f"run.out: {out} already holds a run ({ckpt.name}); pass --resume to continue "
                          "it or choose another run.out")
    if not resume:
        return Resume()
    saved = read_checkpoint_info(ckpt)
    state = TrainState.from_dict(saved["state"])
    if state.finished or _done_logged(out, state.step):
        return Resume(state, finished=True)
    if saved["config"] is None:
        if main:
            print(f"tokenflow train: warning: {ckpt} was written by a tokenflow that did not store the "
                  "configuration; the resumed configuration cannot be checked against it", file=sys.stderr)
        return Resume(state)
    changes = config_changes(_resolved(saved["config"]), config_json)
    if changes and not force_config:
        raise ConfigError(f"--resume: the configuration differs from the one {ckpt} was trained with "
                          f"(tokenflow {saved['tokenflow_version']}, {saved['date']}):\n"
                          f"{format_changes(changes)}\nthese keys change the result: set them back, "
                          "start a new run.out, or pass --force-config to resume with them anyway")
    return Resume(state, changes)


def finished_summary(out: Path, state: TrainState, select: str, *, main: bool) -> dict:
    """``--resume`` of a finished run: nothing is evaluated or written again (rank 0 marks the
    checkpoint finished when a kill came between the ``done`` record and that mark)."""
    if main and not state.finished:
        with folder_lock(out):
            mark_finished(out / "last.safetensors")
    if main:
        print(f"tokenflow train: the run in {out} is finished (step {state.step}); nothing to resume. "
              f"Its test report: {out / 'test.json'}", file=sys.stderr)
    return {"already_finished": True, "steps": state.step, "best_step": state.best_step, select: state.best,
            "skipped_files": state.skipped}
