"""The writing side of the feature store: :class:`StoreWriter` (see ``store.py`` for the layout)."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..errors import FileError, UserError
from ..tokens import Tokens
from ..utils import atomic_path, folder_lock, remove_temporaries, write_text_atomic
from ._store_format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    NP_DTYPE,
    SHARD_FILE,
    SHARED,
    StoreDtype,
    StoreKind,
    file_entry,
    read_manifest,
    read_shard_meta,
    sha256_file,
)


def _save_npy(path: Path, array: np.ndarray) -> dict:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    return file_entry(path)


def quantize_int8(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-token int8: ``feats ~= q * scale`` with ``scale = max|feats| / 127`` over D.

    The error of each feature is at most ``scale / 2`` (half a quantisation step)."""
    scale = np.abs(feats).max(-1) / 127.0
    q = np.rint(feats / np.where(scale > 0, scale, 1.0)[..., None])
    return np.clip(q, -127, 127).astype(np.int8), scale.astype(np.float32)


@dataclass(frozen=True)
class _Pending:
    feats: np.ndarray   # [n, L, D] float32, padding zeroed
    mask: np.ndarray    # [n, L] bool
    pooled: np.ndarray  # [n, D] float32
    ids: list[str]
    paths: list[str | None]


class StoreWriter:
    """Append encoded batches; writes a shard every ``shard_size`` rows and the manifest on close.

    Resumable: on opening, finished shards of an earlier run with the same settings are kept
    (temporary files and unfinished shards are removed) and :attr:`done` says how many rows they
    hold. Rows added again are checked against the stored ids and skipped, so re-running the same
    loop resumes it; a caller that can, skips encoding the first ``done`` rows instead.

    Args:
        folder: the store folder (created; locked while the writer is open).
        kind: ``"visual"`` (images, videos) or ``"text"``.
        backbone: what encoded the features, at least ``{"name": ..., "sha256": ...}`` (None: ``source``).
        dtype: token storage: ``"fp16"`` (default), ``"fp32"`` or ``"int8"`` (per-token scale).
        shard_size: rows per shard (the last one may hold fewer).
        max_tokens: L of the store; default: that of the first batch. A later batch with more
            columns is accepted only when the extra columns are padding everywhere.
        tokens: what a row's tokens are, kept in the manifest (e.g. ``{"modality": "video",
            "video_tokens": "patches", "frames": 12}``), so readers need not guess it from L.
    """

    def __init__(self, folder: str | Path, *, kind: StoreKind, backbone: dict | None, dtype: StoreDtype = "fp16",
                 shard_size: int = 4096, max_tokens: int | None = None, tokens: dict | None = None,
                 source: dict | None = None):
        if kind not in ("visual", "text"):
            raise ValueError(f"kind must be 'visual' or 'text', got {kind!r}")
        if dtype not in NP_DTYPE:
            raise ValueError(f"dtype must be one of {sorted(NP_DTYPE)}, got {dtype!r}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        if (backbone is None) == (source is None) or (backbone is not None and "name" not in backbone):
            raise ValueError("backbone must name the encoder: {'name': ..., 'sha256': ...} (or None with a source)")
        self.folder = Path(folder)
        self.settings = {"kind": kind, "backbone": backbone and dict(backbone), "dim": None, "max_tokens": max_tokens,
                         "dtype": dtype, "shard_size": shard_size, "tokens": tokens, "source": source}
        self._lock = folder_lock(self.folder)
        self._lock.__enter__()
        self._closed = False
        try:
            remove_temporaries(self.folder)
            self.shards = self._finished_shards()
        except BaseException:
            self.close(write_manifest=False)
            raise
        self.done = sum(s["rows"] for s in self.shards)
        self._stored_ids = [i for s in self.shards for i in s["ids"]]
        self._position = 0
        self._pending: list[_Pending] = []
        self._skipped: list[dict] = []
        self._new_shards = 0

    # -- resuming ------------------------------------------------------------------------------
    def _finished_shards(self) -> list[dict]:
        shards = []
        for k in range(10**9):
            meta_path = self.folder / f"shard-{k:05d}.json"
            if not meta_path.is_file():
                break
            meta = read_shard_meta(meta_path)
            if not _files_match(self.folder, meta):
                break  # a damaged shard and all after it are written again
            mine = {key: self.settings[key] for key in SHARED if self.settings[key] is not None}
            theirs = {key: meta["settings"].get(key) for key in mine}
            if mine != theirs:
                raise FileError(f"{self.folder}: holds shards written with other settings ({meta_path.name}: "
                                f"{theirs}, now {mine}); choose another folder or remove it")
            self.settings.update(meta["settings"])
            shards.append(meta)
        for stale in self.folder.glob("shard-*"):  # unfinished or damaged shards
            number = SHARD_FILE.match(stale.name)
            if number and int(number.group(1)) >= len(shards):
                stale.unlink()
        return shards

    # -- writing -------------------------------------------------------------------------------
    def add(self, tokens: Tokens, ids: Sequence[str], paths: Sequence[str | Path | None] | None = None) -> None:
        """Append ``tokens`` (any float dtype, any device) with their ``ids`` (and file paths)."""
        if len(ids) != len(tokens) or (paths is not None and len(paths) != len(tokens)):
            raise ValueError(f"{len(tokens)} tokens but {len(ids)} ids and "
                             f"{'no' if paths is None else len(paths)} paths")
        ids = [str(i) for i in ids]
        paths = [None if p is None else str(p) for p in (paths or [None] * len(ids))]
        skip = max(0, min(len(ids), self.done - self._position))
        if skip and ids[:skip] != self._stored_ids[self._position : self._position + skip]:
            raise FileError(f"{self.folder}: the rows added differ from those already stored at rows "
                            f"{self._position}..{self._position + skip - 1}; choose another folder")
        self._position += len(ids)
        if skip == len(ids):
            return
        tokens = tokens[skip:].detach().to("cpu", torch.float32).zero_padding()
        self._pending.append(_Pending(*self._fit(tokens), ids[skip:], paths[skip:]))
        # strictly more: a caller's flush() can still label a full shard (see encode_store)
        while sum(len(p.ids) for p in self._pending) > self.settings["shard_size"]:
            self._write_shard(self.settings["shard_size"])

    def _fit(self, tokens: Tokens) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = self.settings
        if s["dim"] is None:
            s["dim"] = tokens.dim
        if s["max_tokens"] is None:
            s["max_tokens"] = tokens.feats.shape[1]
        if tokens.dim != s["dim"]:
            raise ValueError(f"{self.folder}: tokens have D={tokens.dim}, the store D={s['dim']}")
        feats, mask, length = tokens.feats.numpy(), tokens.mask.numpy(), s["max_tokens"]
        if feats.shape[1] > length:
            if mask[:, length:].any():
                raise ValueError(f"{self.folder}: tokens have real tokens beyond the store's max_tokens={length}")
            feats, mask = feats[:, :length], mask[:, :length]
        pad = length - feats.shape[1]
        feats = np.pad(feats, ((0, 0), (0, pad), (0, 0)))
        mask = np.pad(mask, ((0, 0), (0, pad)))
        return feats, mask, tokens.pooled.numpy()

    def flush(self, **meta) -> None:
        """Write the pending rows as a shard now (a shard boundary), even if it is not full;
        ``meta`` (JSON values) is kept in the shard's ``.json`` (e.g. how many inputs it covers)."""
        n = sum(len(p.ids) for p in self._pending)
        if n:
            self._write_shard(n, meta)

    def skip_done(self) -> int:
        """Tell the writer that the rows already stored will not be added again; returns their count."""
        self._position = max(self._position, self.done)
        return self.done

    def _write_shard(self, n: int, extra: dict | None = None) -> None:
        (self.folder / MANIFEST).unlink(missing_ok=True)  # the store is unfinished until close
        rows = _Pending(*(np.concatenate([getattr(p, f) for p in self._pending]) for f in ("feats", "mask", "pooled")),
                        [i for p in self._pending for i in p.ids], [q for p in self._pending for q in p.paths])
        head, tail = _split(rows, n)
        self._pending = [tail] if len(tail.ids) else []
        name = f"shard-{len(self.shards):05d}"
        files = {}
        if self.settings["dtype"] == "int8":
            q, scale = quantize_int8(head.feats)
            files["tokens"] = _save_npy(self.folder / f"{name}.tokens.npy", q)
            files["scales"] = _save_npy(self.folder / f"{name}.scales.npy", scale)
        else:
            files["tokens"] = _save_npy(self.folder / f"{name}.tokens.npy",
                                        head.feats.astype(NP_DTYPE[self.settings["dtype"]]))
        files["mask"] = _save_npy(self.folder / f"{name}.mask.npy", head.mask)
        files["global"] = _save_npy(self.folder / f"{name}.global.npy", head.pooled.astype(np.float32))
        meta = {"name": name, "rows": n, "files": files, "ids": head.ids, "paths": head.paths,
                "skipped": self._skipped, "settings": dict(self.settings), **(extra or {})}
        self._skipped = []
        self._new_shards += 1
        write_text_atomic(self.folder / f"{name}.json", json.dumps(meta))
        self.shards.append(meta)
        self._stored_ids += head.ids
        self.done += n

    def note_skipped(self, skipped: list[dict]) -> None:
        """Record inputs left out (unreadable files) with the next shard written."""
        self._skipped = self._skipped + list(skipped)

    def close(self, write_manifest: bool = True) -> dict | None:
        """Write the last shard and the manifest (atomically, last); returns the manifest."""
        if self._closed:
            return None
        try:
            if write_manifest:
                self.flush()
                if not self._new_shards and (self.folder / MANIFEST).is_file():
                    return read_manifest(self.folder)  # nothing new: the finished store stays as it is
                return self._write_manifest()
            return None
        finally:
            self._closed = True
            self._lock.__exit__(None, None, None)

    def _write_manifest(self) -> dict:
        if not self.shards:
            raise UserError(f"{self.folder}: nothing was written (no rows added)")
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION,
                    **{k: self.settings[k] for k in SHARED}, "count": self.done,
                    "shards": [{"name": s["name"], "rows": s["rows"], "files": s["files"],
                                "meta": file_entry(self.folder / f"{s['name']}.json")} for s in self.shards],
                    "skipped": sum((s["skipped"] for s in self.shards), []) + self._skipped,
                    "tokenflow": __version__, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        write_text_atomic(self.folder / MANIFEST, json.dumps(manifest, indent=1))
        return manifest

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(write_manifest=exc_type is None)


def _split(rows: _Pending, n: int) -> tuple[_Pending, _Pending]:
    cut = [(getattr(rows, f)[:n], getattr(rows, f)[n:]) for f in ("feats", "mask", "pooled", "ids", "paths")]
    return _Pending(*(a for a, _ in cut)), _Pending(*(b for _, b in cut))


def _files_match(folder: Path, meta: dict) -> bool:
    for f in meta["files"].values():
        p = folder / f["path"]
        if not p.is_file() or p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            return False
    return True
