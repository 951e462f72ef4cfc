"""A feature store: a collection encoded once, in fixed-size shards of ``.npy`` files.

Layout of a store folder (every file written atomically, ``manifest.json`` last)::

    shard-00000.tokens.npy   [n, L, D] token features: float16 (default), float32, or int8
    shard-00000.scales.npy   [n, L] float32 per-token scale (int8 only): feats = tokens * scale
    shard-00000.mask.npy     bool [n, L], True where a token is real (padded features are zeros)
    shard-00000.global.npy   [n, D] float32 global features
    shard-00000.json         ids, paths (texts), skipped inputs, files' sha256; written after the .npy: done
    manifest.json            format version, backbone (name + sha256; null if imported), source
                             (imported: model, note, files' sha256; see importer.py), kind, dim, max_tokens,
                             dtype, tokens (modality, video tokens, frames), count, shards
                             (rows, files with bytes and sha256), version, date

A killed writer leaves at most temporary files and unfinished shards (no ``shard-*.json``); a
re-run removes them and keeps every finished shard. ``FeatureStore.tokens(rows)`` and
``global_rows(rows)`` read only the rows asked for (positioned reads); ``shard(k)`` memory-maps a
whole shard for sequential passes such as building an index.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .._version import __version__
from ..errors import FileError, UserError
from ..tokens import Tokens
from ..utils import atomic_path, folder_lock, remove_temporaries, write_text_atomic

__all__ = ["FORMAT_VERSION", "MANIFEST", "FeatureStore", "StoreWriter", "StoreDtype", "StoreKind", "write_store"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
StoreDtype = Literal["fp16", "fp32", "int8"]
StoreKind = Literal["visual", "text"]
_NP_DTYPE = {"fp16": np.float16, "fp32": np.float32, "int8": np.int8}
#: Settings that every shard of a store shares; a re-run with other values is refused.
_SHARED = ("kind", "backbone", "dim", "max_tokens", "dtype", "shard_size", "tokens", "source")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> dict:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    return {"path": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


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
        if dtype not in _NP_DTYPE:
            raise ValueError(f"dtype must be one of {sorted(_NP_DTYPE)}, got {dtype!r}")
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
            meta = json.loads(meta_path.read_text())
            if not _files_match(self.folder, meta):
                break  # a damaged shard and all after it are written again
            mine = {key: self.settings[key] for key in _SHARED if self.settings[key] is not None}
            theirs = {key: meta["settings"].get(key) for key in mine}
            if mine != theirs:
                raise FileError(f"{self.folder}: holds shards written with other settings ({meta_path.name}: "
                                f"{theirs}, now {mine}); choose another folder or remove it")
            self.settings.update(meta["settings"])
            shards.append(meta)
        for stale in self.folder.glob("shard-*"):  # unfinished or damaged shards
            if int(stale.name[6:11]) >= len(shards):
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
                                        head.feats.astype(_NP_DTYPE[self.settings["dtype"]]))
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
                    return _read_manifest(self.folder)  # nothing new: the finished store stays as it is
                return self._write_manifest()
            return None
        finally:
            self._closed = True
            self._lock.__exit__(None, None, None)

    def _write_manifest(self) -> dict:
        if not self.shards:
            raise UserError(f"{self.folder}: nothing was written (no rows added)")
        manifest = {"format": "tokenflow-feature-store", "format_version": FORMAT_VERSION,
                    **{k: self.settings[k] for k in _SHARED}, "count": self.done,
                    "shards": [{"name": s["name"], "rows": s["rows"], "files": s["files"],
                                "meta": _file_entry(self.folder / f"{s['name']}.json")} for s in self.shards],
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


def _file_entry(path: Path) -> dict:
    return {"path": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _files_match(folder: Path, meta: dict) -> bool:
    for f in meta["files"].values():
        p = folder / f["path"]
        if not p.is_file() or p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            return False
    return True


def write_store(folder: str | Path, tokens: Tokens, ids: Sequence[str], paths: Sequence[str | Path] | None = None,
                *, kind: StoreKind, backbone: dict, dtype: StoreDtype = "fp16", shard_size: int = 4096,
                max_tokens: int | None = None) -> FeatureStore:
    """Write ``tokens`` (already encoded) as a store; resumable like :class:`StoreWriter`."""
    with StoreWriter(folder, kind=kind, backbone=backbone, dtype=dtype, shard_size=shard_size,
                     max_tokens=max_tokens) as w:
        for a in range(0, len(tokens), shard_size):
            w.add(tokens[a : a + shard_size], ids[a : a + shard_size],
                  None if paths is None else paths[a : a + shard_size])
    return FeatureStore(folder)


class FeatureStore:
    """A finished store, opened read-only (see the module docstring for the layout).

    Opening reads ``manifest.json`` and checks its format version and that every file exists
    with the size it was written with (a missing, corrupt or truncated file raises
    :class:`FileError` naming it); ``verify=True`` also checks every sha256 (reads everything).
    """

    def __init__(self, folder: str | Path, *, verify: bool = False):
        self.folder = Path(folder)
        self.manifest = _read_manifest(self.folder)
        m = self.manifest
        self.kind, self.dim, self.max_tokens, self.dtype = m["kind"], m["dim"], m["max_tokens"], m["dtype"]
        self.backbone = m["backbone"] or {}  # {} for imported features: see manifest["source"]
        self.tokens_info: dict | None = m.get("tokens")  # modality, video_tokens, frames (see StoreWriter)
        self._offsets = np.cumsum([0] + [s["rows"] for s in m["shards"]])
        for s in m["shards"]:
            for f in [*s["files"].values(), s["meta"]]:
                _check_file(self.folder / f["path"], f, verify)
        self._arrays: dict[int, dict[str, np.ndarray]] = {}
        self._rows: dict[int, dict[str, _RowFile]] = {}
        self._ids: list[str] | None = None
        self._paths: list[str | None] | None = None

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.folder)!r}, {len(self)} {self.kind} items, D={self.dim}, "
                f"L={self.max_tokens}, {self.dtype}, {len(self.manifest['shards'])} shards)")

    def _load_meta(self) -> None:
        ids, paths = [], []
        for s in self.manifest["shards"]:
            meta = json.loads((self.folder / s["meta"]["path"]).read_text())
            ids += meta["ids"]
            paths += meta["paths"]
        self._ids, self._paths = ids, paths

    @property
    def ids(self) -> list[str]:
        """The id of every row, in row order."""
        if self._ids is None:
            self._load_meta()
        return self._ids

    @property
    def paths(self) -> list[str | None]:
        """The source of every row: a visual item's file (absolute when written by
        :func:`~tokenflow.index.encode_store`), or a text store's text itself."""
        if self._paths is None:
            self._load_meta()
        return self._paths

    @property
    def texts(self) -> list[str | None]:
        """A text store's texts, in row order (``paths`` under its own name)."""
        if self.kind != "text":
            raise AttributeError(f"{self.folder} is a store of {self.kind} items, not of texts")
        return self.paths

    def shard(self, k: int) -> dict[str, np.ndarray]:
        """The memory-mapped arrays of shard ``k`` (``tokens``, ``mask``, ``global``, ``scales``)."""
        if k not in self._arrays:
            files = self.manifest["shards"][k]["files"]
            arrays = {}
            for key, f in files.items():
                path = self.folder / f["path"]
                try:
                    arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
                except (ValueError, OSError) as e:
                    raise FileError(f"{path}: not a readable .npy file ({e})") from None
            self._arrays[k] = arrays
        return self._arrays[k]

    def iter_global(self):
        """Yield ``(first_row, [n, D] float32)`` shard by shard (memory of one shard at a time)."""
        for k in range(len(self.manifest["shards"])):
            yield int(self._offsets[k]), np.asarray(self.shard(k)["global"], dtype=np.float32)

    def global_features(self) -> np.ndarray:
        """[N, D] float32 global features (a memory map for a one-shard store, else loaded)."""
        parts = [g for _, g in self.iter_global()]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def tokens(self, rows: Sequence[int] | np.ndarray, dtype: torch.dtype = torch.float32) -> Tokens:
        """Tokens of ``rows`` (in that order), read with positioned reads of just those rows.

        No memory map is involved, so a long-running search holds only what it reads: the
        kernel's read-ahead of mapped pages would otherwise grow the process towards the size of
        the store as queries touch more of it."""
        rows = self._check_rows(rows)
        feats = np.zeros((rows.size, self.max_tokens, self.dim), dtype=np.float32)
        mask = np.zeros((rows.size, self.max_tokens), dtype=bool)
        pooled = np.zeros((rows.size, self.dim), dtype=np.float32)
        for sel, files, local in self._by_shard(rows):
            f = files["tokens"].read(local).astype(np.float32)
            if "scales" in files:
                f *= files["scales"].read(local).astype(np.float32)[..., None]
            feats[sel], mask[sel], pooled[sel] = f, files["mask"].read(local), files["global"].read(local)
        return Tokens(torch.from_numpy(feats).to(dtype), torch.from_numpy(mask), torch.from_numpy(pooled).to(dtype))

    def global_rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """[n, D] float32 global features of ``rows`` (in that order), nothing else read."""
        rows = self._check_rows(rows)
        out = np.zeros((rows.size, self.dim), dtype=np.float32)
        for sel, files, local in self._by_shard(rows):
            out[sel] = files["global"].read(local)
        return out

    def _check_rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {self!r}")
        return rows

    def _by_shard(self, rows: np.ndarray):
        """Per shard holding some of ``rows``: (their positions in ``rows``, the shard's row files,
        their rows within the shard)."""
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
        for k in np.unique(shard_of):
            sel = np.nonzero(shard_of == k)[0]
            yield sel, self._row_files(int(k)), rows[sel] - self._offsets[k]

    def _row_files(self, k: int) -> dict[str, _RowFile]:
        if k not in self._rows:
            self._rows[k] = {key: _RowFile(self.folder / f["path"])
                             for key, f in self.manifest["shards"][k]["files"].items()}
        return self._rows[k]


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one file from another written in its place: device, inode, size, mtime."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _RowFile:
    """Rows of a C-ordered ``.npy`` file read with ``os.pread`` (the header parsed once)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                self.offset = f.tell()
                self.identity = _identity(os.fstat(f.fileno()))
        except (ValueError, OSError) as e:
            raise FileError(f"{path}: not a readable .npy file ({e})") from None
        if fortran or dtype.hasobject:
            raise FileError(f"{path}: not a C-ordered plain array")
        self.shape, self.dtype = shape, dtype
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def read(self, rows: np.ndarray) -> np.ndarray:
        """``array[rows]`` (rows in any order); runs of consecutive rows are read at once."""
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        order = np.argsort(rows, kind="stable")
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise FileError(f"{self.path}: cannot be read any more ({e}); was the store removed?") from None
        try:
            if _identity(os.fstat(fd)) != self.identity:  # the header read at opening may not hold
                raise FileError(f"{self.path}: replaced since the store was opened (written again?); "
                                "open the store again (restart the search or server)")
            start = 0
            while start < len(order):
                end = start + 1
                while end < len(order) and rows[order[end]] == rows[order[end - 1]] + 1:
                    end += 1
                first, count = int(rows[order[start]]), end - start
                want, pos, parts = count * self.row_bytes, self.offset + first * self.row_bytes, []
                while want:  # a single read returns at most about 2 GiB
                    part = os.pread(fd, min(want, 1 << 30), pos)
                    if not part:
                        raise FileError(f"{self.path}: truncated (rows {first}..{first + count - 1} not all there)")
                    parts.append(part)
                    want, pos = want - len(part), pos + len(part)
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                flat[order[start:end]] = np.frombuffer(data, dtype=np.uint8).reshape(count, self.row_bytes)
                start = end
        finally:
            os.close(fd)
        return out


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        hint = " (an unfinished store: run the encoding again to finish it)" if any(folder.glob("shard-*")) else ""
        raise FileError(f"{path}: no feature store manifest{hint}")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileError(f"{path}: corrupt manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != "tokenflow-feature-store":
        raise FileError(f"{path}: not a tokenflow feature store manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise FileError(f"{path}: feature store format version {m.get('format_version')}, this tokenflow "
                        f"({__version__}) reads version {FORMAT_VERSION}; encode the collection again")
    missing = [k for k in ("kind", "backbone", "dim", "max_tokens", "dtype", "count", "shards") if k not in m]
    if missing:
        raise FileError(f"{path}: corrupt manifest, missing {missing}")
    return m


def _check_file(path: Path, entry: dict, verify: bool) -> None:
    if not path.is_file():
        raise FileError(f"{path}: missing file of the feature store")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise FileError(f"{path}: {size} bytes, the manifest says {entry['bytes']} (truncated or changed)")
    if verify and sha256_file(path) != entry["sha256"]:
        raise FileError(f"{path}: sha256 differs from the manifest (corrupt or changed)")
