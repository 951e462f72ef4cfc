"""The run folder's safety rules: what a resumed run may change, how ``best/`` is swapped, and
what a killed process leaves behind.

A run's folder (``run.out``)::

    config.yaml        the resolved configuration
    log.jsonl          one JSON object per logged step, validation run, skipped file
    last.safetensors   the resume checkpoint (whole training state, replaced atomically, with the
                       resolved configuration, the tokenflow version and the date)
    .tokenflow.lock    the folder's lock, held by the process that writes it (its pid inside)
    best/              the model with the best validation score (a folder that
                       ``tokenflow evaluate --model`` and ``load_backbone`` read)
    val_best.json      validation report of that model
    test.json          test report of the best model, evaluated once at the end

* :data:`SAFE_TO_CHANGE` is the one list of configuration keys that ``--resume`` lets change:
  they cannot alter the weights, the log's numbers or the chosen checkpoint. Any other change
  is refused with a diff (``key: old -> new``) unless ``--force-config`` is given.
* ``best/`` is replaced through a journal: the complete new copy is written under a temporary
  name, then a journal file naming it is written atomically, then the renames follow. After a
  kill, :func:`recover_model_dir` finishes the swap when the journal exists (the copy it names is
  complete) and otherwise drops the unfinished copy: which folder is whole never depends on names.
* :func:`remove_leftovers` deletes the temporary files and folders of killed writers.
* :func:`kill_point` is a test hook: with ``TOKENFLOW_TEST_KILL_AT`` set, the process SIGKILLs
  itself at a named point (:data:`KILL_POINTS`), so that tests can kill a run exactly there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from ..errors import FileError
from ..utils import remove_temporaries, write_text_atomic

__all__ = ["KILL_ENV", "KILL_POINTS", "SAFE_TO_CHANGE", "config_changes", "format_changes", "kill_armed",
           "kill_point", "read_log", "recover_model_dir", "remove_leftovers", "save_model_dir"]

#: Keys a resumed run may change: logging and progress output, checkpoint cadence, data loader
#: processes and the in-memory media cache (the batches are a function of the seed and the
#: epoch), the evaluation batch size (items are encoded one by one: the batch only groups them),
#: and the run folder itself (moved). Not here, because they change the result: the validation
#: cadence (``run.eval_every``: it decides which checkpoint is chosen), ``run.max_steps`` (the
#: learning-rate schedule), ``run.device`` and ``run.deterministic`` (the kernels), and every
#: key of ``data``, ``model``, ``optim``, ``distill`` and ``cs`` not listed.
SAFE_TO_CHANGE = frozenset({"run.out", "run.log_every", "run.progress", "run.save_every", "run.eval_batch_size",
                            "data.workers", "data.cache", "data.frame_cache"})

_ABSENT = "(absent)"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v and key != "model.hparams":
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def config_changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two resolved configurations (JSON form), as
    ``{dotted.key: (old, new)}``, leaving out :data:`SAFE_TO_CHANGE`."""
    a, b = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(new)))
    changed = {}
    for key in sorted(set(a) | set(b)):
        if key in SAFE_TO_CHANGE:
            continue
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va != vb:
            changed[key] = (va, vb)
    return changed


def format_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """One line per key: ``  optim.lr: 0.001 -> 0.002``."""
    return "\n".join(f"  {k}: {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in changes.items())


# -- test hook: kill the process at a named point ---------------------------------------------
#: ``TOKENFLOW_TEST_KILL_AT=best-aside:1,step:3`` (tests only): SIGKILL this process the n-th time
#: (from 1) it reaches any of the named points, whichever comes first. Unset, a point costs one
#: environment lookup.
KILL_ENV = "TOKENFLOW_TEST_KILL_AT"
#: The points, in the order a step meets them: after the optimizer step; inside a log line (half
#: of it written); a checkpoint written under its temporary name, not renamed; ``best/``'s swap:
#: the new copy written, the journal written, the old copy moved aside, the new one in place, the
#: journal removed; ``best/`` swapped but ``val_best.json`` not written; the ``done`` record
#: written but the checkpoint not marked finished.
KILL_POINTS = ("step", "log-line", "checkpoint", "best-copy", "best-journal", "best-aside", "best-in",
               "best-unjournaled", "val-best", "done")
_reached: dict[str, int] = {}


def _kill_spec() -> dict[str, int]:
    """:data:`KILL_ENV` as ``{point: n}`` (empty when unset), read from the environment each call."""
    spec = {}
    for part in os.environ.get(KILL_ENV, "").split(","):
        point, _, n = part.strip().rpartition(":")
        if point:
            spec[point] = int(n)
    return spec


def kill_armed(name: str) -> bool:
    """Whether :data:`KILL_ENV` names the point ``name`` (read once by a writer that would pay for
    the point on every call, such as the log's torn line)."""
    return name in _kill_spec()


def kill_point(name: str, flush=None) -> None:
    """SIGKILL this process here when :data:`KILL_ENV` names ``name`` and this is its n-th visit
    (``flush``: a file to flush first, so that what was written to it reaches the disk)."""
    if not os.environ.get(KILL_ENV):
        return
    n = _kill_spec().get(name)
    if n is not None:
        _reached[name] = _reached.get(name, 0) + 1
        if _reached[name] == n:
            if flush is not None:
                flush.flush()
            os.kill(os.getpid(), signal.SIGKILL)


# -- best/: a swap with a journal --------------------------------------------------------------
def _journal(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.journal")


def save_model_dir(model, folder: Path) -> None:
    """Write a model folder next to ``folder`` and swap it in: readers see the old or the new
    one, and :func:`recover_model_dir` completes or undoes a swap cut short by a kill."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)  # every file written atomically (fsynced) inside
    kill_point("best-copy")
    write_text_atomic(_journal(folder), json.dumps({"complete": tmp.name, "old": old.name}) + "\n")
    kill_point("best-journal")
    if folder.exists():
        os.replace(folder, old)
        kill_point("best-aside")
    os.replace(tmp, folder)
    kill_point("best-in")
    _journal(folder).unlink()
    kill_point("best-unjournaled")
    shutil.rmtree(old, ignore_errors=True)


def recover_model_dir(folder: Path) -> None:
    """After a kill inside :func:`save_model_dir`: finish the swap when the journal names a
    complete copy, else keep ``folder`` as it is; then remove the leftover copies."""
    journal = _journal(folder)
    if journal.is_file():
        try:
            complete = folder.with_name(json.loads(journal.read_text())["complete"])
        except (ValueError, KeyError):  # the journal is written atomically: only a foreign file gets here
            raise FileError(f"{journal}: not a tokenflow swap journal; remove it by hand") from None
        if complete.is_dir():
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(complete, folder)
        journal.unlink()
    elif not folder.exists():  # written by a tokenflow without the journal: the newest old copy
        olds = sorted(folder.parent.glob(f".{folder.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if olds:
            os.replace(olds[-1], folder)
    remove_temporaries(folder.parent, (f".{folder.name}.tmp-*", f".{folder.name}.old-*"))


def remove_leftovers(out: Path) -> list[Path]:
    """Recover ``best/`` and delete killed writers' temporary files in ``out`` (under its lock)."""
    recover_model_dir(out / "best")
    return remove_temporaries(out)


# -- log.jsonl ---------------------------------------------------------------------------------
def read_log(path: Path) -> list[dict]:
    """The records of ``log.jsonl``. A torn last line (a kill during a write) is dropped with a
    warning naming the file; an unreadable line elsewhere raises :class:`FileError`."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    records = []
    for i, ln in enumerate(lines):
        try:
            records.append(json.loads(ln))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise FileError(f"{path}: line {i + 1} is not JSON; the log is damaged") from None
            print(f"tokenflow: warning: {path}: dropped a torn last line (the run was killed while writing "
                  "it)", file=sys.stderr)
    return records
