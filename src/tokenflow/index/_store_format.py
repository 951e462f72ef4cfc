"""The feature store's files: names, shared settings, and reading and checking what is on disk.

Everything here that a user can break (a missing, truncated, corrupt or foreign file) raises
:class:`~tokenflow.errors.FileError` naming the file and, for a bad JSON file, the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import numpy as np

from .._version import __version__
from ..errors import FileError

FORMAT = "tokenflow-feature-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
StoreDtype = Literal["fp16", "fp32", "int8"]
StoreKind = Literal["visual", "text"]
NP_DTYPE = {"fp16": np.float16, "fp32": np.float32, "int8": np.int8}
#: Settings that every shard of a store shares; a re-run with other values is refused.
SHARED = ("kind", "backbone", "dim", "max_tokens", "dtype", "shard_size", "tokens", "source")
#: What a shard's ``.json`` holds, for the writer resuming and for readers.
SHARD_META_FIELDS = ("name", "rows", "files", "ids", "paths", "skipped", "settings")
#: A shard's files: ``shard-00000.tokens.npy``, ``shard-00000.json``, ... (group 1: its number).
SHARD_FILE = re.compile(r"^shard-(\d{5})\.")
_MANIFEST_FIELDS = ("kind", "backbone", "dim", "max_tokens", "dtype", "count", "shards")


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of the file at ``path``, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict:
    """A written file as the manifest records it: name, size and sha256."""
    return {"path": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileError(f"{path}: corrupt {what} ({e})") from None
    if not isinstance(data, dict):
        raise FileError(f"{path}: corrupt {what}, not a JSON object")
    return data


def read_manifest(folder: Path) -> dict:
    """``folder``'s manifest, its format version and structure checked (not its files)."""
    path = folder / MANIFEST
    if not path.is_file():
        hint = " (an unfinished store: run the encoding again to finish it)" if any(folder.glob("shard-*")) else ""
        raise FileError(f"{path}: no feature store manifest{hint}")
    m = _read_json(path, "manifest")
    if m.get("format") != FORMAT:
        raise FileError(f"{path}: not a tokenflow feature store manifest")
    if m.get("format_version") != FORMAT_VERSION:
        raise FileError(f"{path}: feature store format version {m.get('format_version')}, this tokenflow "
                        f"({__version__}) reads version {FORMAT_VERSION}; encode the collection again")
    missing = [k for k in _MANIFEST_FIELDS if k not in m]
    if missing:
        raise FileError(f"{path}: corrupt manifest, missing {missing}")
    _check_fields(path, m)
    return m


def _check_fields(path: Path, m: dict) -> None:
    """The manifest fields that readers index into: a corrupt one raises here, naming it."""
    def bad(field: str, why: str) -> FileError:
        return FileError(f"{path}: corrupt manifest, {field} {why}")

    if m["kind"] not in ("visual", "text"):
        raise bad("'kind'", f"is {m['kind']!r}, not 'visual' or 'text'")
    if m["dtype"] not in NP_DTYPE:
        raise bad("'dtype'", f"is {m['dtype']!r}, not one of {sorted(NP_DTYPE)}")
    for key in ("dim", "max_tokens", "count"):
        if not _is_count(m[key]):
            raise bad(f"{key!r}", f"is {m[key]!r}, not a count")
    if not isinstance(m["shards"], list):
        raise bad("'shards'", "is not a list")
    want = {"tokens", "mask", "global"} | ({"scales"} if m["dtype"] == "int8" else set())
    for k, s in enumerate(m["shards"]):
        if not isinstance(s, dict) or not _is_count(s.get("rows")) or not isinstance(s.get("files"), dict):
            raise bad(f"shards[{k}]", "lacks 'rows' or 'files'")
        if set(s["files"]) != want:
            raise bad(f"shards[{k}].files", f"are {sorted(s['files'])}, a {m['dtype']} store has {sorted(want)}")
        for key, f in [*s["files"].items(), ("meta", s.get("meta"))]:
            if not _is_entry(f):
                raise bad(f"shards[{k}] {key!r}", "is not a file entry {path, bytes, sha256}")
    total = sum(s["rows"] for s in m["shards"])
    if total != m["count"]:
        raise bad("'count'", f"is {m['count']}, the shards hold {total} rows")


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _is_entry(f: object) -> bool:
    return (isinstance(f, dict) and isinstance(f.get("path"), str) and Path(f["path"]).name == f["path"]
            and _is_count(f.get("bytes")) and isinstance(f.get("sha256"), str))


def read_shard_meta(path: Path, fields: tuple[str, ...] = SHARD_META_FIELDS) -> dict:
    """A shard's ``.json``, with ``fields`` checked to be there (and ids, paths lists of ``rows``)."""
    meta = _read_json(path, "shard metadata")
    missing = [k for k in fields if k not in meta]
    if missing:
        raise FileError(f"{path}: corrupt shard metadata, missing {missing}")
    if "rows" in fields and not _is_count(meta["rows"]):
        raise FileError(f"{path}: corrupt shard metadata, 'rows' is {meta['rows']!r}, not a count")
    for key in ("ids", "paths"):
        if key in fields and not (isinstance(meta[key], list) and len(meta[key]) == meta.get("rows")):
            raise FileError(f"{path}: corrupt shard metadata, {key!r} is not a list of 'rows' ({meta.get('rows')})")
    if "files" in fields and not (isinstance(meta["files"], dict) and all(map(_is_entry, meta["files"].values()))):
        raise FileError(f"{path}: corrupt shard metadata, 'files' are not file entries {{path, bytes, sha256}}")
    if "settings" in fields and not isinstance(meta["settings"], dict):
        raise FileError(f"{path}: corrupt shard metadata, 'settings' is not an object")
    return meta


def check_file(path: Path, entry: dict, verify: bool) -> None:
    """``path`` is there with the size ``entry`` records (and, with ``verify``, its sha256)."""
    if not path.is_file():
        raise FileError(f"{path}: missing file of the feature store")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise FileError(f"{path}: {size} bytes, the manifest says {entry['bytes']} (truncated or changed)")
    if verify and sha256_file(path) != entry["sha256"]:
        raise FileError(f"{path}: sha256 differs from the manifest (corrupt or changed)")


def check_shape(path: Path, shape: tuple[int, ...], key: str, rows: int, max_tokens: int, dim: int) -> None:
    """A shard's ``key`` array (tokens, scales, mask, global) has the shape the manifest implies."""
    want = {"tokens": (rows, max_tokens, dim), "scales": (rows, max_tokens), "mask": (rows, max_tokens),
            "global": (rows, dim)}[key]
    if tuple(shape) != want:
        raise FileError(f"{path}: shape {tuple(shape)}, the manifest says {want} (written by another store?)")
