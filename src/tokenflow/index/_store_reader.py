"""The reading side of the feature store: :class:`FeatureStore` and its positioned row reads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import FileError
from ..tokens import Tokens
from ._store_format import check_file, check_shape, read_manifest, read_shard_meta


class FeatureStore:
    """A finished store, opened read-only (see :mod:`tokenflow.index.store` for the layout).

    Opening reads ``manifest.json`` and checks its format version and that every file exists
    with the size it was written with (a missing, corrupt or truncated file raises
    :class:`FileError` naming it); ``verify=True`` also checks every sha256 (reads everything).
    """

    def __init__(self, folder: str | Path, *, verify: bool = False):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        m = self.manifest
        self.kind, self.dim, self.max_tokens, self.dtype = m["kind"], m["dim"], m["max_tokens"], m["dtype"]
        self.backbone = m["backbone"] or {}  # {} for imported features: see manifest["source"]
        self.tokens_info: dict | None = m.get("tokens")  # modality, video_tokens, frames (see StoreWriter)
        self._offsets = np.cumsum([0] + [s["rows"] for s in m["shards"]])
        for s in m["shards"]:
            for f in [*s["files"].values(), s["meta"]]:
                check_file(self.folder / f["path"], f, verify)
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
            path = self.folder / s["meta"]["path"]
            meta = read_shard_meta(path, ("rows", "ids", "paths"))
            if meta["rows"] != s["rows"]:
                raise FileError(f"{path}: corrupt shard metadata, 'rows' is {meta['rows']}, the manifest says "
                                f"{s['rows']}")
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
            arrays = {}
            for key, f in self.manifest["shards"][k]["files"].items():
                path = self.folder / f["path"]
                try:
                    arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
                except (ValueError, OSError) as e:
                    raise FileError(f"{path}: not a readable .npy file ({e})") from None
                self._check_shape(k, key, path, arrays[key].shape)
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

    def _check_shape(self, k: int, key: str, path: Path, shape: tuple[int, ...]) -> None:
        check_shape(path, shape, key, self.manifest["shards"][k]["rows"], self.max_tokens, self.dim)

    def _by_shard(self, rows: np.ndarray):
        """Per shard holding some of ``rows``: (their positions in ``rows``, the shard's row files,
        their rows within the shard)."""
        shard_of = np.searchsorted(self._offsets, rows, side="right") - 1
        for k in np.unique(shard_of):
            sel = np.nonzero(shard_of == k)[0]
            yield sel, self._row_files(int(k)), rows[sel] - self._offsets[k]

    def _row_files(self, k: int) -> dict[str, _RowFile]:
        if k not in self._rows:
            files = {key: _RowFile(self.folder / f["path"]) for key, f in self.manifest["shards"][k]["files"].items()}
            for key, rf in files.items():
                self._check_shape(k, key, rf.path, rf.shape)
            self._rows[k] = files
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
