"""What a run reports while it runs: ``log.jsonl`` (:class:`RunLog`) and its progress on stderr
(:class:`Progress`). Rank 0 alone writes either."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from ..utils import write_text_atomic
from .runfolder import kill_armed, kill_point, read_log

__all__ = ["Progress", "RunLog", "json_number"]


def json_number(x: float) -> float | str:
    """A number for a log record: non-finite ones as text (``"nan"``), which strict JSON readers accept."""
    return x if math.isfinite(x) else str(x)


class RunLog:
    """Appends JSON lines (rank 0 only); mirrors scalars to TensorBoard if it is installed.

    ``keep_until``: ``None`` starts a new log; a step resumes the log, dropping what a lost run
    logged after that step's checkpoint. The kill-point test hook is read once, here: a line is
    written whole unless a test arms ``log-line``, which tears it in the middle.
    """

    def __init__(self, path: Path, enabled: bool, keep_until: int | None):
        self.path, self.enabled, self.tb = path, enabled, None
        self._append = self._append_torn if enabled and kill_armed("log-line") else self._append_whole
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
        self._append(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record.get("step", 0))

    def _append_whole(self, line: str) -> None:
        with open(self.path, "a") as f:
            f.write(line)

    def _append_torn(self, line: str) -> None:
        with open(self.path, "a") as f:
            f.write(line[: len(line) // 2])
            kill_point("log-line", flush=f)  # a test's kill tears the line here
            f.write(line[len(line) // 2:])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Progress:
    """Progress on stderr: a bar on a terminal; else (a log file) a plain line (step, loss, speed,
    time left) every ``plain_every_s`` seconds and at the last step. ``enabled``: ``run.progress``
    on rank 0. Also the pairs per second of the train log lines."""

    def __init__(self, total: int, first_step: int, *, enabled: bool, plain_every_s: float):
        from tqdm import tqdm

        show = enabled and sys.stderr.isatty()
        self.plain = enabled and not show  # a log file, not a terminal
        self.bar = tqdm(total=total, initial=first_step, desc="train", unit="step", disable=not show,
                        file=sys.stderr)
        self.total, self.first_step, self.plain_every_s = total, first_step, plain_every_s
        self.t_start = self.t_log = self.t_plain = time.perf_counter()
        self.seen = 0  # pairs since the last train log line, over all processes

    def count(self, pairs: int) -> None:
        self.seen += pairs

    def tick(self, step: int, loss: float, *, restart: bool) -> float:
        """One optimizer step done: the bar or the plain line; returns the pairs per second since
        the last ``restart`` (a train log line), and restarts that count when ``restart``."""
        self.bar.update(1)
        now = time.perf_counter()
        rate = self.seen / max(now - self.t_log, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.3f}", pairs_per_s=f"{rate:.0f}")
        if self.plain and (now - self.t_plain >= self.plain_every_s or step == self.total):
            self._plain_line(step, loss, now)
        if restart:
            self.seen, self.t_log = 0, now
        return rate

    def _plain_line(self, step: int, loss: float, now: float) -> None:
        per_step = (now - self.t_start) / max(1, step - self.first_step)
        left = int(per_step * (self.total - step))
        print(f"train: step {step}/{self.total}  loss {loss:.4f}  {per_step:.2f} s/step  ETA "
              f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}", file=sys.stderr, flush=True)
        self.t_plain = now

    def seconds(self) -> float:
        """Since training started (or resumed) in this process."""
        return time.perf_counter() - self.t_start

    def close(self) -> None:
        self.bar.close()
