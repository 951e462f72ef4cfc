"""The demo's grid search reads validation only: poisoning the test split changes nothing."""

from __future__ import annotations

import json
import random

import pytest

from tokenflow.data.scenes import make_scenes
from tokenflow.demo import tune as tune_mod
from tokenflow.demo.protocol import stage_config
from tokenflow.demo.budget import label
from tokenflow.demo.tune import GRIDS, apply_tuned, read_tuned, search_grid, write_tuned

BUDGET = {"epochs": 2, "batch_size": 16, "lr": 1e-3, "lr_finetune": 3e-4, "pretrain_epochs": 1}


def _search(folder, runs, monkeypatch):
    monkeypatch.setitem(GRIDS, "tokenflow", {"lam": [1.0, 20.0]})
    where = {"dataset": "flickr30k", "root": folder, "positives": folder / "positives.json"}
    base = stage_config(where, BUDGET, 0, runs, stage="scratch", test=False)
    base["run"]["deterministic"] = True
    base["model"]["tiny"] = {"width": 32, "layers": 1, "heads": 2, "embed_dim": 16}
    return search_grid(base, ["tokenflow"], runs, log=lambda line: None)


def _poison(folder):
    """Shuffle the test captions between test images and delete the test images."""
    path = folder / "dataset_flickr30k.json"
    data = json.loads(path.read_text())
    test = [im for im in data["images"] if im["split"] == "test"]
    sents = [s for im in test for s in im["sentences"]]
    random.Random(0).shuffle(sents)
    for k, im in enumerate(test):
        im["sentences"] = sents[5 * k: 5 * k + 5]
        (folder / "flickr30k-images" / im["filename"]).unlink()
    path.write_text(json.dumps(data))


@pytest.mark.slow
def test_the_choice_does_not_read_test(tmp_path, monkeypatch):
    clean, poisoned = tmp_path / "clean", tmp_path / "poisoned"
    for f in (clean, poisoned):
        make_scenes(f, (64, 32, 32), objects=5, named=2, seed=3, templates="plain")
    _poison(poisoned)
    a = _search(clean, tmp_path / "runs-a", monkeypatch)
    b = _search(poisoned, tmp_path / "runs-b", monkeypatch)
    assert set(a["tokenflow"]["val"]) == {"tokenflow:lam=1.0", "tokenflow:lam=20.0"}
    assert a == b  # the same validation scores and the same choice
    best = max(a["tokenflow"]["val"], key=a["tokenflow"]["val"].get)
    assert a["tokenflow"]["chosen"] == {"lam": float(best.split("=")[1])}
    assert not any((tmp_path / "runs-a").rglob("test.json"))


def test_a_config_with_a_test_split_is_refused(tmp_path):
    where = {"dataset": "flickr30k", "root": tmp_path, "positives": None}
    base = stage_config(where, BUDGET, 0, tmp_path, stage="scratch", test=True)
    with pytest.raises(ValueError, match="must not read a test split"):
        search_grid(base, ["tokenflow"], tmp_path)


def test_recorded_choices_are_applied_to_bare_plan_names(tmp_path, monkeypatch):
    results = {"scenes": {"scratch": {"tokenflow": {"chosen": {"lam": 5.0}, "val": {}},
                                      "scan": {"chosen": {"lam": 20.0}, "val": {}}}}}
    path = tmp_path / "tuned.json"
    tuned = write_tuned(results, False, path)
    assert read_tuned(path) == tuned
    got = apply_tuned(["global", "tokenflow", "scan:lam=9", "max-avg"], "scenes", "scratch", tuned)
    assert got == ["global", "tokenflow:lam=5.0", "scan:lam=9", "max-avg"]
    assert apply_tuned(["tokenflow"], "scenes", "finetune", tuned) == ["tokenflow"]  # nothing recorded there
    # a loss suffix stays last, and the row is named after plan and loss
    assert apply_tuned(["tokenflow+sigmoid"], "scenes", "scratch", tuned) == ["tokenflow:lam=5.0+sigmoid"]
    assert [label(m) for m in ("tokenflow:lam=5.0+sigmoid", "scan:lam=9", "global")] == [
        "tokenflow+sigmoid", "scan", "global"]
    assert read_tuned(tmp_path / "none.json") == {}
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="tokenflow-demo-tuned/1"):
        read_tuned(path)


def test_the_packaged_choice_covers_the_default_plans():
    """tuned.json beside the demo holds a choice for every default plan with a grid, from the grid."""
    tuned = read_tuned(tune_mod.TUNED_FILE)
    for protocol in ("scratch", "finetune"):
        for name in ("tokenflow", "scan"):
            entry = tuned["results"]["scenes"][protocol][name]
            (key, value), = entry["chosen"].items()
            assert value in tuned["grids"][name][key]
            assert entry["val"][f"{name}:{key}={value}"] == max(entry["val"].values())
