"""Extra positives: the metrics count every listed item as a correct answer (checked against a
per-query loop), subsets remap them, and bad sidecars are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tokenflow.data.base import RetrievalSplit
from tokenflow.data.positives import add_positives
from tokenflow.eval import retrieval_metrics


def _split(extra=()):
    return RetrievalSplit("toy/test", "image", [f"i{n}" for n in range(5)], [Path(f"{n}.png") for n in range(5)],
                          ["a", "b", "c", "d", "e", "f", "g"], [0, 0, 1, 2, 3, 4, 4], extra_positives=tuple(extra))


def _naive_recall(sim, correct, k):
    hits = 0
    for q in range(sim.shape[0]):
        best = max(float(sim[q, i]) for i in correct[q])
        rank = 1 + sum(1 for i in range(sim.shape[1]) if i not in correct[q] and float(sim[q, i]) >= best)
        hits += rank <= k
    return 100.0 * hits / sim.shape[0]


def test_multi_positive_metrics_match_a_loop():
    extra = [(1, 0), (3, 0), (2, 4), (0, 6)]
    split = _split(extra)
    g = torch.Generator().manual_seed(0)
    sim_t2v = torch.randn(len(split.texts), len(split), generator=g)
    correct = [{split.text_item[k]} | {i for i, kk in extra if kk == k} for k in range(len(split.texts))]
    m = retrieval_metrics(sim_t2v, split.positives().T)
    for k in (1, 5):
        assert m[f"R@{k}"] == pytest.approx(_naive_recall(sim_t2v, correct, k))
    plain = retrieval_metrics(sim_t2v, _split().positives().T)
    assert m["R@1"] >= plain["R@1"]  # more correct answers never rank worse
    # visual -> text: an item's correct texts include the captions that are also true of it
    items = [{k for k in range(len(split.texts)) if i in correct[k]} for i in range(len(split))]
    assert retrieval_metrics(sim_t2v.T, split.positives())["R@1"] == pytest.approx(
        _naive_recall(sim_t2v.T, items, 1))


def test_subset_remaps_and_drops_extra_positives():
    split = _split([(1, 0), (3, 0), (2, 4), (0, 6)])
    sub = split.subset([3, 0, 4])  # items i3, i0, i4 and their texts e, a, b, f, g
    assert sub.texts == ["a", "b", "e", "f", "g"]
    # (i3, "a") -> (0, 0); (i0, "g") -> (1, 4); (i1, "a") and (i2, "e") fall outside
    assert set(sub.extra_positives) == {(0, 0), (1, 4)}
    with pytest.raises(ValueError, match="extra positives"):
        _split([(9, 0)])


def test_sidecar_is_read_by_caption_and_item(tmp_path):
    path = tmp_path / "positives.json"
    path.write_text(json.dumps({"format": "tokenflow-positives/1", "positives": [
        {"split": "test", "item": "i0", "text": "b", "also": ["i2", "missing"]},
        {"split": "val", "item": "i0", "text": "a", "also": ["i1"]},
        {"item": "i4", "text": "g", "also": ["i3"]}]}))
    got = add_positives(_split(), path, "test")
    assert set(got.extra_positives) == {(2, 1), (3, 6)}


@pytest.mark.parametrize("body, message", [
    ({"positives": []}, "format"),
    ({"format": "tokenflow-positives/1", "positives": [{"item": "i0", "text": "a"}]}, r"positives\[0\]\.also"),
    ({"format": "tokenflow-positives/1", "positives": [{"item": 3, "text": "a", "also": []}]}, r"positives\[0\]\.item"),
])
def test_bad_sidecars_name_the_file_and_field(tmp_path, body, message):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match=message) as e:
        add_positives(_split(), path)
    assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="positives file"):
        add_positives(_split(), tmp_path / "none.json")
