"""Two-stage metrics (evaluate --rerank-top) against a per-query loop written from the definition,
and against what the Searcher returns over an exact index."""

import pytest
import torch

from tests.helpers import make_tokens
from tokenflow import get_aligner
from tokenflow.eval.metrics import retrieval_metrics
from tokenflow.eval.two_stage import two_stage_metrics, two_stage_scores


def naive_order(g: list[float], f: list[float], top: int) -> list[int]:
    """Item order of one query: the ``top`` best by g, sorted by f; then the rest, sorted by g."""
    by_g = sorted(range(len(g)), key=lambda i: -g[i])
    short, rest = by_g[:top], by_g[top:]
    return sorted(short, key=lambda i: -f[i]) + rest


@pytest.mark.parametrize("top", [1, 3, 7, 50])
def test_keys_rank_like_the_definition(top):
    gen = torch.Generator().manual_seed(top)
    g, f = torch.randn(9, 20, generator=gen, dtype=torch.float64), torch.randn(9, 20, generator=gen,
                                                                               dtype=torch.float64) * 5
    keys = two_stage_scores(g, f, top)
    for q in range(9):
        assert keys[q].argsort(descending=True).tolist() == naive_order(g[q].tolist(), f[q].tolist(), top)


def test_a_whole_shortlist_is_exhaustive_and_one_item_is_global():
    gen = torch.Generator().manual_seed(0)
    g, fv, ft = (torch.randn(12, 30, generator=gen) for _ in range(3))
    pos = torch.zeros(12, 30, dtype=torch.bool)
    pos[torch.arange(30) % 12, torch.arange(30)] = True  # text j describes item j % 12
    full = two_stage_metrics(g, fv, ft, pos, top=30)
    assert full["t2v"] == retrieval_metrics(ft.T, pos.T) and full["v2t"] == retrieval_metrics(fv, pos)
    assert full["top10_overlap_with_exhaustive"] == {"t2v": 100.0, "v2t": 100.0}
    one = two_stage_metrics(g, fv, ft, pos, top=1)
    assert one["t2v"]["R@1"] == retrieval_metrics(g.T, pos.T)["R@1"]
    with pytest.raises(ValueError, match="at least one"):
        two_stage_scores(g, fv, 0)


def test_equals_the_searcher_over_a_flat_index(tmp_path):
    pytest.importorskip("faiss")
    from tokenflow.eval.evaluate import similarity
    from tokenflow.index import Indexer, Searcher, write_store

    gen = torch.Generator().manual_seed(3)
    vis = make_tokens(40, 6, 8, gen=gen, dtype=torch.float32).zero_padding()
    txt = make_tokens(10, 4, 8, gen=gen, dtype=torch.float32).zero_padding()
    write_store(tmp_path / "s", vis, [str(i) for i in range(40)], kind="visual",
                backbone={"name": "x", "sha256": "0" * 64}, dtype="fp32")
    aligner = get_aligner("tokenflow")
    g = similarity(vis, txt, None)[0]
    _, t2v = similarity(vis, txt, aligner)
    keys = two_stage_scores(g.T, t2v.T, 6)
    results = Searcher(Indexer().index(tmp_path / "s"), aligner=aligner).search(txt, k=6, shortlist=6)
    for q, res in enumerate(results):
        assert res.ids == [str(i) for i in keys[q].topk(6).indices.tolist()]
