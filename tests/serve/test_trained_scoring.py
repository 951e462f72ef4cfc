"""The one scoring path (issue 27): a folder trained with a plan that has learned weights (``wti``,
``learnable``) and fusion weights other than 1 gives the same score for the same query and item
through ``search`` (the Searcher and the CLI), ``serve``'s ``/api/search``, ``evaluate`` and
``explain``; and :func:`tokenflow.models.scoring.load_scoring` names exactly what it overrode."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

W_GLOBAL, W_FINE = 0.5, 2.0
TINY = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "embed_dim": 16}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tokenflow.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("trained-data")
    make_synthetic(out, images=(32, 4, 8), videos=(0, 0, 0), image_size=32, seed=4, image_format="png")
    return out / "images"


def _train(root: Path, tmp: Path, aligner: str) -> Path:
    """``tmp/run/best``: a tiny model trained briefly with ``aligner``, a large lr_new so plan weights move."""
    from tests.train.helpers import _config
    from tokenflow.train import load_config, train

    path = _config(tmp, root, "run", model={"aligner": aligner, "tiny": TINY, "w_global": W_GLOBAL, "w_fine": W_FINE},
                   distill={"enabled": False}, optim={"epochs": 2, "lr_new": 0.5},
                   run={"seed": 0, "log_every": 100, "deterministic": False})
    train(load_config(path, []))
    return tmp / "run" / "best"


@pytest.fixture(scope="module", params=["wti", "learnable"])
def run(request, data, tmp_path_factory):
    """(plan name, trained folder, the index of the test split's images, the split)."""
    from tokenflow.data import load_split
    from tokenflow.index import Indexer, backbone_fingerprint, encode_store
    from tokenflow.models.scoring import load_scoring

    name = request.param
    tmp = tmp_path_factory.mktemp(f"trained-{name}")
    best = _train(data, tmp, name)
    split = load_split("flickr30k", data, "test")
    backbone = load_scoring(best).backbone.eval()
    encode_store(backbone, split, tmp / "store", dtype="fp32", batch_size=8,
                 backbone_info=backbone_fingerprint(backbone, name=str(best)))
    return name, best, Indexer("flat").index(tmp / "store"), split


def _searcher_scores(run) -> tuple[str, dict[str, float]]:
    from tokenflow.index import Searcher

    name, best, store, split = run
    query = split.texts[0]
    res = Searcher.from_model(store, best).search([query], k=len(split), shortlist=len(split))[0]
    return query, dict(zip(res.ids, res.scores.tolist(), strict=True))


def test_the_trained_plan_keeps_its_learned_weights(run):
    from tokenflow.align import aligner_for
    from tokenflow.models.scoring import load_scoring
    from tokenflow.utils import read_safetensors

    name, best, _, _ = run
    scoring = load_scoring(best, name)
    assert (scoring.name, scoring.trained, scoring.overrides, scoring.notes) == (name, True, {}, ())
    assert (scoring.w_global, scoring.w_fine) == (W_GLOBAL, W_FINE)
    saved = read_safetensors(best / "aligner.safetensors", "plan weights")
    torch.manual_seed(0)
    fresh = aligner_for(name, scoring.aligner.hparams(), dim=scoring.backbone.embed_dim).state_dict()
    for key, value in scoring.aligner.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
        assert (value - fresh[key]).abs().max() > 1e-3, f"{name}.{key} did not move in training"


def test_search_serve_evaluate_and_explain_give_the_same_score(run, monkeypatch, capsys, tmp_path):
    from fastapi.testclient import TestClient

    from tokenflow.cli import main
    import sys

    import tokenflow.eval.evaluate  # noqa: F401  (the module, not the function the package exports)
    from tokenflow.serve import create_app
    from tokenflow.viz import explain

    name, best, store, split = run
    query, expected = _searcher_scores(run)
    n = len(split)

    out = tmp_path / "search.json"  # the CLI, with the trained plan named explicitly
    assert main(["search", "--index", str(store), "--text", query, "--k", str(n), "--shortlist", str(n),
                 "--aligner", name, "--json", str(out)]) == 0
    assert "freshly initialised" not in capsys.readouterr().err
    report = json.loads(out.read_text())
    assert (report["aligner"], report["w_global"], report["w_fine"]) == (name, W_GLOBAL, W_FINE)
    cli = {r["id"]: r["score"] for r in report["queries"][0]["results"]}

    with TestClient(create_app(store, best), base_url="http://127.0.0.1") as client:  # serve's defaults
        info = client.get("/api/info").json()
        assert info["plans"][0] == name and info["plan_source"][name] == "trained"
        assert info["plan_source"]["tokenflow"] == "fresh" and (info["w_global"], info["w_fine"]) == (W_GLOBAL, W_FINE)
        body = client.post("/api/search", json={"query": query, "k": n, "plans": [name]}).json()
    assert body["plans"][0]["plan_source"] == "trained"
    served = {r["id"]: r["score"] for r in body["plans"][0]["results"]}

    captured = {}
    evaluate_module = sys.modules["tokenflow.eval.evaluate"]
    real = evaluate_module.similarity

    def spy(vis, txt, aligner, **kw):
        result = real(vis, txt, aligner, **kw)
        captured["t2v"] = result[1]
        return result

    monkeypatch.setattr(evaluate_module, "similarity", spy)
    assert main(["evaluate", "--dataset", "flickr30k", "--root", str(split_root(split)), "--split", "test",
                 "--model", str(best), "--quiet"]) == 0
    evaluated = dict(zip(split.item_ids, captured["t2v"][:, 0].tolist(), strict=True))

    top = max(expected, key=expected.get)
    expl = explain(best, split.item_paths[split.item_ids.index(top)], query)
    explained = W_GLOBAL * expl.global_score + W_FINE * expl.score
    numbers = tmp_path / "explain.json"  # the CLI prints and writes the fused score
    assert main(["explain", "--model", str(best), "--media", str(split.item_paths[split.item_ids.index(top)]),
                 "--caption", query, "--aligner", name, "--out", str(tmp_path / "x.png"), "--json", str(numbers)]) == 0
    assert json.loads(numbers.read_text())["fused_score"] == pytest.approx(expected[top], abs=1e-5)
    printed = re.search(r", score (-?[0-9.]+) \(w_global 0.5, w_fine 2\)", capsys.readouterr().out)
    assert printed and float(printed.group(1)) == pytest.approx(expected[top], abs=1e-4)
    for scores in (cli, served, evaluated):
        assert scores.keys() == expected.keys()
        torch.testing.assert_close(torch.tensor([scores[i] for i in expected]), torch.tensor(list(expected.values())),
                                   rtol=1e-5, atol=1e-5)
    assert explained == pytest.approx(expected[top], abs=1e-5)


def split_root(split) -> Path:
    """The dataset folder of a Karpathy split (the folder holding its JSON and images/)."""
    return Path(split.item_paths[0]).parents[1]


def test_the_override_report_names_exactly_what_was_overridden(run, tmp_path):
    from tokenflow.models import TinyCLIP, TinyConfig, WordTokenizer
    from tokenflow.models.scoring import load_scoring

    name, best, _, _ = run
    assert load_scoring(best).overrides == {}
    assert load_scoring(best, w_global=W_GLOBAL, w_fine=W_FINE).overrides == {}  # the trained values
    other = load_scoring(best, "scan", {"lam": 5.0}, w_fine=1.0)
    assert other.overrides == {"aligner": (name, "scan"), "w_fine": (W_FINE, 1.0)}
    assert not other.trained and other.w_global == W_GLOBAL
    assert other.describe_overrides() == f"overrides the trained model's aligner '{name}' -> 'scan', w_fine 2.0 -> 1.0"
    shape = {"wti": {"layers": 3}, "learnable": {"max_text": 40}}[name]
    reshaped = load_scoring(best, hparams=shape, w_global=1.0)
    key = next(iter(shape))
    assert set(reshaped.overrides) == {f"hparams.{key}", "w_global"}
    assert reshaped.overrides[f"hparams.{key}"][1] == shape[key]
    assert not reshaped.trained and "freshly initialised" in reshaped.notes[0]
    none = load_scoring(best, "none")
    assert none.aligner is None and none.overrides == {"aligner": (name, "none")}

    TinyCLIP(TinyConfig(**TINY), WordTokenizer(["a", "red", "cube"])).save_pretrained(tmp_path / "bare")
    bare = load_scoring(tmp_path / "bare", name, w_fine=3.0)  # no trained folder: nothing to override
    assert (bare.name, bare.trained, bare.overrides, bare.w_fine) == (name, False, {}, 3.0)
    assert "freshly initialised" in bare.notes[0]
