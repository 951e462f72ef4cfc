"""The feature store: round trip, int8, resuming after a kill, damaged files."""

import json

import numpy as np
import pytest
import torch

from tests.helpers import make_tokens
from tokenflow.errors import FileError
from tokenflow.index import FeatureStore, StoreWriter, write_store
from tokenflow.index.store import MANIFEST

BACKBONE = {"name": "random", "sha256": "0" * 64}


def rand(n=23, length=7, dim=8, seed=0):
    tok = make_tokens(n, length, dim, gen=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return tok.zero_padding()


def ids_of(n):
    return [f"item{i}" for i in range(n)]


def shard_files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*"))}


@pytest.mark.parametrize("dtype, atol", [("fp32", 0.0), ("fp16", 1e-3), ("int8", 5e-3)])
def test_round_trip(tmp_path, dtype, atol):
    tok = rand()
    store = write_store(tmp_path / "s", tok, ids_of(23), [f"/x/{i}.jpg" for i in range(23)], kind="visual",
                        backbone=BACKBONE, dtype=dtype, shard_size=5)
    assert len(store) == 23 and store.ids == ids_of(23) and store.paths[3] == "/x/3.jpg"
    assert len(store.manifest["shards"]) == 5 and [s["rows"] for s in store.manifest["shards"]] == [5] * 4 + [3]
    m = store.manifest
    assert (m["dim"], m["max_tokens"], m["dtype"], m["kind"], m["count"]) == (8, 7, dtype, "visual", 23)
    assert m["backbone"] == BACKBONE and m["format_version"] == 1 and "date" in m and "tokenflow" in m
    rows = [22, 0, 7, 7, 13, 2, 1, 3]  # any order, repeats, runs, across shards
    back = store.tokens(rows)
    torch.testing.assert_close(back.mask, tok.mask[rows])
    torch.testing.assert_close(back.feats, tok.feats[rows], atol=atol, rtol=0)
    torch.testing.assert_close(back.pooled, tok.pooled[rows])  # global features are kept in fp32
    np.testing.assert_array_equal(store.global_features(), tok.pooled.numpy())
    assert isinstance(store.shard(0)["tokens"], np.memmap)


def test_int8_error_is_within_half_a_step(tmp_path):
    tok = rand(seed=1)
    back = write_store(tmp_path, tok, ids_of(23), kind="visual", backbone=BACKBONE, dtype="int8").tokens(range(23))
    step = tok.feats.abs().amax(-1, keepdim=True) / 127
    assert bool(((back.feats - tok.feats).abs() <= step / 2 + 1e-7).all())


def test_batches_of_other_lengths_are_padded_or_trimmed(tmp_path):
    a, b = rand(4, 5, seed=2), rand(3, 9, seed=3)
    b = type(b)(b.feats, b.mask & (torch.arange(9) < 5), b.pooled).zero_padding()
    with StoreWriter(tmp_path, kind="text", backbone=BACKBONE, max_tokens=6) as w:
        w.add(a, ids_of(4))
        w.add(b, ids_of(7)[4:])
    store = FeatureStore(tmp_path)
    assert store.max_tokens == 6
    torch.testing.assert_close(store.tokens([5]).feats[:, :5], b.feats[1:2, :5], atol=1e-3, rtol=0)
    w = StoreWriter(tmp_path / "t", kind="text", backbone=BACKBONE, max_tokens=3)
    with pytest.raises(ValueError, match="beyond the store's max_tokens=3"):
        w.add(a, ids_of(4))
    w.close(write_manifest=False)


def test_resume_after_a_kill_gives_the_same_files(tmp_path):
    tok = rand(seed=4)
    whole = tmp_path / "whole"
    write_store(whole, tok, ids_of(23), kind="visual", backbone=BACKBONE, shard_size=5)
    # a run killed after two shards, in the middle of writing the third
    part = tmp_path / "part"
    w = StoreWriter(part, kind="visual", backbone=BACKBONE, shard_size=5)
    w.add(tok[:12], ids_of(12))
    w.close(write_manifest=False)
    (part / "shard-00002.tokens.npy").write_bytes(b"half a shard")  # unfinished: no shard-00002.json
    (part / ".shard-00002.mask.npy.abc.tmp").write_bytes(b"junk")
    with pytest.raises(FileError, match=f"{part / MANIFEST}: no feature store manifest"):
        FeatureStore(part)
    again = StoreWriter(part, kind="visual", backbone=BACKBONE, shard_size=5)
    assert again.done == 10 and not list(part.glob("*.tmp"))
    again.close(write_manifest=False)
    write_store(part, tok, ids_of(23), kind="visual", backbone=BACKBONE, shard_size=5)  # the same loop, re-run
    assert shard_files(part) == shard_files(whole)
    strip = lambda m: {k: v for k, v in m.items() if k != "date"}  # noqa: E731
    assert strip(FeatureStore(part).manifest) == strip(FeatureStore(whole).manifest)
    # a finished store re-run changes nothing
    before = (whole / MANIFEST).read_bytes()
    write_store(whole, tok, ids_of(23), kind="visual", backbone=BACKBONE, shard_size=5)
    assert (whole / MANIFEST).read_bytes() == before


def test_resume_refuses_other_settings_or_rows(tmp_path):
    tok = rand(seed=5)
    write_store(tmp_path, tok, ids_of(23), kind="visual", backbone=BACKBONE, shard_size=5)
    with pytest.raises(FileError, match="other settings"):
        StoreWriter(tmp_path, kind="visual", backbone={"name": "other", "sha256": "1" * 64}, shard_size=5)
    with pytest.raises(FileError, match="differ from those already stored"):
        write_store(tmp_path, tok, [f"x{i}" for i in range(23)], kind="visual", backbone=BACKBONE, shard_size=5)


def test_damaged_stores_name_the_file(tmp_path):
    tok = rand(seed=6)
    folder = tmp_path / "s"
    write_store(folder, tok, ids_of(23), kind="visual", backbone=BACKBONE, shard_size=10)
    shard = folder / "shard-00001.tokens.npy"
    data = shard.read_bytes()
    shard.write_bytes(data[:-7])  # truncated
    with pytest.raises(FileError, match=f"{shard}: .* bytes, the manifest says"):
        FeatureStore(folder)
    shard.write_bytes(data[:-7] + b"\x01" * 7)  # same size, other bytes
    FeatureStore(folder)  # sizes agree: only the checksum finds it
    with pytest.raises(FileError, match=f"{shard}: sha256 differs"):
        FeatureStore(folder, verify=True)
    shard.unlink()
    with pytest.raises(FileError, match=f"{shard}: missing file"):
        FeatureStore(folder)
    manifest = folder / MANIFEST
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(FileError, match=f"{manifest}: feature store format version 99"):
        FeatureStore(folder)
    manifest.write_text("{not json")
    with pytest.raises(FileError, match=f"{manifest}: corrupt manifest"):
        FeatureStore(folder)
    with pytest.raises(FileError, match=f"{tmp_path / 'nothing' / MANIFEST}: no feature store manifest"):
        FeatureStore(tmp_path / "nothing")


def test_a_store_written_again_under_an_open_one_is_refused_not_misread(tmp_path):
    """A searcher keeps the headers it read at opening; files written in their place since then
    (another encode into the same folder) must raise, not be read at the old offsets."""
    folder = tmp_path / "s"
    store = write_store(folder, rand(n=12, seed=1), ids_of(12), kind="visual", backbone=BACKBONE, shard_size=5)
    torch.testing.assert_close(store.tokens([1, 7]).feats, rand(n=12, seed=1).feats[[1, 7]], atol=1e-3, rtol=0)
    for f in folder.glob("shard-*"):
        f.unlink()
    (folder / MANIFEST).unlink()
    write_store(folder, rand(n=12, length=9, seed=2), ids_of(12), kind="visual", backbone=BACKBONE, shard_size=5)
    with pytest.raises(FileError, match="shard-00000.tokens.npy: replaced since the store was opened"):
        store.tokens([1])
    torch.testing.assert_close(FeatureStore(folder).tokens([1]).feats, rand(n=12, length=9, seed=2).feats[[1]],
                               atol=1e-3, rtol=0)
    for f in folder.glob("shard-*"):
        f.unlink()
    with pytest.raises(FileError, match="shard-00000.tokens.npy: cannot be read any more"):
        store.tokens([1])


@pytest.mark.parametrize("field, value, message", [
    ("shards", "nope", "'shards' is not a list"),
    ("count", 99, "'count' is 99, the shards hold 23 rows"),
    ("dtype", "fp8", "'dtype' is 'fp8'"),
    ("dim", "8", "'dim' is '8', not a count"),
])
def test_a_corrupt_manifest_field_is_named(tmp_path, field, value, message):
    write_store(tmp_path, rand(seed=7), ids_of(23), kind="visual", backbone=BACKBONE, shard_size=10)
    manifest = tmp_path / MANIFEST
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), field: value}))
    with pytest.raises(FileError, match=f"{manifest}: corrupt manifest, .*{message}"):
        FeatureStore(tmp_path)


def test_corrupt_shard_entries_in_the_manifest_are_named(tmp_path):
    write_store(tmp_path, rand(seed=7), ids_of(23), kind="visual", backbone=BACKBONE, shard_size=10)
    manifest = tmp_path / MANIFEST
    good = json.loads(manifest.read_text())
    for damage, message in [(lambda s: s.pop("rows"), r"shards\[1\] lacks 'rows' or 'files'"),
                            (lambda s: s["files"].pop("mask"), r"shards\[1\].files are \['global', 'tokens'\]"),
                            (lambda s: s["files"]["global"].pop("bytes"), r"shards\[1\] 'global' is not a file entry"),
                            (lambda s: s["meta"].update(path="../elsewhere.json"), r"shards\[1\] 'meta' is not")]:
        m = json.loads(json.dumps(good))
        damage(m["shards"][1])
        manifest.write_text(json.dumps(m))
        with pytest.raises(FileError, match=f"{manifest}: corrupt manifest, {message}"):
            FeatureStore(tmp_path)
    manifest.write_text("[1, 2]")
    with pytest.raises(FileError, match="corrupt manifest, not a JSON object"):
        FeatureStore(tmp_path)


def test_corrupt_shard_metadata_is_named_by_reader_and_writer(tmp_path):
    write_store(tmp_path, rand(seed=8), ids_of(23), kind="visual", backbone=BACKBONE, shard_size=10)
    meta = tmp_path / "shard-00001.json"
    text = meta.read_text()
    meta.write_text(text.replace('"ids"', '"idz"'))  # the same size: opening the store does not notice
    store = FeatureStore(tmp_path)
    with pytest.raises(FileError, match=rf"{meta}: corrupt shard metadata, missing \['ids'\]"):
        store.ids
    with pytest.raises(FileError, match=rf"{meta}: corrupt shard metadata, missing \['ids'\]"):
        StoreWriter(tmp_path, kind="visual", backbone=BACKBONE, shard_size=10)
    meta.write_text("{" + text[1:-1] + "x")
    with pytest.raises(FileError, match=f"{meta}: corrupt shard metadata"):
        FeatureStore(tmp_path).paths
    with pytest.raises(FileError, match=f"{meta}: corrupt shard metadata"):
        write_store(tmp_path, rand(seed=8), ids_of(23), kind="visual", backbone=BACKBONE, shard_size=10)
    assert (tmp_path / "shard-00001.tokens.npy").is_file()  # refused, nothing removed


def test_a_shard_of_another_shape_is_named(tmp_path):
    folder = tmp_path / "s"
    write_store(folder, rand(n=12, seed=1), ids_of(12), kind="visual", backbone=BACKBONE, shard_size=5)
    np.save(tmp_path / "other.npy", np.zeros((5, 7, 9), dtype=np.float16))  # D=9, not 8
    shard = folder / "shard-00000.tokens.npy"
    (tmp_path / "other.npy").replace(shard)
    manifest = folder / MANIFEST
    m = json.loads(manifest.read_text())
    m["shards"][0]["files"]["tokens"]["bytes"] = shard.stat().st_size  # sizes agree: only the shape differs
    manifest.write_text(json.dumps(m))
    with pytest.raises(FileError, match=rf"{shard}: shape \(5, 7, 9\), the manifest says \(5, 7, 8\)"):
        FeatureStore(folder).tokens([1])
    with pytest.raises(FileError, match=rf"{shard}: shape \(5, 7, 9\)"):
        FeatureStore(folder).shard(0)


def test_a_resumed_writer_leaves_other_files_alone(tmp_path):
    tok = rand(seed=9)
    w = StoreWriter(tmp_path, kind="visual", backbone=BACKBONE, shard_size=5)
    w.add(tok[:12], ids_of(12))
    w.close(write_manifest=False)
    (tmp_path / "shard-notes.txt").write_text("mine")  # not a shard's file: kept, not parsed
    (tmp_path / "shard-00002.tokens.npy").write_bytes(b"half a shard")
    write_store(tmp_path, tok, ids_of(23), kind="visual", backbone=BACKBONE, shard_size=5)
    assert (tmp_path / "shard-notes.txt").read_text() == "mine" and FeatureStore(tmp_path).ids == ids_of(23)
