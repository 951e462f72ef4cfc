"""Import token features computed elsewhere (open_clip, EVA-CLIP, InternVideo, your own code)
as a feature store, in the same format :func:`~tokenflow.index.encode_store` writes, so that
``evaluate``, ``index``, ``search`` and ``explain`` read it with no backbone.

Each input file (``.npz`` or ``.safetensors``) holds one modality's rows::

    feats   [N, L, D]  float16, bfloat16 (safetensors), float32 or float64: token features
    mask    [N, L]     bool (or integer 0/1): True where a token is real; every row has one
    pooled  [N, D]     float: the global feature of each row (CLIP's class / EOS feature)
    ids     [N]        str or int, unique over all the files
    paths   [N]        str, optional (visual stores): each item's file
    texts   [N]        str, optional (text stores): each caption

In a ``.npz`` file ``ids``, ``paths`` and ``texts`` are string (or integer) arrays, never object
arrays (``np.array(ids, dtype=str)``). A safetensors file holds only numeric tensors: there ``ids``
is an integer tensor, or a JSON list of strings under the header metadata key ``"ids"``
(``save_file(tensors, path, metadata={"ids": json.dumps(ids)})``); ``paths`` and ``texts`` are
JSON lists under those metadata keys. Large arrays are memory-mapped (uncompressed ``.npz``
members and safetensors), so memory stays at one shard whatever the file size.

Ids for :func:`~tokenflow.index.offline.evaluate_stores`: a visual store's ids are the split's item
ids, a text store's ``ITEM_ID#K`` with K the caption's index in the split (what ``tokenflow encode``
and ``encode --captions`` write).

The library assumes unit-norm token and pooled features, as its own encoders give; raw outputs of
other code often are not (open_clip's ``encode_*`` before ``F.normalize``). So by default every
real token and every pooled feature is divided by its L2 norm on import (a zero vector stays zero,
as in ``F.normalize``); ``normalize=False`` (``--no-normalize``) keeps the values as given.

The manifest's ``backbone`` is null and its ``source`` says where the features came from:
``{"kind": "imported", "model": ..., "note": ..., "normalized": true | false, "files": [{"name",
"bytes", "sha256"}], "sha256": ...}`` (the last over the files' hashes, in order). Every file becomes its own shards.
A killed import resumes like ``encode`` (finished shards kept); bad input stops it with a message
naming the file and the array, and the shards it wrote are removed.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import FileError, UserError
from ..tokens import Tokens
from .store import FeatureStore, StoreDtype, StoreWriter, sha256_file

__all__ = ["ARRAYS", "import_features", "read_feature_file", "store_source"]

#: The arrays of an input file: required ones first.
ARRAYS = ("feats", "mask", "pooled", "ids", "paths", "texts")
_EXPECTED = "feats [N, L, D], mask [N, L], pooled [N, D], ids [N] (optional: paths or texts [N])"
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": "bf16", "BOOL": np.bool_,
                       "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16, "I32": np.int32,
                       "U32": np.uint32, "I64": np.int64, "U64": np.uint64}


@dataclass
class FeatureFile:
    """One input file, its shapes checked: ``arrays`` (feats, mask, pooled; memory-mapped where
    the format allows), ``ids`` and the optional ``extra`` strings (paths or texts)."""

    path: Path
    arrays: dict[str, np.ndarray]
    ids: list[str]
    extra: dict[str, list[str]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def length(self) -> int:
        return self.arrays["feats"].shape[1]

    @property
    def dim(self) -> int:
        return self.arrays["feats"].shape[2]


def store_source(store: FeatureStore) -> dict:
    """Where a store's features came from: its manifest ``source`` (imported features), else
    ``{"kind": "encoded", "backbone": ...}`` (stores written by ``encode``, old ones too)."""
    return store.manifest.get("source") or {"kind": "encoded", "backbone": store.manifest.get("backbone")}


# -- reading --------------------------------------------------------------------------------------
def _npy_in_zip(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """A stored (uncompressed) ``.npy`` member memory-mapped in place; None if it cannot be."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if dtype.hasobject or not shape or 0 in shape:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise FileError(f"{path}: not a readable .npz file ({e})") from None
    arrays = {}
    with zf, np.load(path, allow_pickle=False) as npz:
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy")
            if name not in ARRAYS:
                continue
            try:
                mapped = _npy_in_zip(path, info) if name in ("feats", "mask", "pooled") else None
                arrays[name] = mapped if mapped is not None else npz[name]
            except ValueError as e:  # object arrays need pickle, which is never allowed
                hint = " (an object array: save strings as np.array(values, dtype=str))" if "pickle" in str(e) else ""
                raise FileError(f"{path}: array '{name}' cannot be read{hint} ({e})") from None
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                raise FileError(f"{path}: array '{name}' cannot be read ({e})") from None
    return arrays, {}


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, 100 << 20):
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise FileError(f"{path}: not a safetensors file ({e})") from None
    meta = header.pop("__metadata__", None) or {}
    arrays = {}
    for name, entry in header.items():
        if name not in ARRAYS:
            continue
        try:
            dtype, shape, (begin, end) = _SAFETENSORS_DTYPES[entry["dtype"]], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise FileError(f"{path}: tensor '{name}' has an unknown dtype or a corrupt header entry "
                            f"({entry!r})") from None
        raw = np.uint16 if dtype == "bf16" else dtype
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * np.dtype(raw).itemsize or 8 + n + end > size:
            raise FileError(f"{path}: tensor '{name}' {entry['dtype']} {shape}: its bytes {begin}..{end} do not fit "
                            f"the shape or the file ({size} bytes: truncated?)")
        a = (np.memmap(path, dtype=raw, mode="r", offset=8 + n + begin, shape=tuple(shape)) if count else
             np.zeros(shape, dtype=raw))
        arrays[name] = _Bf16(a) if dtype == "bf16" else a
    return arrays, {k: v for k, v in meta.items() if k in ARRAYS}


class _Bf16(np.ndarray):
    """bfloat16 bits (uint16) that read as float32: numpy has no bfloat16."""

    def __new__(cls, bits: np.ndarray):
        return np.asarray(bits).view(cls)

    def as_float32(self, rows: slice) -> np.ndarray:
        return (np.asarray(self[rows]).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _strings(path: Path, name: str, value, n: int) -> list[str]:
    """``ids``, ``paths`` or ``texts`` as a list of ``n`` strings (an integer or string array, or
    a JSON list in safetensors metadata)."""
    if isinstance(value, str):  # safetensors metadata
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise FileError(f"{path}: metadata '{name}' is not a JSON list of strings ({e})") from None
        if not isinstance(value, list) or not all(isinstance(v, (str, int)) for v in value):
            raise FileError(f"{path}: metadata '{name}' must be a JSON list of strings")
        out = [str(v) for v in value]
    else:
        a = np.asarray(value)
        if a.ndim != 1:
            raise FileError(f"{path}: array '{name}' has shape {list(a.shape)}; expected [N] = [{n}]")
        if a.dtype.kind in "iu":
            out = [str(int(v)) for v in a]
        elif a.dtype.kind == "U":
            out = a.tolist()
        elif a.dtype.kind == "S":
            try:
                out = [v.decode("utf-8") for v in a.tolist()]
            except UnicodeDecodeError as e:
                raise FileError(f"{path}: array '{name}' is not UTF-8 text ({e})") from None
        else:
            raise FileError(f"{path}: array '{name}' has dtype {a.dtype}; expected strings or integers")
    if len(out) != n:
        raise FileError(f"{path}: '{name}' has {len(out)} entries; expected one per row of feats ({n})")
    return out


def read_feature_file(path: str | Path, kind: str) -> FeatureFile:
    """Open one input file and check its arrays' names, shapes and dtypes (not yet their values)."""
    path = Path(path)
    if not path.is_file():
        raise FileError(f"{path}: feature file not found" + (" (a folder: give the .npz or .safetensors files in "
                                                             "it)" if path.is_dir() else ""))
    if path.suffix == ".npz":
        arrays, meta = _read_npz(path)
    elif path.suffix == ".safetensors":
        arrays, meta = _read_safetensors(path)
    else:
        raise FileError(f"{path}: expected a .npz or .safetensors file of {_EXPECTED}")
    found = {**arrays, **meta}
    missing = [k for k in ARRAYS[:4] if k not in found]
    if missing:
        raise FileError(f"{path}: no array '{missing[0]}' (found: {', '.join(sorted(found)) or 'none'}); expected "
                        f"{_EXPECTED}")
    other = "paths" if kind == "text" else "texts"
    if other in found:
        mine, theirs = ("texts", "visual") if kind == "text" else ("paths", "text")
        raise FileError(f"{path}: array '{other}' in a {kind} store; a {kind} store takes '{mine}' (or is this a "
                        f"{theirs} store?)")
    feats, mask, pooled = (arrays.get(k) for k in ("feats", "mask", "pooled"))
    for name, a in (("feats", feats), ("mask", mask), ("pooled", pooled)):
        if a is None:
            raise FileError(f"{path}: '{name}' must be an array, not metadata")
    if feats.ndim != 3 or 0 in feats.shape:
        raise FileError(f"{path}: array 'feats' has shape {list(feats.shape)}; expected [N, L, D], none of them 0")
    n, length, dim = feats.shape
    for name, a in (("feats", feats), ("pooled", pooled)):
        if not (isinstance(a, _Bf16) or a.dtype.kind == "f"):
            raise FileError(f"{path}: array '{name}' has dtype {a.dtype}; expected float16, bfloat16, float32 or "
                            "float64")
    if tuple(mask.shape) != (n, length):
        raise FileError(f"{path}: array 'mask' has shape {list(mask.shape)}; expected [N, L] = [{n}, {length}] "
                        f"as feats {list(feats.shape)}")
    if mask.dtype != np.bool_ and mask.dtype.kind not in "iu":
        raise FileError(f"{path}: array 'mask' has dtype {mask.dtype}; expected bool (True = real token) or 0/1")
    if tuple(pooled.shape) != (n, dim):
        raise FileError(f"{path}: array 'pooled' has shape {list(pooled.shape)}; expected [N, D] = [{n}, {dim}] "
                        f"as feats {list(feats.shape)}")
    ids = _strings(path, "ids", found["ids"], n)
    extra = {k: _strings(path, k, found[k], n) for k in ("paths", "texts") if k in found}
    return FeatureFile(path, {"feats": feats, "mask": mask, "pooled": pooled}, ids, extra)


# -- checking -------------------------------------------------------------------------------------
def _check_ids(files: Sequence[FeatureFile]) -> None:
    """Ids are unique within and across files; an error names both places."""
    seen: dict[str, tuple[int, int]] = {}
    for k, f in enumerate(files):
        if not all(f.ids):
            raise FileError(f"{f.path}: ids: row {f.ids.index('')} has an empty id")
        for r, i in enumerate(f.ids):
            where = seen.setdefault(i, (k, r))
            if where != (k, r):
                first = "this file" if where[0] == k else str(files[where[0]].path)
                raise FileError(f"{f.path}: ids: {i!r} (row {r}) is also the id of row {where[1]} of {first}; "
                                "ids must be unique over all the files")


def _float32(a: np.ndarray, rows: slice) -> np.ndarray:
    return a.as_float32(rows) if isinstance(a, _Bf16) else np.array(a[rows], dtype=np.float32)  # a copy


def _l2_normalize(a: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``a`` divided in place by its L2 norm along the last axis (norms below 1e-12 count as 1e-12,
    as in ``F.normalize``); where ``mask`` is given, only its True rows (padding is left as is)."""
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("...d,...d->...", a, a))
    np.maximum(norms, 1e-12, out=norms)
    if mask is not None:
        norms = np.where(mask, norms, np.float32(1.0))
    with np.errstate(invalid="ignore"):
        a /= norms[..., None]
    return a


def _chunk(f: FeatureFile, rows: slice, normalize: bool = True) -> Tokens:
    """Rows of ``f`` as float32 Tokens, their values checked: every row has a real token, real
    tokens and pooled features are finite; then L2-normalised unless ``normalize`` is False."""
    first = rows.start
    mask = np.array(f.arrays["mask"][rows])
    if mask.dtype != np.bool_:
        bad = np.nonzero((mask != 0) & (mask != 1))
        if bad[0].size:
            r = first + int(bad[0][0])
            raise FileError(f"{f.path}: mask: row {r} (id {f.ids[r]!r}) holds {mask[bad][0]}; expected 0/1 or bool")
        mask = mask.astype(bool)
    empty = np.nonzero(~mask.any(1))[0]
    if empty.size:
        r = first + int(empty[0])
        raise FileError(f"{f.path}: mask: row {r} (id {f.ids[r]!r}) has no real token (all False), "
                        f"{empty.size} such rows in rows {first}..{rows.stop - 1}; drop them or mark their tokens")
    feats = _float32(f.arrays["feats"], rows)
    with np.errstate(invalid="ignore", over="ignore"):
        bad_tok = ~np.isfinite(feats.sum(-1)) & mask  # a sum is finite iff every term is, bar overflow
        if bad_tok.any():
            bad_tok &= ~np.isfinite(feats).all(-1)
    if bad_tok.any():
        r, t = (int(x[0]) for x in np.nonzero(bad_tok))
        raise FileError(f"{f.path}: feats: row {first + r} (id {f.ids[first + r]!r}) has NaN or Inf at real token "
                        f"{t}")
    pooled = _float32(f.arrays["pooled"], rows)
    bad = np.nonzero(~np.isfinite(pooled).all(-1))[0]
    if bad.size:
        r = first + int(bad[0])
        raise FileError(f"{f.path}: pooled: row {r} (id {f.ids[r]!r}) has NaN or Inf")
    if normalize:
        _l2_normalize(feats, mask)
        _l2_normalize(pooled)
    return Tokens(torch.from_numpy(feats), torch.from_numpy(mask), torch.from_numpy(pooled))


def _source(files: Sequence[FeatureFile], model: str, note: str | None, normalize: bool) -> dict:
    entries = [{"name": f.path.name, "bytes": f.path.stat().st_size, "sha256": sha256_file(f.path)} for f in files]
    total = hashlib.sha256("".join(e["sha256"] for e in entries).encode()).hexdigest()
    return {"kind": "imported", "model": model, "note": note, "normalized": normalize, "files": entries,
            "sha256": total}


# -- writing --------------------------------------------------------------------------------------
def import_features(files: Sequence[str | Path], folder: str | Path, *, kind: str, model: str,
                    note: str | None = None, modality: str | None = None, dtype: StoreDtype = "fp16",
                    shard_size: int = 4096, normalize: bool = True) -> FeatureStore:
    """Write the rows of ``files`` (in order) as a ``kind`` (``"visual"`` or ``"text"``) store in
    ``folder``; returns it opened. ``model`` and ``note`` name the source in the manifest;
    ``modality``: ``"image"`` or ``"video"`` for a visual store (default image). ``normalize``:
    divide each real token and pooled feature by its L2 norm (default), else store them as given.

    Every shape, dtype and id is checked before anything is written, the values (NaN/Inf, rows
    with no real token, 0/1 masks) as the rows are written. Resumable like :func:`encode_store`;
    an input error removes the shards written (the input has to change anyway).
    """
    if kind not in ("visual", "text"):
        raise UserError(f"--kind must be visual or text, got {kind!r}")
    if not files:
        raise UserError("no feature files given")
    if not model or not model.strip():
        raise UserError("--model-name: name the model that computed the features (e.g. open_clip ViT-B-32 laion2b)")
    modality = "text" if kind == "text" else (modality or "image")
    if modality not in ("image", "video", "text") or (kind == "visual") == (modality == "text"):
        holds = "texts" if kind == "text" else "images or videos"
        raise UserError(f"--modality {modality}: a {kind} store holds {holds}")
    opened = [read_feature_file(p, kind) for p in files]
    dim = opened[0].dim
    for f in opened[1:]:
        if f.dim != dim:
            raise FileError(f"{f.path}: array 'feats' has D={f.dim}, but {opened[0].path} has D={dim}; all files "
                            "hold features of one model")
    _check_ids(opened)
    source = _source(opened, model.strip(), note, normalize)
    with StoreWriter(folder, kind=kind, backbone=None, source=source, dtype=dtype, shard_size=shard_size,
                     max_tokens=max(f.length for f in opened), tokens={"modality": modality}) as w:
        done, start = w.skip_done(), 0
        stored = [i for s in w.shards for i in s["ids"]]
        if stored != [i for f in opened for i in f.ids][:done]:
            raise FileError(f"{folder}: its finished shards hold other rows than these files (same source hash); "
                            "import into a new folder")
        try:
            for k, f in enumerate(opened):
                extra = f.extra.get("paths") or f.extra.get("texts") or [None] * f.rows
                for a in range(max(done - start, 0), f.rows, shard_size):  # one shard per chunk, none across files
                    rows = slice(a, min(a + shard_size, f.rows))
                    w.add(_chunk(f, rows, normalize), f.ids[rows], extra[rows])
                    w.flush(file=k)
                start += f.rows
        except UserError:
            for p in Path(folder).glob("shard-*"):  # still under the writer's lock
                p.unlink()
            w.close(write_manifest=False)
            raise
    return FeatureStore(folder)
