"""Video decoding with PyAV: F frames sampled uniformly over the clip.

Two ways to reach the sampled frames, which give the same frames (same indices, same pixels):

- **decode**: decode from frame 0 up to the last sampled frame (the frame index is the position
  in the decoded stream). Always right, slow on long clips.
- **seek**: build the pts -> index map (the sorted presentation timestamps), then for each
  sampled frame seek to the keyframe before it and decode forward to the frame whose pts is that
  index's, skipping the non-reference frames on the way (nothing depends on them). The next
  sampled frame is decoded on from there when no keyframe lies between them. Any disagreement
  between the decoder and the map (a frame without pts, a pts not in the map, the wanted frame
  passed over) means the map was wrong.

The map comes from one of two places:

1. **The container's index**, when it lists exactly the frames the container says it has (MP4
   and MOV keep such an index): the decoding timestamps of every frame and which are keyframes,
   read without touching the packets. The decoding timestamps must be those of a constant frame
   rate, and the packets before the second keyframe give the constant offset from decoding to
   presentation time. A keyframe's index is its place in decoding order, which is its place in
   presentation order in a closed GOP. Every GOP that a seek enters is read (its packets, not
   yet decoded) and checked before it is decoded: its decoding times must be the index's and its
   presentation times exactly those the map gives its frames, so a container whose timestamps
   drift somewhere is caught where it matters. An open GOP shows a few frames before its
   keyframe; a sampled frame among them makes the decoder disagree with the map.
2. **Every packet's timestamp**, read without decoding, when there is no such index or the
   decoder disagreed with it (a pass over the whole file: about a quarter of the time seeking
   takes on a 3-min clip).

``method="auto"`` seeks only when the timestamps can be trusted: every frame has a pts, no two
frames share one, the container's frame count (when it states one) is the frame count found,
and the pts are an affine function of the index (constant frame rate). Otherwise, and when the
decoder disagrees with both maps, it decodes from the start, with the handling of containers
that over-state their frame count.
"""

from __future__ import annotations

import itertools
import os
from bisect import bisect_right
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from .._extras import require
from ..errors import InputError
from ..utils import usable_cores
from .errors import MediaError

__all__ = ["Method", "count_frames", "read_video_frames", "seek_threads", "uniform_frame_indices"]

Method = Literal["auto", "seek", "decode"]
METHODS = ("auto", "seek", "decode")


def uniform_frame_indices(n_frames: int, num: int) -> list[int]:
    """Indices of ``num`` frames spread uniformly over ``n_frames``: the middle frame of each of
    ``num`` equal segments. A clip shorter than ``num`` gives all its frames (padded later)."""
    if num <= 0:  # --frames 0
        raise InputError(f"frames per video must be at least 1, got {num}")
    if n_frames <= 0:
        raise ValueError(f"need n_frames > 0, got {n_frames}")
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


def _to_image(frame):
    """A decoded frame as an RGB PIL image: PyAV's ``to_image`` pixels, converted through numpy
    (``to_image`` copies row by row in Python: 1.0 ms a 224 px frame against 0.3 ms)."""
    from PIL import Image

    return Image.fromarray(frame.to_ndarray(format="rgb24"))


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
                out[i] = _to_image(frame)
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


@dataclass(frozen=True)
class _Timeline:
    """The frames of a stream as its packets or its index tell them: sorted pts (frame k has
    ``pts[k]``), the indices of the keyframes (from the index: their places in decoding order),
    and the frame count the container states (0: none)."""

    pts: list[int]
    keyframes: list[int]
    stated: int
    #: From the index: every frame's decoding time, in decoding order; each GOP a seek enters is
    #: checked against it and against ``pts`` before it is decoded (None: from the packet pass).
    dts: list[int] | None = None

    @cached_property
    def index(self) -> dict[int, int]:
        """pts -> frame index."""
        return {p: k for k, p in enumerate(self.pts)}

    def trusted(self) -> bool:
        """Whether ``method="auto"`` may seek on these timestamps."""
        return bool(self.pts) and (self.stated in (0, len(self.pts))) and _affine(self.pts)


def _affine(ts: list[int]) -> bool:
    """True when ts[k] = ts[0] + k * step to within a quarter frame, step > 0 (constant frame rate)."""
    n = len(ts)
    if n < 2:
        return True
    step = (ts[-1] - ts[0]) / (n - 1)
    tol = max(step / 4, 1)
    t = np.asarray(ts, dtype=np.float64)
    return step > 0 and bool(np.all(np.abs(t - ts[0] - np.arange(n) * step) <= tol))


#: The index path holds the packets of each GOP it enters; a video with a longer GOP goes to the
#: packet pass instead (no whole video read into memory per seek).
GOP_MAX = 2000


def _index_timeline(container, stream) -> _Timeline | None:
    """The timeline from the container's index (see the module docstring), or None when the index
    does not list exactly the stated frames, their decoding times are not a constant frame rate,
    or the first GOP's packets are not those times shifted by one offset."""
    stated = int(stream.frames or 0)
    entries = getattr(stream, "index_entries", None)  # PyAV >= 17
    if entries is None or stated < 2 or len(entries) != stated:
        return None
    dts, key = [0] * stated, []
    for k, e in enumerate(entries):
        if e.is_discard:  # an edit list drops frames: leave it to the packet pass
            return None
        dts[k] = e.timestamp
        if e.is_keyframe:
            key.append(k)
    if not key or key[0] != 0 or not _affine(dts):
        return None
    if max(b - a for a, b in zip(key, key[1:] + [stated])) > GOP_MAX:
        return None
    end = key[1] if len(key) > 1 else len(dts)  # of the first GOP
    first = _read_packets(container.demux(stream), end)
    if any(p.pts is None or p.is_discard for p in first):
        return None
    seen = [p.pts for p in first]
    shift = min(seen, default=0) - dts[0]
    if sorted(seen) != [d + shift for d in dts[:end]]:
        return None
    return _Timeline([d + shift for d in dts], key, stated, dts)


def _timeline(container, stream) -> _Timeline | None:
    """Read every packet of ``stream`` (no decoding). None when a frame has no pts or two share one."""
    pts, key = [], []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # the flush packet; frames an edit list drops
            continue
        if packet.pts is None:
            return None
        pts.append(packet.pts)
        if packet.is_keyframe:
            key.append(packet.pts)
    pts.sort()
    if any(a == b for a, b in zip(pts, pts[1:])):
        return None
    index = {p: k for k, p in enumerate(pts)}
    return _Timeline(pts, sorted(index[p] for p in key), int(stream.frames or 0))


def _decode_skipping(packets, stream, keep: set[int]):
    """Decode ``packets`` on, skipping the non-reference frames whose pts is not in ``keep``: no
    other frame depends on them, so the frames kept are decoded as without skipping."""
    codec = stream.codec_context
    for packet in packets:
        codec.skip_frame = "DEFAULT" if packet.pts in keep else "NONREF"
        yield from packet.decode()


def _read_packets(packets, n: int) -> list:
    """The next ``n`` packets that carry data (fewer at the end of the stream)."""
    out = []
    for packet in packets:
        if packet.size:
            out.append(packet)
            if len(out) == n:
                break
    return out


def _gop_packets(packets, line: _Timeline, key: int, end: int) -> list | None:
    """The packets of frames ``key .. end - 1`` in decoding order, read right after seeking to
    frame ``key``; None unless they are what the index says: the seek landed on ``key`` and the
    GOP's decoding times are the index's and its presentation times are ``line.pts[key:end]`` in
    some order (so the frames shown in it are exactly those numbered ``key .. end - 1``)."""
    gop = _read_packets(packets, end - key)
    if [p.dts for p in gop] != line.dts[key:end]:
        return None
    shown = sorted(p.pts for p in gop) if all(p.pts is not None for p in gop) else None
    return gop if shown == line.pts[key:end] else None


def _seek_frames(container, stream, line: _Timeline, wanted: list[int]) -> dict | None:
    """The frames ``wanted`` (sorted indices) by seeking; None when the decoder disagrees with
    ``line`` (the caller then decodes from the start)."""
    index = line.index
    keep = {line.pts[t] for t in wanted}
    out: dict = {}
    frames, cur = None, -1  # the running decoder and the index of its last frame
    for target in wanted:
        k = bisect_right(line.keyframes, target) - 1
        key = line.keyframes[k] if k >= 0 else 0
        if frames is None or not key <= cur < target:  # no keyframe between: decode on; else seek
            # to the keyframe's own pts: seeking to the target's could land on the next keyframe
            # when the target is one of the frames an open GOP shows before its keyframe
            container.seek(line.pts[key], stream=stream, backward=True, any_frame=False)
            packets = container.demux(stream)
            if line.dts is not None:
                end = line.keyframes[k + 1] if k + 1 < len(line.keyframes) else len(line.pts)
                gop = _gop_packets(packets, line, key, end)
                if gop is None:
                    return None
                packets = itertools.chain(gop, packets)  # then on into the next GOP, for the reordered tail
            frames, cur = _decode_skipping(packets, stream, keep), -1
        while cur < target:
            frame = next(frames, None)
            if frame is None or frame.pts not in index:
                return None
            cur = index[frame.pts]
            if cur > target:  # went past it: the keyframe index or the decoder does not match the map
                return None
        out[target] = _to_image(frame)
    return out


_HELPER: tuple[int, ThreadPoolExecutor] | None = None  # (pid, one thread) for the second half of a seek


def seek_threads(wanted: int) -> int:
    """Threads that seek for one video: 2 in a process that is not a DataLoader worker, on a
    machine with 2 cores or more, for 4 sampled frames or more; else 1. (Loader workers already
    keep the cores busy: measured on 2 cores, a second thread gains 16-19 % with no workers and
    loses 2-8 % with two.)"""
    if wanted < 4 or usable_cores() < 2:
        return 1
    from torch.utils.data import get_worker_info

    return 1 if get_worker_info() is not None else 2


def _seek_split(path: Path, container, stream, line: _Timeline, wanted: list[int]) -> dict | None:
    """:func:`_seek_frames`, the later half of ``wanted`` on a second container in a helper
    thread when :func:`seek_threads` says 2 (PyAV lets go of the GIL while it decodes)."""
    global _HELPER
    if seek_threads(len(wanted)) < 2:
        return _seek_frames(container, stream, line, wanted)
    if _HELPER is None or _HELPER[0] != os.getpid():  # a forked child gets a thread of its own
        _HELPER = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="tokenflow-seek"))
    half = len(wanted) // 2
    later = _HELPER[1].submit(_seek_in, path, line, wanted[half:])
    first = _seek_frames(container, stream, line, wanted[:half])
    second = later.result()
    return None if first is None or second is None else {**first, **second}


def _seek_in(path: Path, line: _Timeline, wanted: list[int]) -> dict | None:
    container, stream = _open_for_seeking(path)
    try:
        return _seek_frames(container, stream, line, wanted)
    finally:
        container.close()


def _open_for_seeking(path: Path):
    """``path`` opened, and its video stream set to decode with slice threads, not frame threads:
    a frame-threaded decoder refills its pipeline after every seek (measured on 2-3 min H.264
    clips: 0.17 s a video with slices, 0.22 s with AUTO)."""
    container = _open(path)
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"
    return container, stream


def _read_seeking(path: Path, num_frames: int, method: Method) -> list | None:
    """Sampled frames by seeking, or None when ``method`` says to decode instead."""
    av = require("av", "video", "reading videos")

    for timeline in (_index_timeline, _timeline):
        container, stream = _open_for_seeking(path)
        try:
            line = timeline(container, stream)
            if line is None or not line.pts or (method == "auto" and not line.trusted()):
                continue
            wanted = uniform_frame_indices(len(line.pts), num_frames)
            out = _seek_split(path, container, stream, line, wanted)
            if out is not None:
                return [out[i] for i in wanted]
        except (av.FFmpegError, OSError, ValueError):
            if timeline is _timeline:
                return None  # the decode path reports the error, as before seeking existed
        finally:
            container.close()
    return None


def _read_decoding(path: Path, num_frames: int) -> list:
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


def read_video_frames(path: str | Path, num_frames: int = 12, *, method: Method = "auto") -> list:
    """Decode ``num_frames`` frames sampled uniformly (fewer for a shorter clip) as PIL images.

    ``method``: ``"seek"`` to the keyframe before each sampled frame (``"auto"``: when the
    timestamps can be trusted, see the module docstring) or ``"decode"`` from the start; every
    method gives the same frames. Decoding takes the frame count from the container when it
    states one, else from a first decoding pass; if the container's count was wrong, the
    sampling is redone on the true count.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    path = Path(path)
    if method != "decode":
        frames = _read_seeking(path, num_frames, method)
        if frames is not None:
            return frames
    return _read_decoding(path, num_frames)
