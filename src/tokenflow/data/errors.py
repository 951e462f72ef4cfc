"""The error of a missing or unreadable media file, shared by image and video reading."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

__all__ = ["MediaError"]


class MediaError(UserError, RuntimeError):
    """A missing or unreadable image or video: ``path`` and ``reason``.

    A DataLoader worker's error reaches the main process as its type and its formatted traceback
    only, and is rebuilt there from that text alone (``reason`` None): the path and reason are
    then read back from the traceback's last line, so the message still names the file."""

    def __init__(self, path: str | Path, reason: str | None = None):
        if reason is None:
            path, reason = _from_worker(str(path))
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def _from_worker(text: str) -> tuple[str, str]:
    """``(path, reason)`` from the text of a worker's traceback, whose last line reads
    ``tokenflow.data.errors.MediaError: PATH: REASON``."""
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    head, sep, message = last.partition("MediaError: ")
    path, sep2, reason = message.partition(": ")
    if not (sep and sep2):
        return "a media file", text.strip() or "unreadable"
    return path, reason
