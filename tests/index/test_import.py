"""``tokenflow import-features``: features computed elsewhere become a feature store in the format
``encode`` writes; every file format error names the file and the array; a killed import resumes
and a bad one leaves nothing behind."""

import json

import numpy as np
import pytest
import torch

from tokenflow.cli import main
from tokenflow.errors import FileError
from tokenflow.index import FeatureStore
from tokenflow.index.importer import import_features, store_source

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def arrays(n=6, length=5, dim=8, seed=0, prefix="v", dtype=np.float32):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, length), bool)
    mask[::2, length - 2 :] = False  # every other row padded
    return {"feats": rng.standard_normal((n, length, dim)).astype(dtype), "mask": mask,
            "pooled": rng.standard_normal((n, dim)).astype(dtype), "ids": np.array([f"{prefix}{i}" for i in range(n)])}


def save_npz(path, a, compressed=False):
    (np.savez_compressed if compressed else np.savez)(path, **a)
    return path


def save_st(path, a):
    a = dict(a)
    meta = {k: json.dumps([str(x) for x in a.pop(k)]) for k in ("ids", "paths", "texts") if k in a}
    safetensors_numpy.save_file(a, str(path), metadata=meta)
    return path


def test_import_npz_and_safetensors_give_the_stored_rows(tmp_path):
    a, b = arrays(seed=0, prefix="a"), arrays(seed=1, prefix="b")
    a["paths"] = np.array([f"/media/a{i}.jpg" for i in range(6)])
    files = [save_npz(tmp_path / "a.npz", a), save_st(tmp_path / "b.safetensors", b)]
    store = import_features(files, tmp_path / "store", kind="visual", model="open_clip ViT-B-32", note="laion2b",
                            dtype="fp32", shard_size=4, normalize=False)
    assert len(store) == 12 and store.kind == "visual" and store.dim == 8 and store.max_tokens == 5
    assert store.ids == [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)]
    assert store.paths[:2] == ["/media/a0.jpg", "/media/a1.jpg"] and store.paths[6] is None
    assert [s["rows"] for s in store.manifest["shards"]] == [4, 2, 4, 2]  # no shard spans two files
    tok = store.tokens(list(range(12)))
    for k, src in enumerate((a, b)):
        rows = slice(6 * k, 6 * k + 6)
        want = np.where(src["mask"][..., None], src["feats"], 0)
        torch.testing.assert_close(tok.feats[rows], torch.from_numpy(want))
        torch.testing.assert_close(tok.pooled[rows], torch.from_numpy(src["pooled"]))
        assert torch.equal(tok.mask[rows], torch.from_numpy(src["mask"]))
    m = store.manifest
    assert m["backbone"] is None and store.backbone == {}
    src = store_source(store)
    assert src["kind"] == "imported" and src["model"] == "open_clip ViT-B-32" and src["note"] == "laion2b"
    assert [f["name"] for f in src["files"]] == ["a.npz", "b.safetensors"] and len(src["sha256"]) == 64
    assert m["tokens"] == {"modality": "image"}
    FeatureStore(tmp_path / "store", verify=True)  # every file's sha256 as the manifest says


def test_bf16_fp16_compressed_and_integer_inputs(tmp_path):
    st_torch = pytest.importorskip("safetensors.torch")
    a = arrays(dtype=np.float16)
    a["mask"] = a["mask"].astype(np.uint8)
    a["ids"] = np.arange(6)
    f1 = save_npz(tmp_path / "a.npz", a, compressed=True)
    b = arrays(seed=2)
    feats = torch.from_numpy(b["feats"]).bfloat16()
    st_torch.save_file({"feats": feats, "mask": torch.from_numpy(b["mask"]),
                        "pooled": torch.from_numpy(b["pooled"]).bfloat16(), "ids": torch.arange(10, 16)},
                       str(tmp_path / "b.safetensors"))
    store = import_features([f1, tmp_path / "b.safetensors"], tmp_path / "s", kind="visual", model="m", dtype="fp32",
                            normalize=False)
    assert store.ids == [str(i) for i in range(6)] + [str(i) for i in range(10, 16)]
    tok = store.tokens(list(range(12)))
    torch.testing.assert_close(tok.feats[6:], torch.where(torch.from_numpy(b["mask"])[..., None], feats.float(), 0.0))
    torch.testing.assert_close(tok.feats[:6], torch.from_numpy(np.where(a["mask"][..., None] == 1,
                                                                        a["feats"].astype(np.float32), 0)))


def test_normalized_by_default_or_kept_as_given(tmp_path, capsys):
    """Raw features (norms far from 1) are L2-normalised on import unless --no-normalize: real
    tokens and pooled features, a zero vector staying zero; the manifest's source says which."""
    a = arrays(seed=4)
    a["feats"] *= 7.0
    a["feats"][1, 2] = 0.0  # a real token of norm 0
    f = save_npz(tmp_path / "a.npz", a)
    assert main(["import-features", str(f), "--out", str(tmp_path / "N"), "--kind", "visual", "--model-name", "m",
                 "--dtype", "fp32"]) == 0
    assert "L2-normalised" in capsys.readouterr().out
    assert main(["import-features", str(f), "--out", str(tmp_path / "R"), "--kind", "visual", "--model-name", "m",
                 "--dtype", "fp32", "--no-normalize"]) == 0
    norm, raw = FeatureStore(tmp_path / "N"), FeatureStore(tmp_path / "R")
    assert store_source(norm)["normalized"] is True and store_source(raw)["normalized"] is False
    mask = torch.from_numpy(a["mask"])
    feats, pooled = torch.from_numpy(a["feats"]), torch.from_numpy(a["pooled"])
    got = norm.tokens(list(range(6)))
    want = torch.where(mask[..., None], torch.nn.functional.normalize(feats, dim=-1), 0.0)
    torch.testing.assert_close(got.feats, want)
    torch.testing.assert_close(got.pooled, torch.nn.functional.normalize(pooled, dim=-1))
    assert torch.allclose(got.feats[mask].norm(dim=-1)[[0, 1, 3]], torch.ones(3)) and not got.feats[1, 2].any()
    kept = raw.tokens(list(range(6)))
    torch.testing.assert_close(kept.feats, torch.where(mask[..., None], feats, 0.0))
    torch.testing.assert_close(kept.pooled, pooled)
    # the API defaults to normalising too; a resumed import with the other choice is refused
    assert store_source(import_features([f], tmp_path / "A", kind="visual", model="m"))["normalized"] is True
    with pytest.raises(FileError, match="other settings"):
        import_features([f], tmp_path / "A", kind="visual", model="m", normalize=False)


def test_cli_import_text_store_and_its_manifest(tmp_path, capsys):
    a = arrays(prefix="img#")
    a["texts"] = np.array([f"caption {i}" for i in range(6)])
    f = save_npz(tmp_path / "t.npz", a)
    assert main(["import-features", str(f), "--out", str(tmp_path / "T"), "--kind", "text", "--model-name",
                 "eva", "--note", "text tower"]) == 0
    assert "6 text rows of eva imported" in capsys.readouterr().out
    store = FeatureStore(tmp_path / "T")
    assert store.texts == [f"caption {i}" for i in range(6)] and store.dtype == "fp16"
    assert store.manifest["tokens"] == {"modality": "text"} and store.manifest["source"]["note"] == "text tower"


def _bad(tmp_path, name, change, fmt="npz", kind="visual"):
    a = arrays()
    change(a)
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "npz":
        np.savez(path, **a)
    else:
        save_st(path, a)
    return path, kind


def _drop(key):
    return lambda a: a.pop(key)


def _set(key, value):
    return lambda a: a.__setitem__(key, value(a) if callable(value) else value)


def _nan_at(key, index):
    def change(a):
        a[key] = a[key].copy()
        a[key][index] = np.nan
    return change


def _empty_row(a):
    a["mask"][3] = False


def _dup(a):
    a["ids"] = np.array(["v0", "v1", "v0", "v3", "v4", "v5"])


ERRORS = [
    ("missing", _drop("mask"), "npz", "no array 'mask'"),
    ("feats2d", _set("feats", lambda a: a["feats"][:, 0]), "npz", "array 'feats' has shape [6, 8]; expected [N, L, D]"),
    ("featsint", _set("feats", lambda a: a["feats"].astype(np.int32)), "npz", "array 'feats' has dtype int32"),
    ("pooledint", _set("pooled", lambda a: a["pooled"].astype(np.int64)), "npz", "array 'pooled' has dtype int64"),
    ("maskshape", _set("mask", lambda a: a["mask"][:, :3]), "npz",
     "array 'mask' has shape [6, 3]; expected [N, L] = [6, 5]"),
    ("maskfloat", _set("mask", lambda a: a["mask"].astype(np.float32)), "npz", "array 'mask' has dtype float32"),
    ("maskvalues", _set("mask", lambda a: a["mask"].astype(np.int8) * 2), "npz", "mask: row 0 (id 'v0') holds 2"),
    ("pooledshape", _set("pooled", lambda a: a["pooled"][:, :4]), "npz",
     "array 'pooled' has shape [6, 4]; expected [N, D] = [6, 8]"),
    ("idscount", _set("ids", lambda a: a["ids"][:4]), "npz", "'ids' has 4 entries; expected one per row of feats (6)"),
    ("ids2d", _set("ids", lambda a: a["ids"].reshape(2, 3)), "npz", "array 'ids' has shape [2, 3]"),
    ("idsfloat", _set("ids", np.ones(6)), "npz", "array 'ids' has dtype float64; expected strings or integers"),
    ("idsobject", _set("ids", lambda a: a["ids"].astype(object)), "npz", "object array"),
    ("idsempty", _set("ids", lambda a: np.array(["a", "b", "", "d", "e", "f"])), "npz", "ids: row 2 has an empty id"),
    ("dup", _dup, "npz", "ids: 'v0' (row 2) is also the id of row 0 of this file"),
    ("nanfeats", _nan_at("feats", (1, 2, 0)), "npz", "feats: row 1 (id 'v1') has NaN or Inf at real token 2"),
    ("inffeats", _nan_at("feats", (4, 0, 7)), "safetensors", "feats: row 4 (id 'v4') has NaN or Inf at real token 0"),
    ("nanpooled", _nan_at("pooled", (5, 1)), "npz", "pooled: row 5 (id 'v5') has NaN or Inf"),
    ("empty", _empty_row, "safetensors", "mask: row 3 (id 'v3') has no real token (all False)"),
    ("textsinvisual", _set("texts", lambda a: np.array(["x"] * 6)), "npz", "array 'texts' in a visual store"),
    ("stmissing", _drop("pooled"), "safetensors", "no array 'pooled'"),
]


@pytest.mark.parametrize("name,change,fmt,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_every_file_error_names_the_file_and_array(tmp_path, name, change, fmt, message):
    path, kind = _bad(tmp_path, name, change, fmt)
    with pytest.raises(FileError) as e:
        import_features([path], tmp_path / "out", kind=kind, model="m", shard_size=4)
    assert str(path) in str(e.value) and message in str(e.value), str(e.value)
    assert not (tmp_path / "out" / "manifest.json").exists() and not list((tmp_path / "out").glob("shard-*"))


def test_nan_in_padding_is_dropped_not_refused(tmp_path):
    a = arrays()
    a["feats"][0, 4] = np.nan  # row 0's last two tokens are padding
    store = import_features([save_npz(tmp_path / "a.npz", a)], tmp_path / "s", kind="visual", model="m")
    assert torch.isfinite(store.tokens([0]).feats).all()


def test_errors_across_files(tmp_path):
    f1 = save_npz(tmp_path / "one.npz", arrays())
    f2 = save_st(tmp_path / "two.safetensors", arrays(seed=3))  # the same ids v0..v5
    with pytest.raises(FileError, match=r"two\.safetensors: ids: 'v0' \(row 0\) is also the id of row 0 of .*one\.npz"):
        import_features([f1, f2], tmp_path / "out", kind="visual", model="m")
    f3 = save_npz(tmp_path / "three.npz", arrays(dim=4, prefix="w"))
    with pytest.raises(FileError, match=r"three\.npz: array 'feats' has D=4, but .*one\.npz has D=8"):
        import_features([f1, f3], tmp_path / "out", kind="visual", model="m")
    # a value error in the second file removes the shards the first one gave
    bad = arrays(prefix="x")
    bad["pooled"][2, 0] = np.inf
    f4 = save_npz(tmp_path / "four.npz", bad)
    with pytest.raises(FileError, match=r"four\.npz: pooled: row 2 \(id 'x2'\)"):
        import_features([f1, f4], tmp_path / "out", kind="visual", model="m", shard_size=2)
    assert not list((tmp_path / "out").glob("shard-*")) and not (tmp_path / "out" / "manifest.json").exists()


def test_unreadable_files(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(FileError, match="junk.npz: not a readable .npz file"):
        import_features([junk], tmp_path / "o", kind="visual", model="m")
    st = save_st(tmp_path / "cut.safetensors", arrays())
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(FileError, match=r"cut\.safetensors: tensor '\w+' .* do not fit the shape or the file"):
        import_features([st], tmp_path / "o", kind="visual", model="m")
    head = tmp_path / "head.safetensors"
    head.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(FileError, match="head.safetensors: not a safetensors file"):
        import_features([head], tmp_path / "o", kind="visual", model="m")
    meta = tmp_path / "meta.safetensors"
    a = arrays()
    a.pop("ids")
    safetensors_numpy.save_file(a, str(meta), metadata={"ids": "v0, v1"})
    with pytest.raises(FileError, match="meta.safetensors: metadata 'ids' is not a JSON list"):
        import_features([meta], tmp_path / "o", kind="visual", model="m")
    other = tmp_path / "x.pt"
    other.write_bytes(b"")
    with pytest.raises(FileError, match=r"x\.pt: expected a \.npz or \.safetensors file"):
        import_features([other], tmp_path / "o", kind="visual", model="m")
    assert main(["import-features", str(junk), "--out", str(tmp_path / "o"), "--kind", "visual",
                 "--model-name", "m"]) == 2


def test_a_missing_file_is_a_file_error_naming_it(tmp_path, capsys):
    with pytest.raises(FileError, match=r"nope\.npz: feature file not found"):
        import_features([tmp_path / "nope.npz"], tmp_path / "o", kind="visual", model="m")
    with pytest.raises(FileError, match="a folder: give the .npz or .safetensors files in it"):
        import_features([tmp_path], tmp_path / "o", kind="visual", model="m")
    assert main(["import-features", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o"), "--kind", "visual",
                 "--model-name", "m"]) == 2
    assert "nope.npz: feature file not found" in capsys.readouterr().err


def test_a_killed_import_resumes_to_the_same_store(tmp_path, monkeypatch):
    from tokenflow.index import importer

    files = [save_npz(tmp_path / "a.npz", arrays(n=7, prefix="a")), save_st(tmp_path / "b.safetensors", arrays(n=5))]
    ref = import_features(files, tmp_path / "ref", kind="visual", model="m", shard_size=3)
    real, calls = importer._chunk, []

    def dies(f, rows, *rest):
        calls.append(rows)
        if len(calls) == 4:  # the first chunk of the second file
            raise KeyboardInterrupt
        return real(f, rows, *rest)

    monkeypatch.setattr(importer, "_chunk", dies)
    with pytest.raises(KeyboardInterrupt):
        import_features(files, tmp_path / "s", kind="visual", model="m", shard_size=3)
    assert not (tmp_path / "s" / "manifest.json").exists() and len(list((tmp_path / "s").glob("shard-*.json"))) == 3
    monkeypatch.setattr(importer, "_chunk", real)
    calls.clear()
    store = import_features(files, tmp_path / "s", kind="visual", model="m", shard_size=3)
    assert store.ids == ref.ids and store.manifest["source"] == ref.manifest["source"]
    assert [s["files"] for s in store.manifest["shards"]] == [s["files"] for s in ref.manifest["shards"]]
    # other files into the same folder: refused, naming the folder
    with pytest.raises(FileError, match="holds shards written with other settings"):
        import_features(files[:1], tmp_path / "s", kind="visual", model="m", shard_size=3)


def test_encoded_store_source_and_old_manifests(tmp_path):
    from tokenflow.index import write_store
    from tokenflow.tokens import Tokens

    tok = Tokens(torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.bool), torch.randn(3, 8))
    store = write_store(tmp_path / "s", tok, ["a", "b", "c"], kind="visual", backbone={"name": "x", "sha256": "0"})
    assert store_source(store) == {"kind": "encoded", "backbone": {"name": "x", "sha256": "0"}}
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m.pop("source")  # a store written before imports existed
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    assert store_source(FeatureStore(tmp_path / "s"))["kind"] == "encoded"
