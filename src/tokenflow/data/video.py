"""Video decoding with PyAV: F frames sampled uniformly over the clip."""

from __future__ import annotations

from pathlib import Path

from .._extras import require
from .errors import MediaError

__all__ = ["count_frames", "read_video_frames", "uniform_frame_indices"]


def uniform_frame_indices(n_frames: int, num: int) -> list[int]:
    """Indices of ``num`` frames spread uniformly over ``n_frames``: the middle frame of each of
    ``num`` equal segments. A clip shorter than ``num`` gives all its frames (padded later)."""
    if n_frames <= 0 or num <= 0:
        raise ValueError(f"need n_frames > 0 and num > 0, got {n_frames}, {num}")
    if n_frames <= num:
        return list(range(n_frames))
    return [int((k + 0.5) * n_frames / num) for k in range(num)]


def _open(path: Path):
    av = require("av", "video", "reading videos")

    if not path.is_file():
        raise MediaError(path, "file not found")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(path, f"cannot open video ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise MediaError(path, "no video stream")
    return container


def _decode(path: Path, wanted) -> tuple[dict, int]:
    """Decode ``path`` from the start, keeping the frames whose index is in ``wanted`` (as PIL
    images); stops once all are kept. Returns the kept frames and how many frames were decoded."""
    av = require("av", "video", "reading videos")

    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        pick, out, seen = set(wanted), {}, 0
        for i, frame in enumerate(container.decode(stream)):
            seen = i + 1
            if i in pick:
                out[i] = frame.to_image()
                if len(out) == len(pick):
                    break
        return out, seen
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(path, f"cannot decode video ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def count_frames(path: str | Path) -> int:
    """Number of decodable frames (decodes the whole stream)."""
    return _decode(Path(path), ())[1]


def read_video_frames(path: str | Path, num_frames: int = 12) -> list:
    """Decode ``num_frames`` frames sampled uniformly (fewer for a shorter clip) as PIL images.

    The frame count comes from the container when it states one, else from a first decoding
    pass; if the container's count was wrong, the sampling is redone on the true count.
    """
    path = Path(path)
    container = _open(path)
    n = int(container.streams.video[0].frames or 0)
    container.close()
    if n <= 0:
        n = count_frames(path)
    if n <= 0:
        raise MediaError(path, "video has no frames")
    wanted = uniform_frame_indices(n, num_frames)
    out, seen = _decode(path, wanted)
    if len(out) < len(wanted):  # the container over-stated its frame count
        if seen == 0:
            raise MediaError(path, "video has no decodable frames")
        wanted = uniform_frame_indices(seen, num_frames)
        out, _ = _decode(path, wanted)
    return [out[i] for i in wanted]
