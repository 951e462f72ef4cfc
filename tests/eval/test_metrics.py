import math
import statistics

import pytest
import torch

from tokenflow.eval import ranks, retrieval_metrics


def naive_ranks(sim, pos):
    """Sort each row; among equal scores put negatives first (pessimistic), return 1-based rank."""
    out = []
    for q in range(sim.shape[0]):
        order = sorted(range(sim.shape[1]), key=lambda i: (-float(sim[q, i]), bool(pos[q, i])))
        out.append(next(k + 1 for k, i in enumerate(order) if pos[q, i]))
    return out


def test_hand_made_matrix():
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.3, 0.2, 0.1]])
    # query 0: item 0 first -> 1; query 1: item 1 after item 0 -> 2; query 2: item 2 last -> 3.
    assert ranks(sim).tolist() == [1, 2, 3]
    m = retrieval_metrics(sim)
    assert m["R@1"] == pytest.approx(100 / 3)
    assert m["R@5"] == 100.0
    assert m["MdR"] == 2.0 and m["MnR"] == 2.0


def test_ties_do_not_inflate_recall():
    sim = torch.zeros(4, 4)
    assert ranks(sim).tolist() == [4, 4, 4, 4]
    assert retrieval_metrics(sim)["R@1"] == 0.0
    sim = torch.tensor([[1.0, 1.0, 0.0]])
    assert ranks(sim).tolist() == [2]


def test_several_positives_take_the_best_ranked():
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.7]])
    pos = torch.tensor([[True, False, True, False]])
    assert ranks(sim, pos).tolist() == [3]
    # positives tied with each other do not push each other down
    sim = torch.tensor([[0.5, 0.5, 0.2]])
    pos = torch.tensor([[True, True, False]])
    assert ranks(sim, pos).tolist() == [1]


@pytest.mark.parametrize("seed", range(5))
def test_against_naive(seed):
    g = torch.Generator().manual_seed(seed)
    q, n = 23, 17
    sim = torch.randint(0, 6, (q, n), generator=g).float()  # many ties
    pos = torch.rand(q, n, generator=g) < 0.15
    pos[torch.arange(q), torch.randint(0, n, (q,), generator=g)] = True
    want = naive_ranks(sim, pos)
    assert ranks(sim, pos, chunk=4).tolist() == want
    m = retrieval_metrics(sim, pos)
    for k in (1, 5, 10, 50):
        assert m[f"R@{k}"] == pytest.approx(100 * sum(r <= k for r in want) / q)
    assert m["MdR"] == pytest.approx(statistics.median(want))
    assert m["MnR"] == pytest.approx(sum(want) / q)


def test_rectangular_diagonal_default_and_dtype():
    sim = torch.eye(3, 5, dtype=torch.bfloat16)
    assert ranks(sim).tolist() == [1, 1, 1]


@pytest.mark.parametrize(
    "sim,pos,msg",
    [
        (torch.zeros(3), None, r"\[queries, items\]"),
        (torch.zeros(4, 3), None, "diagonal"),
        (torch.zeros(2, 2), torch.zeros(2, 2), "bool tensor of shape"),
        (torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]), r"queries \[1\] have none"),
        (torch.tensor([[math.nan, 0.0], [0.0, 1.0]]), None, "NaN"),
        (torch.zeros(0, 2), None, "at least one"),
    ],
)
def test_bad_input(sim, pos, msg):
    with pytest.raises(ValueError, match=msg):
        ranks(sim, pos)
