"""Index and two-stage search: FAISS shortlist vs brute force, re-ranking vs exhaustive scoring,
several stores vs one, and the errors."""

import json

import pytest
import torch

from tests.helpers import make_tokens
from tokenflow import get_aligner
from tokenflow.errors import FileError, UserError
from tokenflow.index import Indexer, Searcher, write_store

pytest.importorskip("faiss")

BACKBONE = {"name": "random", "sha256": "0" * 64}
N, D = 40, 8


def rand(n, length, seed, dim=D):
    return make_tokens(n, length, dim, gen=torch.Generator().manual_seed(seed), dtype=torch.float32).zero_padding()


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A visual store of N items (fp32, so exhaustive references are exact) and its flat index."""
    root = tmp_path_factory.mktemp("search")
    vis = rand(N, 6, seed=1)
    write_store(root / "store", vis, [f"v{i}" for i in range(N)], kind="visual", backbone=BACKBONE,
                dtype="fp32", shard_size=16)
    return root, vis, Indexer("flat").index(root / "store")


def exhaustive(vis, txt, aligner, w_global=1.0, w_fine=1.0):
    """[M, N] text->visual scores of everything: the reference of the two-stage search."""
    g = txt.pooled @ vis.pooled.T
    if aligner is None:
        return w_global * g
    return w_global * g + w_fine * aligner.pairwise(vis, txt).t2v.T


def test_flat_index_equals_brute_force_global_top_k(collection):
    root, vis, index_dir = collection
    assert index_dir == root / "store" / "index"
    info = json.loads((index_dir / "index.json").read_text())
    assert info["settings"]["kind"] == "flat" and info["count"] == N and info["store"] == ".."
    txt = rand(5, 4, seed=2)
    ref = exhaustive(vis, txt, None)
    for q, res in enumerate(Searcher(index_dir).search(txt, k=7)):
        top = torch.topk(ref[q], 7)
        assert res.ids == [f"v{i}" for i in top.indices.tolist()]
        torch.testing.assert_close(res.scores, top.values)
        assert res.fine_scores is None


@pytest.mark.parametrize("name", ["max-avg", "tokenflow"])
def test_whole_collection_shortlist_equals_exhaustive_ranking(collection, name):
    _, vis, index_dir = collection
    aligner = get_aligner(name)
    txt = rand(4, 5, seed=3)
    ref = exhaustive(vis, txt, aligner, w_global=0.5, w_fine=2.0)
    results = Searcher(index_dir, aligner=aligner, w_global=0.5, w_fine=2.0).search(txt, k=10, shortlist=N)
    for q, res in enumerate(results):
        top = torch.topk(ref[q], 10)
        assert res.ids == [f"v{i}" for i in top.indices.tolist()]
        torch.testing.assert_close(res.scores, top.values)
        torch.testing.assert_close(res.scores, 0.5 * res.global_scores + 2.0 * res.fine_scores)


def test_a_short_shortlist_re_ranks_the_global_top(collection):
    _, vis, index_dir = collection
    aligner = get_aligner("max-avg")
    txt = rand(3, 5, seed=4)
    g = exhaustive(vis, txt, None)
    for q, res in enumerate(Searcher(index_dir, aligner=aligner).search(txt, k=3, shortlist=8)):
        allowed = {f"v{i}" for i in torch.topk(g[q], 8).indices.tolist()}
        assert set(res.ids) <= allowed and len(res.ids) == 3
        assert res.scores.tolist() == sorted(res.scores.tolist(), reverse=True)


def test_visual_queries_over_a_text_store_use_v2t(tmp_path):
    txt = rand(30, 5, seed=5)
    write_store(tmp_path / "s", txt, [f"t{i}" for i in range(30)], kind="text", backbone=BACKBONE, dtype="fp32")
    vis = rand(3, 6, seed=6)
    aligner = get_aligner("tokenflow")
    ref = vis.pooled @ txt.pooled.T + aligner.pairwise(vis, txt).v2t
    results = Searcher(Indexer().index(tmp_path / "s"), aligner=aligner).search(vis, k=4, shortlist=30)
    for q, res in enumerate(results):
        top = torch.topk(ref[q], 4)
        assert res.ids == [f"t{i}" for i in top.indices.tolist()]
        torch.testing.assert_close(res.scores, top.values)


def test_several_stores_merge_to_the_result_of_one_index(tmp_path, collection):
    _, vis, whole = collection
    parts = []
    for s, (a, b) in enumerate([(0, 13), (13, 29), (29, N)]):
        write_store(tmp_path / f"s{s}", vis[a:b], [f"v{i}" for i in range(a, b)], kind="visual",
                    backbone=BACKBONE, dtype="fp32", shard_size=16)
        parts.append(Indexer().index(tmp_path / f"s{s}", tmp_path / f"i{s}"))
    txt = rand(6, 5, seed=7)
    aligner = get_aligner("max-avg")
    for kw in ({"k": 9}, {"k": 5, "shortlist": 12}):
        one = Searcher(whole, aligner=aligner).search(txt, **kw)
        merged = Searcher(parts, aligner=aligner).search(txt, **kw)
        for a, b in zip(one, merged):
            assert a.ids == b.ids
            torch.testing.assert_close(a.scores, b.scores)
            torch.testing.assert_close(a.global_scores, b.global_scores)


@pytest.mark.parametrize("kind, hp", [("ivf", {"nlist": 4, "nprobe": 4}), ("hnsw", {"m": 8, "ef_search": 64})])
def test_approximate_indexes_find_the_exact_top_on_a_small_collection(tmp_path, collection, kind, hp):
    _, vis, flat = collection
    index_dir = Indexer(kind, **hp).index(tmp_path.parent / collection[0].name / "store", tmp_path / kind)
    info = json.loads((index_dir / "index.json").read_text())
    assert info["settings"]["kind"] == kind
    txt = rand(4, 5, seed=8)
    for a, b in zip(Searcher(flat).search(txt, k=5), Searcher(index_dir).search(txt, k=5)):
        assert a.ids == b.ids


def test_k_larger_than_the_collection_returns_everything(collection):
    _, vis, index_dir = collection
    res = Searcher(index_dir, aligner=get_aligner("max-avg")).search(rand(2, 5, seed=9), k=1000, shortlist=5)
    assert all(len(r.ids) == N and sorted(r.ids) == sorted(f"v{i}" for i in range(N)) for r in res)


def test_errors(collection, tmp_path):
    _, vis, index_dir = collection
    searcher = Searcher(index_dir)
    with pytest.raises(UserError, match="empty query batch"):
        searcher.search(rand(3, 4, seed=1)[:0], k=3)
    with pytest.raises(UserError, match=f"queries have D=5 but the store {index_dir.parent}"):
        searcher.search(rand(2, 4, seed=1, dim=5), k=3)
    with pytest.raises(UserError, match="need a model"):
        searcher.search(["a red cube"], k=3)
    with pytest.raises(FileError, match="index.json: no index settings"):
        Searcher(tmp_path)
    with pytest.raises(UserError, match="cannot be searched together"):
        write_store(tmp_path / "s", rand(4, 3, seed=2, dim=5), list("abcd"), kind="visual", backbone=BACKBONE)
        Searcher([index_dir, Indexer().index(tmp_path / "s")])
    with pytest.raises(ValueError, match="index kind"):
        Indexer("lsh")


def test_text_queries_with_the_tiny_model(tmp_path, synth):
    from tokenflow.data import load_split
    from tokenflow.models.tiny import TinyCLIP, TinyConfig, WordTokenizer
    from tokenflow.index import encode_store
    from tokenflow.eval.evaluate import encode_split

    split = load_split("flickr30k", synth / "images", "test")
    torch.manual_seed(0)
    model = TinyCLIP(TinyConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, embed_dim=16),
                     WordTokenizer(sorted({w for t in split.texts for w in t.lower().split()}))).eval()
    store = encode_store(model, split, tmp_path / "store", dtype="fp32", shard_size=4, batch_size=2)
    assert store.ids == split.item_ids and store.kind == "visual" and len(store.manifest["shards"]) == 2
    enc = encode_split(model, split, batch_size=2)
    torch.testing.assert_close(store.tokens(range(len(split))).pooled, enc.vis.pooled)
    aligner = get_aligner("tokenflow")
    res = Searcher(Indexer().index(tmp_path / "store"), model=model, aligner=aligner).search(split.texts[:3], k=2)
    ref = exhaustive(enc.vis, enc.txt[:3], aligner)
    for q, r in enumerate(res):
        assert r.ids == [split.item_ids[i] for i in torch.topk(ref[q], 2).indices.tolist()]
    other = TinyCLIP(TinyConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, embed_dim=8),
                     WordTokenizer(["x"]))
    with pytest.raises(UserError, match="has D=8 but the store .* has D=16"):
        Searcher(tmp_path / "store" / "index", model=other)


def test_encode_store_resumes_at_the_first_unfinished_shard(tmp_path, synth, monkeypatch):
    from tokenflow.data import load_split
    from tokenflow.models.tiny import TinyCLIP, TinyConfig, WordTokenizer
    from tokenflow.index import encode, encode_store

    split = load_split("flickr30k", synth / "images", "test")
    torch.manual_seed(0)
    model = TinyCLIP(TinyConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, embed_dim=16),
                     WordTokenizer(["red"])).eval()
    encode_store(model, split, tmp_path / "whole", shard_size=2, batch_size=2)
    part = tmp_path / "part"
    encode_store(model, split, part, shard_size=2, batch_size=2)
    (part / "manifest.json").unlink()  # killed while writing the last shard
    (part / "shard-00002.json").unlink()
    kept = (part / "shard-00000.tokens.npy").stat().st_mtime_ns
    calls = []
    real = encode.encode_items
    monkeypatch.setattr(encode, "encode_items", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    store = encode_store(model, split, part, shard_size=2, batch_size=2)
    assert calls == [[4, 5]] and (part / "shard-00000.tokens.npy").stat().st_mtime_ns == kept
    same = [p.name for p in sorted((tmp_path / "whole").glob("shard-*"))]
    assert same == [p.name for p in sorted(part.glob("shard-*"))]
    assert all((part / n).read_bytes() == (tmp_path / "whole" / n).read_bytes() for n in same)
    assert store.ids == split.item_ids
    # another model's weights are refused as the query model
    other = TinyCLIP(TinyConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, embed_dim=16),
                     WordTokenizer(["red"]))
    with pytest.raises(UserError, match="is not the backbone that encoded"):
        Searcher(Indexer().index(part), model=other)
    Searcher(part / "index", model=other, check_backbone=False)


def test_a_damaged_or_stale_index_names_the_file(tmp_path):
    write_store(tmp_path / "s", rand(10, 3, seed=1), list("abcdefghij"), kind="visual", backbone=BACKBONE)
    index_dir = Indexer("ivf", nlist=64).index(tmp_path / "s")
    assert json.loads((index_dir / "index.json").read_text())["settings"]["nlist"] == 1  # capped at N / 39
    name = json.loads((index_dir / "index.json").read_text())["file"]
    (index_dir / name).write_bytes(b"junk")
    with pytest.raises(FileError, match=rf"{name}: not a readable FAISS index"):
        Searcher(index_dir)
    Indexer().index(tmp_path / "s")
    write_store(tmp_path / "s", rand(12, 3, seed=1), list("abcdefghijkl"), kind="visual", backbone=BACKBONE)
    with pytest.raises(FileError, match="built over another version of the store"):
        Searcher(index_dir)


def test_another_index_format_version_is_refused(collection, tmp_path):
    import shutil

    _, _, index_dir = collection
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    info = json.loads((copy / "index.json").read_text())
    info["store"] = str((index_dir / info["store"]).resolve())
    (copy / "index.json").write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(FileError, match="version 99; this tokenflow reads"):
        Searcher(copy)


@pytest.mark.parametrize(("kind", "encoding"), [("ivf", "sq8"), ("ivf", "fp16"), ("hnsw", "sq8")])
def test_quantised_encodings_keep_the_global_top(tmp_path, kind, encoding):
    vis = rand(400, 4, seed=5, dim=32)
    write_store(tmp_path / "s", vis, [str(i) for i in range(400)], kind="visual", backbone=BACKBONE, dtype="fp32")
    index_dir = Indexer(kind, encoding=encoding, nlist=4, nprobe=4).index(tmp_path / "s")
    txt = rand(6, 3, seed=6, dim=32)
    ref = txt.pooled @ vis.pooled.T
    for q, res in enumerate(Searcher(index_dir).search(txt, k=5)):
        exact = {str(i) for i in torch.topk(ref[q], 5).indices.tolist()}
        assert len(exact & set(res.ids)) >= 4  # sq8 may swap a near tie, never the whole top
    with pytest.raises(ValueError, match="needs kind ivf or hnsw"):
        Indexer("flat", encoding="sq8")


def test_a_rebuild_swaps_the_index_whole(collection, tmp_path):
    """Searchers opened before, during (the new file written, index.json not yet replaced) and
    after a rebuild each see one complete index; the old FAISS file goes once nothing names it."""
    root, vis, _ = collection
    store = tmp_path / "store"
    import shutil

    shutil.copytree(root / "store", store, ignore=shutil.ignore_patterns("index"))
    first = Indexer("flat").index(store)
    name1 = json.loads((first / "index.json").read_text())["file"]
    txt = rand(2, 4, seed=7)
    before = [r.ids for r in Searcher(first).search(txt, k=5)]
    from tokenflow.utils import write_text_atomic

    real = write_text_atomic
    seen = {}

    def spy(path, text):  # a search just before index.json is replaced sees the old index
        if path.name == "index.json":
            seen["during"] = [r.ids for r in Searcher(first).search(txt, k=5)]
            seen["files"] = sorted(p.name for p in first.glob("faiss*.index"))
        return real(path, text)

    import tokenflow.index.shortlist as shortlist

    shortlist.write_text_atomic = spy
    try:
        Indexer("hnsw", m=8).index(store)
    finally:
        shortlist.write_text_atomic = real
    info = json.loads((first / "index.json").read_text())
    assert seen["during"] == before and len(seen["files"]) == 2 and name1 in seen["files"]
    assert info["settings"]["kind"] == "hnsw"
    assert sorted(p.name for p in first.glob("faiss*.index")) == [info["file"]] != [name1]
    assert [r.ids for r in Searcher(first).search(txt, k=5)] == before


def test_with_plan_shares_the_index_and_leaves_the_searcher_as_it_was(collection):
    _, vis, index_dir = collection
    base = Searcher(index_dir)
    other = base.with_plan(get_aligner("max-avg"), w_fine=2.0)
    assert base.aligner is None and base.w_fine == 1.0 and other.indexes is base.indexes
    txt = rand(3, 5, seed=8)
    ref = exhaustive(vis, txt, get_aligner("max-avg"), w_fine=2.0)
    for q, res in enumerate(other.search(txt, k=4, shortlist=N)):
        assert res.ids == [f"v{i}" for i in torch.topk(ref[q], 4).indices.tolist()]


def test_scores_are_exact_whatever_the_index_stores(tmp_path):
    """An 8-bit index chooses the shortlist; the scores come from the stored float32 features."""
    vis = rand(300, 4, seed=9, dim=16)
    write_store(tmp_path / "s", vis, [str(i) for i in range(300)], kind="visual", backbone=BACKBONE, dtype="fp32")
    txt = rand(4, 3, seed=10, dim=16)
    ref = txt.pooled @ vis.pooled.T
    for res_q, q in zip(Searcher(Indexer("hnsw", encoding="sq8", m=8).index(tmp_path / "s")).search(txt, k=5),
                        range(4), strict=True):
        exact = ref[q, [int(i) for i in res_q.ids]]
        torch.testing.assert_close(res_q.scores, exact)
        torch.testing.assert_close(res_q.global_scores, exact)


def test_an_empty_shortlist_gives_an_empty_result(collection, monkeypatch):
    import numpy as np

    _, _, index_dir = collection
    searcher = Searcher(index_dir, aligner=get_aligner("tokenflow"))
    monkeypatch.setattr(searcher.indexes[0], "search",
                        lambda x, k: (np.full((len(x), k), -np.inf, dtype=np.float32), np.full((len(x), k), -1)))
    (res,) = searcher.search(rand(1, 3, seed=11), k=3)
    assert res.ids == [] and len(res.scores) == 0
