"""Test-time normalisation (DSL, inverted softmax, QB-Norm) against loops written from the formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from tokenflow import Tokens, get_aligner
from tokenflow.data import RetrievalSplit
from tokenflow.eval import retrieval_metrics
from tokenflow.eval.evaluate import Encoded, evaluate, format_table, similarity
from tokenflow.eval.test_norm import apply_test_norm, dual_softmax, inverted_softmax, querybank_norm
from tokenflow.models import TinyCLIP, TinyConfig, WordTokenizer


def naive_dsl(sim, t):
    q, n = len(sim), len(sim[0])
    out = [[0.0] * n for _ in range(q)]
    for i in range(n):
        z = sum(math.exp(sim[b][i] / t) for b in range(q))
        for a in range(q):
            out[a][i] = sim[a][i] * math.exp(sim[a][i] / t) / z
    return out


def naive_is(sim, t, bank):
    return [[math.exp(sim[a][i] / t) / sum(math.exp(b[i] / t) for b in bank) for i in range(len(sim[0]))]
            for a in range(len(sim))]


def naive_dis(sim, t, bank, k):
    """Bogolin et al. 2022 eq 4: IS over the bank for a query whose top-1 item is a hub, else plain."""
    n = len(sim[0])
    hubs = set()
    for b in bank:
        hubs |= set(sorted(range(n), key=lambda i: -b[i])[:k])
    is_ = naive_is(sim, t, bank)
    out = []
    for a, row in enumerate(sim):
        top1 = max(range(n), key=lambda i: row[i])
        out.append(is_[a] if top1 in hubs else list(row))
    return out


def rand(q, n, seed):
    return torch.rand(q, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_dual_softmax_matches_the_formula():
    sim = rand(5, 4, 0)
    torch.testing.assert_close(dual_softmax(sim, 0.2), torch.tensor(naive_dsl(sim.tolist(), 0.2), dtype=torch.float64))


def test_inverted_softmax_matches_the_formula_in_log_form():
    sim, bank = rand(5, 4, 1), rand(7, 4, 2)
    torch.testing.assert_close(inverted_softmax(sim, 0.1).exp(),
                               torch.tensor(naive_is(sim.tolist(), 0.1, sim.tolist()), dtype=torch.float64))
    torch.testing.assert_close(inverted_softmax(sim, 0.1, bank).exp(),
                               torch.tensor(naive_is(sim.tolist(), 0.1, bank.tolist()), dtype=torch.float64))


@pytest.mark.parametrize("k, n_hub_rows", [(1, 3), (2, 6), (3, 7)])
def test_querybank_norm_matches_the_dynamic_inverted_softmax(k, n_hub_rows):
    # 8 items, 2 bank queries: at most 2k hubs, so for every k some rows are normalised and some kept
    sim, bank = rand(9, 8, 3), rand(2, 8, 4)
    got = querybank_norm(sim, bank, 0.1, k)
    want = naive_dis(sim.tolist(), 0.1, bank.tolist(), k)
    hub_rows = [a for a in range(9) if want[a] != sim[a].tolist()]
    assert len(hub_rows) == n_hub_rows  # both branches, and more hubs as k grows
    for a in range(9):
        row = got[a].exp() if a in hub_rows else got[a]
        torch.testing.assert_close(row, torch.tensor(want[a], dtype=torch.float64))


def test_querybank_norm_leaves_queries_without_a_hub_alone():
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8]])
    bank = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]])  # only item 0 is a hub
    out = querybank_norm(sim, bank, 0.05)
    torch.testing.assert_close(out[1], sim[1].double())
    torch.testing.assert_close(out[0], inverted_softmax(sim, 0.05, bank)[0])


def test_a_hub_is_demoted():
    # item 0 scores high for every query: DSL and IS lower it for the query that wants item 1
    sim = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.85, 0.2]])
    assert sim[1].argmax() == 0
    assert dual_softmax(sim, 0.05)[1].argmax() == 1
    assert inverted_softmax(sim, 0.05)[1].argmax() == 1


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown test-time"):
        apply_test_norm("csls", rand(2, 2, 0))
    with pytest.raises(ValueError, match="query bank"):
        apply_test_norm("qbnorm", rand(2, 2, 0))
    with pytest.raises(ValueError, match="temperature"):
        dual_softmax(rand(2, 2, 0), 0.0)
    with pytest.raises(ValueError, match="bank"):
        querybank_norm(rand(2, 3, 0), rand(2, 2, 0))


def toy(seed=0):
    g = torch.Generator().manual_seed(seed)

    def tok(n, length, d=8):
        return Tokens(F.normalize(torch.randn(n, length, d, generator=g), dim=-1), torch.ones(n, length, dtype=torch.bool),
                      F.normalize(torch.randn(n, d, generator=g), dim=-1))

    split = RetrievalSplit("toy", "image", list("abcd"), [None] * 4, [f"t{k}" for k in range(8)],
                           [k // 2 for k in range(8)])
    return split, tok(4, 3), tok(8, 5), tok(6, 5)


@pytest.mark.parametrize("method", ["dsl", "isl", "qbnorm"])
def test_report_keeps_plain_and_normalised_metrics_apart(method):
    split, vis, txt, bank = toy()
    model = TinyCLIP(TinyConfig(), WordTokenizer(["x"]))
    al = get_aligner("max-avg")
    rep = evaluate(model, split, al, encoded=Encoded(split, vis, txt), test_norm=method,
                   query_bank=bank if method == "qbnorm" else None, bank_info={"split": "train"})
    v2t, t2v = similarity(vis, txt, al)
    pos = split.positives()
    assert rep["metrics"]["t2v"] == retrieval_metrics(t2v.T, pos.T)  # plain, untouched
    assert rep["metrics"]["v2t"] == retrieval_metrics(v2t, pos)
    block = rep["metrics_test_norm"]
    assert block["method"] == method and block["temperature"] > 0
    bank_t2v = similarity(vis, bank, al)[1].T if method == "qbnorm" else None
    assert block["t2v"] == retrieval_metrics(apply_test_norm(method, t2v.T, bank=bank_t2v), pos.T)
    if method == "qbnorm":
        assert "v2t" not in block and block["bank"] == {"texts": 6, "split": "train"} and block["k"] == 1
    else:
        assert block["v2t"] == retrieval_metrics(apply_test_norm(method, v2t), pos)
    table = format_table(rep)
    label = {"dsl": "DSL", "isl": "ISL", "qbnorm": "QB-Norm"}[method]
    assert f"t->v [{label}, test-time norm]" in table
    assert ("v->t [" in table) == (method != "qbnorm")
    assert table.splitlines()[1].startswith("text->visual ")


def test_qbnorm_without_a_bank_is_refused():
    split, vis, txt, _ = toy()
    model = TinyCLIP(TinyConfig(), WordTokenizer(["x"]))
    with pytest.raises(Exception, match="query bank"):
        evaluate(model, split, None, encoded=Encoded(split, vis, txt), test_norm="qbnorm")


def test_plain_report_has_no_normalised_block():
    split, vis, txt, _ = toy()
    model = TinyCLIP(TinyConfig(), WordTokenizer(["x"]))
    rep = evaluate(model, split, None, encoded=Encoded(split, vis, txt))
    assert "metrics_test_norm" not in rep and "test-time" not in format_table(rep)
    assert rep["settings"]["max_words"] == 32


def test_cli_test_norm_qbnorm_and_max_words(synth, tmp_path, capsys):
    import json

    from tokenflow.cli import main
    from tokenflow.data import load_split

    root = synth / "images"
    train = load_split("flickr30k", root, "train")
    TinyCLIP(TinyConfig(), WordTokenizer.build(train.texts)).save_pretrained(tmp_path / "m")
    out = tmp_path / "r.json"
    args = ["evaluate", "--dataset", "flickr30k", "--root", str(root), "--model", str(tmp_path / "m"), "--aligner",
            "max-avg", "--quiet", "--max-words", "12"]
    assert main([*args, "--test-norm", "qbnorm", "--qb-size", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "t->v [QB-Norm, test-time norm]" in printed
    rep = json.loads(out.read_text())
    assert rep["metrics_test_norm"]["bank"] == {"split": "train", "texts": 5}
    assert set(rep["metrics"]) == {"t2v", "v2t"} and rep["settings"]["max_words"] == 12
    assert main([*args, "--test-norm", "dsl", "--test-norm-temperature", "0.02", "--out", str(out)]) == 0
    block = json.loads(out.read_text())["metrics_test_norm"]
    assert block["method"] == "dsl" and block["temperature"] == 0.02 and "v2t" in block
    assert main([*args, "--test-norm", "qbnorm", "--qb-split", "test"]) == 2
    assert "must not come from the evaluated split" in capsys.readouterr().err
    assert main([*args[:-1], "33"]) == 2
    assert "32 positional embeddings" in capsys.readouterr().err
