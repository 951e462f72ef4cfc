"""The training state that a resume checkpoint carries besides the tensors: :class:`TrainState`.

It is stored as a JSON object in the checkpoint's metadata (``state``), in the form that
tokenflow has always written, so that older checkpoints resume: keys missing there take their
defaults, ``skipped_paths`` is written once a file was skipped and ``finished`` once the run ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TrainState"]


@dataclass
class TrainState:
    """Where a run stands: optimizer steps done, the best validation score so far and its step,
    the step of the last validation, the distinct files skipped, and whether the run ended."""

    step: int = 0
    best: float | None = None
    best_step: int | None = None
    last_eval_step: int | None = None
    skipped: int = 0
    skipped_paths: list[str] = field(default_factory=list)
    finished: bool = False

    def to_dict(self) -> dict:
        """The checkpoint's ``state`` object."""
        d: dict = {"step": self.step, "best": self.best, "best_step": self.best_step,
                   "last_eval_step": self.last_eval_step, "skipped": self.skipped}
        if self.skipped_paths:
            d["skipped_paths"] = list(self.skipped_paths)
        if self.finished:
            d["finished"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        """A checkpoint's ``state`` object, of this or an earlier tokenflow."""
        return cls(step=int(d.get("step", 0)), best=d.get("best"), best_step=d.get("best_step"),
                   last_eval_step=d.get("last_eval_step"), skipped=int(d.get("skipped", 0)),
                   skipped_paths=list(d.get("skipped_paths", [])), finished=bool(d.get("finished", False)))

    def skip(self, paths: set[str]) -> None:
        """Count ``paths`` among the skipped files (a broken file is met every epoch: once)."""
        self.skipped_paths.extend(sorted(paths - set(self.skipped_paths)))
        self.skipped = len(self.skipped_paths)
