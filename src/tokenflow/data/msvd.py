"""MSVD in the layout CLIP4Clip uses.

Files under ``root``: ``raw-captions.pkl`` (a dict ``video_id -> list of token lists``),
``train_list.txt`` / ``val_list.txt`` / ``test_list.txt`` (one video id per line) and the
videos in ``root/YouTubeClips`` (``<video_id>.avi``; any common video extension is found).

The captions ship as a pickle, and unpickling runs code chosen by the file's author, so it
is never done here. ``convert_pickled_captions`` (``tokenflow convert-captions``) reads the file
with an unpickler that refuses every global (classes, functions), which is enough for plain
dicts, lists and strings, and writes ``raw-captions.json`` next to it; the loader reads the JSON.

X-Pool (layer6ai-labs/xpool) ships the same captions already as JSON, ``captions_msvd.json``:
a dict ``video_id -> [caption, ...]``, exactly the shape of ``raw-captions.json``. With only that
file present, rename (or copy) it: ``mv captions_msvd.json raw-captions.json``; the loader's error
says so.

Protocol (multi-caption): every caption of a test video is a text->video query; video->text
ranks all captions and counts the best-ranked caption of the video.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

from ..errors import InputError
from ..utils import write_text_atomic
from .base import RetrievalSplit, find_media, read_json

__all__ = ["convert_pickled_captions", "load_msvd"]


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain dicts, lists and strings are read")


def convert_pickled_captions(pkl_path: str | Path, json_path: str | Path | None = None) -> Path:
    """``raw-captions.pkl`` -> ``raw-captions.json`` without running code from the pickle.

    Accepts ``{video_id: [[token, ...], ...]}`` or ``{video_id: [str, ...]}``; writes
    ``{video_id: [caption, ...]}`` atomically.
    """
    pkl_path = Path(pkl_path)
    json_path = Path(json_path) if json_path else pkl_path.with_suffix(".json")
    try:
        data = _NoGlobals(io.BytesIO(pkl_path.read_bytes())).load()
    except FileNotFoundError:
        raise FileNotFoundError(f"caption pickle {pkl_path} not found") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise InputError(f"{pkl_path}: cannot read as plain caption data ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{pkl_path}: expected a dict video_id -> captions, got {type(data).__name__}")
    out = {}
    for vid, caps in data.items():
        if not isinstance(vid, str) or not isinstance(caps, list):
            raise InputError(f"{pkl_path}: entry {vid!r} must map a string id to a list of captions")
        texts = []
        for c in caps:
            if isinstance(c, list) and all(isinstance(w, str) for w in c):
                texts.append(" ".join(c))
            elif isinstance(c, str):
                texts.append(c)
            else:
                raise InputError(f"{pkl_path}: captions of {vid!r} must be token lists or strings")
        out[vid] = texts
    write_text_atomic(json_path, json.dumps(out))
    return json_path


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"MSVD split file {path} not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_msvd(root: str | Path, split: str = "test", video_dir: str | Path | None = None) -> RetrievalSplit:
    """Read an MSVD split (train, val, test) with all captions of each video."""
    root = Path(root)
    if split not in ("train", "val", "test"):
        raise InputError(f"MSVD split must be train, val or test, got {split!r}")
    video_dir = Path(video_dir) if video_dir else root / "YouTubeClips"
    cap_json = root / "raw-captions.json"
    pkl = root / "raw-captions.pkl"
    if not cap_json.is_file() and pkl.is_file():
        raise FileNotFoundError(
            f"{cap_json} not found. The captions ship as {pkl}, which is not unpickled here (a pickle can "
            f"run code). Convert it once without running code: tokenflow convert-captions {pkl}")
    xpool = root / "captions_msvd.json"
    if not cap_json.is_file() and xpool.is_file():
        raise FileNotFoundError(
            f"{cap_json} not found, but {xpool} is: X-Pool's JSON form of the same captions, in the same shape "
            f"(video_id -> [caption, ...]). Rename it once: mv {xpool} {cap_json}")
    captions = read_json(cap_json, "MSVD captions")
    if not isinstance(captions, dict):
        raise InputError(f"{cap_json}: expected a dict video_id -> list of captions")
    ids = _read_ids(root / f"{split}_list.txt")
    missing = [v for v in ids if not captions.get(v)]
    if missing:
        raise InputError(f"{cap_json}: no captions for videos {missing[:5]} listed in {split}_list.txt")
    texts, text_item = [], []
    for i, v in enumerate(ids):
        caps = [c.strip() for c in captions[v]]
        texts += caps
        text_item += [i] * len(caps)
    return RetrievalSplit(f"msvd/{split}", "video", ids, find_media(video_dir, ids), texts, text_item,
                          protocol={"captions_per_video": "all"})
