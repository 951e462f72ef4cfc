"""``tokenflow encode``, ``index`` and ``search`` end to end on the synthetic benchmark: the
printed and JSON results equal the exhaustive ranking, parts (torchrun ranks) merge exactly, a
killed encode or index re-runs to identical output, and bad input gets a clear message."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tokenflow import get_aligner
from tokenflow.cli import main
from tokenflow.index import FeatureStore
from tokenflow.index.collections import index_dirs

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def built(tmp_path_factory, synth, model_dir):
    store = tmp_path_factory.mktemp("cli") / "store"
    assert main(["encode", "--model", str(model_dir), "--dataset", "flickr30k", "--root", str(synth / "images"),
                 "--split", "test", "--out", str(store), "--dtype", "fp32", "--shard-size", "8", "--quiet"]) == 0
    assert main(["index", str(store)]) == 0
    return store


def _exhaustive(model_dir, synth, texts, aligner):
    from tokenflow.data import load_split
    from tokenflow.eval.evaluate import encode_split, similarity
    from tokenflow.models import load_backbone

    split = load_split("flickr30k", synth / "images", "test")
    model = load_backbone(model_dir)
    enc = encode_split(model, split, batch_size=8)
    txt = model.encode_text_strings(texts).to("cpu")
    _, t2v = similarity(enc.vis, txt, aligner)
    return split, t2v.T  # [texts, items]


def test_search_prints_and_writes_the_exhaustive_top(built, synth, model_dir, tmp_path, capsys):
    from tokenflow.data import load_split

    texts = load_split("flickr30k", synth / "images", "test").texts[:2]
    out = tmp_path / "res.json"
    argv = ["search", "--index", str(built), "--k", "3", "--shortlist", "1000", "--aligner", "max-avg",
            "--json", str(out)]
    for t in texts:
        argv += ["--text", t]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    split, ref = _exhaustive(model_dir, synth, texts, get_aligner("max-avg"))
    assert report["aligner"] == "max-avg" and report["k"] == 3 and len(report["queries"]) == 2
    for q, block in enumerate(report["queries"]):
        top = torch.topk(ref[q], 3)
        assert [r["id"] for r in block["results"]] == [split.item_ids[i] for i in top.indices.tolist()]
        torch.testing.assert_close(torch.tensor([r["score"] for r in block["results"]]), top.values,
                                   rtol=1e-4, atol=1e-4)
        assert all(r["path"].endswith(".jpg") and r["path"].startswith("/") for r in block["results"])
        assert f"query: {texts[q]}" in printed and block["results"][0]["id"] in printed


def test_parts_from_ranks_merge_to_one_collection(tmp_path, synth, model_dir, built):
    """Two ranks (RANK/WORLD_SIZE as torchrun sets them) each write a part; searching the parts
    gives the result of the single store."""
    store = tmp_path / "parts"
    env = {**os.environ, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    for rank in (0, 1):
        subprocess.run([sys.executable, "-m", "tokenflow", "encode", "--model", str(model_dir), "--dataset",
                        "flickr30k", "--root", str(synth / "images"), "--out", str(store), "--dtype", "fp32",
                        "--quiet"], env={**env, "RANK": str(rank)}, check=True, capture_output=True)
    parts = [FeatureStore(store / f"part-00{r}") for r in (0, 1)]
    assert parts[0].tokens_info == {"modality": "image"}
    whole = FeatureStore(built)
    assert parts[0].ids + parts[1].ids == whole.ids
    assert main(["index", str(store), "--kind", "flat"]) == 0
    assert index_dirs(store) == [store / "part-000" / "index", store / "part-001" / "index"]
    res = {}
    for name, where in (("parts", store), ("whole", built)):
        assert main(["search", "--index", str(where), "--text", "red circle", "--k", "5", "--aligner",
                     "tokenflow", "--json", str(tmp_path / f"{name}.json")]) == 0
        res[name] = [(r["id"], round(r["score"], 5)) for r in
                     json.loads((tmp_path / f"{name}.json").read_text())["queries"][0]["results"]]
    assert res["parts"] == res["whole"]


def test_a_killed_encode_or_index_reruns_to_identical_output(tmp_path, synth, model_dir):
    store = tmp_path / "store"
    argv = [sys.executable, "-m", "tokenflow", "encode", "--model", str(model_dir), "--dataset", "flickr30k",
            "--root", str(synth / "images"), "--out", str(store), "--shard-size", "2", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(argv, env=env, check=True, capture_output=True)
    reference = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file() and not p.name.startswith(".")}
    manifest = json.loads(reference.pop("manifest.json"))
    # a kill after the first shard: its files stay, the manifest and later shards are not written
    for p in store.iterdir():
        if p.is_file() and not p.name.startswith(("shard-00000.", ".")):
            p.unlink()
    (store / ".shard-00001.tokens.npy.1234.tmp").write_bytes(b"half")  # what a kill inside a write leaves
    subprocess.run(argv, env=env, check=True, capture_output=True)
    again = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file() and not p.name.startswith(".")}
    manifest2 = json.loads(again.pop("manifest.json"))
    assert not list(store.glob(".*.tmp"))
    assert again == reference
    assert {k: v for k, v in manifest2.items() if k != "date"} == {k: v for k, v in manifest.items() if k != "date"}
    assert main(["index", str(store), "--kind", "flat"]) == 0
    first = {p.name: p.read_bytes() for p in (store / "index").iterdir() if p.name.startswith("faiss")}
    (store / "index" / "faiss.index.new").write_bytes(b"a kill while writing")
    assert main(["index", str(store), "--kind", "flat"]) == 0
    assert {p.name: p.read_bytes() for p in (store / "index").iterdir() if p.name.startswith("faiss")} == first


def test_bad_input_is_named(built, tmp_path, capsys, model_dir):
    texts = tmp_path / "texts.txt"
    texts.write_text("a red circle\n")
    cases = [
        (["search", "--index", str(tmp_path), "--text", "a"], "no feature store here"),
        (["search", "--index", str(built), "--text", "  "], "empty query"),
        (["search", "--index", str(built), "--text", "x" * 3000], "at most 2000"),
        (["search", "--index", str(built), "--text", "a", "--k", "0"], "at least 1"),
        (["search", "--index", str(built)], "needs queries"),
        (["search", "--index", str(built), "--text", "a", "--aligner", "tokenflow", "--hp", "lam=fast"], "lam"),
        (["search", "--index", str(built), "--text", "a", "--aligner", "mpa", "--hp", "heads=3"],
         "plan 'mpa': heads=3 does not divide the embedding size dim=16"),
        (["encode", "--model", str(model_dir), "--out", str(tmp_path / "s")], "needs what to encode"),
        (["encode", "--model", str(model_dir), "--texts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "s")],
         "none.txt not found"),
        (["index", str(tmp_path / "missing")], "no feature store here"),
        (["encode", "--model", str(model_dir), "--texts", str(texts), "--out", str(tmp_path / "s"), "--max-words",
          "99"], "tokenflow encode: --max-words: max_words 99: this tiny text encoder has"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_encode_a_dataset_without_root_names_root(tmp_path, capsys, model_dir):
    """``encode --dataset`` without ``--root`` is the user's to fix (exit 2 naming --root), not an
    internal error, and writes nothing."""
    assert main(["encode", "--model", str(model_dir), "--dataset", "flickr30k", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "tokenflow encode: --dataset flickr30k needs --root" in err and "internal error" not in err
    assert not (tmp_path / "s").exists()


def test_k_beyond_the_collection_returns_every_item(built, tmp_path):
    out = tmp_path / "all.json"
    assert main(["search", "--index", str(built), "--text", "red circle", "--k", "10000", "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())["queries"][0]["results"]) == len(FeatureStore(built))


def test_a_text_store_answers_image_queries(tmp_path, synth, model_dir):
    from tokenflow.data import load_split

    split = load_split("flickr30k", synth / "images", "test")
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(split.texts[:20]) + "\n")
    store = tmp_path / "texts"
    assert main(["encode", "--model", str(model_dir), "--texts", str(captions), "--out", str(store), "--quiet"]) == 0
    assert FeatureStore(store).kind == "text" and FeatureStore(store).ids[:2] == ["1", "2"]
    assert FeatureStore(store).tokens_info == {"modality": "text"}
    assert main(["index", str(store)]) == 0
    out = tmp_path / "r.json"
    assert main(["search", "--index", str(store), "--image", str(split.item_paths[0]), "--k", "4",
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())["queries"][0]["results"]
    assert len(results) == 4 and all(r["text"] == split.texts[int(r["id"]) - 1] for r in results)
    assert FeatureStore(store).texts == split.texts[:20]


def test_evaluate_reports_the_two_stage_metrics_apart(synth, model_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    argv = ["evaluate", "--dataset", "flickr30k", "--root", str(synth / "images"), "--model", str(model_dir),
            "--aligner", "max-avg", "--out", str(out), "--quiet"]
    assert main([*argv, "--rerank-top", "2"]) == 0
    report = json.loads(out.read_text())
    block = report["metrics_rerank"]
    assert block["top"] == 2 and set(block["t2v"]) == set(report["metrics"]["t2v"])
    assert "t->v [two-stage, shortlist 2]" in capsys.readouterr().out
    assert main([*argv, "--rerank-top", "1000"]) == 0  # a shortlist of everything is the exhaustive ranking
    report = json.loads(out.read_text())
    assert report["metrics_rerank"]["t2v"] == report["metrics"]["t2v"]
    assert main([*argv, "--rerank-top", "0"]) == 2


def test_an_unfinished_part_or_other_inputs_are_refused(tmp_path, synth, model_dir, built, capsys):
    import shutil

    store = tmp_path / "parts"
    shutil.copytree(built, store / "part-000", ignore=shutil.ignore_patterns("index"))
    (store / "part-001").mkdir()  # a rank that died before its first shard
    assert main(["index", str(store)]) == 2
    assert "part-001 are unfinished" in capsys.readouterr().err
    # resuming a store with other inputs (here: the val split into the test split's store)
    part = store / "part-000"
    (part / "manifest.json").unlink()
    assert main(["encode", "--model", str(model_dir), "--dataset", "flickr30k", "--root", str(synth / "images"),
                 "--split", "val", "--out", str(part), "--dtype", "fp32", "--shard-size", "8", "--quiet"]) == 2
    assert "hold other inputs" in capsys.readouterr().err
