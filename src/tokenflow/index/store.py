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

This module is the store's front; the parts live in ``_store_format.py`` (file names, reading
and checking the manifest and shard metadata), ``_store_writer.py`` (:class:`StoreWriter`) and
``_store_reader.py`` (:class:`FeatureStore`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..tokens import Tokens
from ._store_format import FORMAT_VERSION, MANIFEST, StoreDtype, StoreKind
from ._store_format import sha256_file  # noqa: F401 (importable from here, as before the split)
from ._store_reader import FeatureStore
from ._store_writer import StoreWriter

__all__ = ["FORMAT_VERSION", "MANIFEST", "FeatureStore", "StoreWriter", "StoreDtype", "StoreKind", "write_store"]


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
