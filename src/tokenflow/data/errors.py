"""The error of a missing or unreadable media file, shared by image and video reading."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

__all__ = ["MediaError"]


class MediaError(UserError, RuntimeError):
    """A missing or unreadable image or video: ``path`` and ``reason``."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason
