"""Build a FAISS index over the global features of a feature store (inner product).

``Indexer(kind).index(store)`` writes ``faiss-<sha256>.index`` and ``index.json`` (its frozen
settings, the index file's name, the store it indexes and the store manifest's sha256, FAISS and
tokenflow versions, the date) into ``out_dir`` (default: ``STORE/index``).

Rebuilding is safe while others search: the new FAISS file gets a new name (its content's hash),
``index.json`` is replaced atomically to point at it, and only then is the old file removed. A
reader therefore sees the previous complete index or the new one, never a mix; a kill leaves the
previous index in force. Kinds: ``flat`` (exact), ``ivf`` (``nlist`` lists, ``nprobe`` searched)
and ``hnsw`` (``m`` neighbours, ``ef_search``); ``encoding`` stores the vectors as ``flat``
(fp32), ``fp16`` or ``sq8`` (8-bit scalar quantisation: a quarter of the memory of fp32), for
``ivf`` and ``hnsw``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .._extras import require
from .._version import __version__
from ..errors import FileError, InputError
from ..utils import atomic_path, folder_lock, remove_temporaries, write_text_atomic
from .store import MANIFEST, FeatureStore, sha256_file

__all__ = ["INDEX_FORMAT", "INDEX_FORMAT_VERSION", "INDEX_SETTINGS", "IndexSettings", "Indexer", "load_index"]

INDEX_FORMAT, INDEX_FORMAT_VERSION = "tokenflow-index", 1
INDEX_SETTINGS = "index.json"
IndexKind = Literal["flat", "ivf", "hnsw"]
IndexEncoding = Literal["flat", "fp16", "sq8"]
_FACTORY_CODE = {"flat": "Flat", "fp16": "SQfp16", "sq8": "SQ8"}


def _faiss():
    return require("faiss", "search", "building or searching a search index")


@dataclass(frozen=True)
class IndexSettings:
    """How an index is built and searched; frozen once built (saved in ``index.json``).

    ``nlist``: IVF lists (capped at N / 39, FAISS's least training points per list);
    ``nprobe``: IVF lists searched; ``m``: HNSW neighbours per node; ``ef_construction`` /
    ``ef_search``: HNSW candidate list sizes; ``train_size``: most rows used to train IVF;
    ``encoding``: how ivf and hnsw store the vectors (flat fp32, fp16, sq8).
    """

    kind: IndexKind = "flat"
    encoding: IndexEncoding = "flat"
    nlist: int = 1024
    nprobe: int = 16
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    train_size: int = 262_144
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("flat", "ivf", "hnsw"):
            raise InputError(f"index kind must be 'flat', 'ivf' or 'hnsw', got {self.kind!r}")
        if self.encoding not in _FACTORY_CODE:
            raise InputError(f"index encoding must be 'flat', 'fp16' or 'sq8', got {self.encoding!r}")
        if self.kind == "flat" and self.encoding != "flat":
            raise InputError(f"a flat index stores fp32 vectors; encoding {self.encoding!r} needs kind ivf or hnsw")
        for name in ("nlist", "nprobe", "m", "ef_construction", "ef_search", "train_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")


class Indexer:
    """``Indexer(kind="flat"|"ivf"|"hnsw", **settings).index(store_folder)``: see :class:`IndexSettings`."""

    def __init__(self, kind: IndexKind = "flat", **settings):
        self.settings = IndexSettings(kind=kind, **settings)

    def index(self, store_folder: str | Path, out_dir: str | Path | None = None) -> Path:
        """Build the index over ``store_folder``'s global features; returns the index folder.

        A rebuild replaces the previous index only once the new one is complete (module doc)."""
        faiss = _faiss()
        store = FeatureStore(store_folder)
        out = Path(out_dir) if out_dir is not None else store.folder / "index"
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out):
            remove_temporaries(out, (".*.tmp", "faiss.index.new"))
            index, settings = self._build(faiss, store)
            with atomic_path(out / "faiss.index.new") as tmp:
                faiss.write_index(index, str(tmp))
            name = f"faiss-{sha256_file(out / 'faiss.index.new')[:16]}.index"
            os.replace(out / "faiss.index.new", out / name)
            info = {"format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION,
                    "settings": dataclasses.asdict(settings), "file": name,
                    "store": os.path.relpath(store.folder.resolve(), out.resolve()),
                    "store_manifest_sha256": sha256_file(store.folder / MANIFEST), "count": len(store),
                    "dim": store.dim, "kind": store.kind, "backbone": store.backbone, "faiss": faiss.__version__,
                    "tokenflow": __version__,
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            write_text_atomic(out / INDEX_SETTINGS, json.dumps(info, indent=1))
            for old in out.glob("faiss*.index"):  # the previous index, now that nothing points at it
                if old.name != name:
                    old.unlink(missing_ok=True)
        return out

    def _build(self, faiss, store: FeatureStore):
        s, d, n = self.settings, store.dim, len(store)
        code = _FACTORY_CODE[s.encoding]
        if s.kind == "ivf":  # FAISS wants at least 39 training points per list
            s = dataclasses.replace(s, nlist=max(1, min(s.nlist, n // 39, s.train_size // 39)))
        factory = {"flat": "Flat", "hnsw": f"HNSW{s.m},{code}", "ivf": f"IVF{s.nlist},{code}"}[s.kind]
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        if s.kind == "hnsw":
            index.hnsw.efConstruction = s.ef_construction
        if not index.is_trained:  # IVF centroids, scalar quantiser ranges
            rng = np.random.default_rng(s.seed)
            rows = np.sort(rng.choice(n, size=min(n, s.train_size), replace=False))
            index.train(np.ascontiguousarray(_rows_global(store, rows)))
        for _, g in store.iter_global():
            index.add(np.ascontiguousarray(g, dtype=np.float32))
        return index, s


def _rows_global(store: FeatureStore, rows: np.ndarray) -> np.ndarray:
    return store.global_rows(rows)


def load_index(index_dir: str | Path):
    """``(faiss index, info dict, FeatureStore)`` of an index folder, checked against its store.

    Reads ``index.json`` and then the file it names; when a rebuild removed that file in between,
    reads the new ``index.json`` once more."""
    faiss = _faiss()
    index_dir = Path(index_dir)
    for attempt in range(3):  # a rebuild may remove the file index.json named a moment ago
        info, settings = _read_settings(index_dir)
        path = index_dir / info.get("file", "faiss.index")
        try:
            index = faiss.read_index(str(path))
            break
        except RuntimeError as e:
            if path.is_file() or attempt == 2:
                raise FileError(f"{path}: not a readable FAISS index ({str(e).splitlines()[0]})") from None
    store = FeatureStore(index_dir / info["store"])
    if sha256_file(store.folder / MANIFEST) != info["store_manifest_sha256"]:
        raise FileError(f"{index_dir}: built over another version of the store {store.folder}; build the index again")
    if index.ntotal != len(store):
        raise FileError(f"{path}: {index.ntotal} vectors, the store {store.folder} has {len(store)}")
    if settings.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = settings.nprobe
    elif settings.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = settings.ef_search
    return index, info, store


def _read_settings(index_dir: Path) -> tuple[dict, IndexSettings]:
    path = index_dir / INDEX_SETTINGS
    if not path.is_file():
        raise FileError(f"{path}: no index settings (not an index folder, or an unfinished index: build it again)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FileError(f"{path}: corrupt index settings ({e})") from None
    if info.get("format") != INDEX_FORMAT or info.get("format_version") != INDEX_FORMAT_VERSION:
        raise FileError(f"{path}: format {info.get('format')!r} version {info.get('format_version')!r}; this "
                        f"tokenflow reads {INDEX_FORMAT!r} version {INDEX_FORMAT_VERSION}: build the index again")
    try:
        return info, IndexSettings(**info["settings"])
    except (KeyError, TypeError, ValueError) as e:
        raise FileError(f"{path}: corrupt index settings ({e})") from None
