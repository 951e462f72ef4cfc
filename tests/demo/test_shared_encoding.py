"""A demo run encodes its test images once after training, for pointing and hard negatives, and
the numbers are those of each evaluation encoding them on its own."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from tokenflow.data.scenes import make_scenes
from tokenflow.demo import protocol
from tokenflow.demo.budget import SCENES

# the modules (tokenflow.eval's ``evaluate`` is the function)
evaluate = importlib.import_module("tokenflow.eval.evaluate")
compositional = importlib.import_module("tokenflow.eval.compositional")

BUDGET = {"sizes": (48, 16, 72), "epochs": 1, "batch_size": 16, "lr": 1e-3, "lr_finetune": 3e-4,
          "pretrain": (0, 0), "pretrain_epochs": 1}


def _counting(fn, test_paths: set[Path], calls: list[str]):
    """``encode_items`` that records each call that encodes test images (``before`` or ``after``
    the training, as ``calls[0]`` says)."""
    def wrapped(backbone, split, *args, **kwargs):
        if {Path(p).resolve() for p in split.item_paths} <= test_paths:
            calls.append(calls[0])
        return fn(backbone, split, *args, **kwargs)
    return wrapped


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(where, row, encodings)``: one demo run of tokenflow on a small scenes task (one epoch),
    its row, and the phases (``train`` or ``after``) of every encoding of its test images."""
    from tokenflow.data import load_split
    from tokenflow.train import ablate

    folder = tmp_path_factory.mktemp("scenes")
    make_scenes(folder, BUDGET["sizes"], image_size=32, seed=4, **SCENES)
    where = {"dataset": "flickr30k", "root": str(folder), "positives": str(folder / "positives.json"),
             "boxes": str(folder / "boxes.json")}
    test_paths = {Path(p).resolve() for p in load_split("flickr30k", folder, "test").item_paths}
    calls = ["train"]  # calls[0]: the phase; the rest: one entry per encoding of test images
    run_methods = ablate.run_methods

    def then_after(*args, **kwargs):
        rows = run_methods(*args, **kwargs)
        calls[0] = "after"
        return rows

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(protocol, "budget", lambda quick, videos=False: dict(BUDGET))
        mp.setattr(ablate, "run_methods", then_after)
        for module in (evaluate, compositional):
            mp.setattr(module, "encode_items", _counting(module.encode_items, test_paths, calls))
        row = protocol.run_one("scenes", 4, "scratch", "tokenflow", where, str(folder / "out"), True, False, 0)
    return where, row, calls[1:]


def _model(where: dict):
    from tokenflow.models import RetrievalModel

    return RetrievalModel.from_pretrained(Path(where["root"]) / "out" / "runs" / "scenes" / "scratch" / "seed-4"
                                          / "tokenflow" / "best")


def test_pointing_and_hard_negatives_equal_the_separate_encodings(trained):
    where, row, _ = trained
    model = _model(where)
    old_pointing = protocol.pointing_of(model, where)  # each encodes the test images itself
    old_hn = protocol.hard_negatives_of(model, where)
    assert old_hn is not None and old_hn["items"] > 0 and old_pointing["flow"]["words"] > 0
    assert row["pointing"] == old_pointing
    assert row["hard_negatives"] == old_hn
    enc = protocol.encode_test(model, where)
    assert protocol.pointing_of(model, where, enc) == old_pointing
    assert protocol.hard_negatives_of(model, where, enc) == old_hn


def test_a_run_encodes_its_test_images_once_after_training(trained):
    _, row, calls = trained
    assert "pointing" in row and "hard_negatives" in row
    assert calls.count("train") == 1  # the trainer's test of the chosen checkpoint (retrieval)
    assert calls.count("after") == 1  # pointing and hard negatives share one encoding


def test_hard_negatives_without_the_file_are_none(trained, tmp_path):
    where, _, _ = trained
    model = _model(where)
    enc = protocol.encode_test(model, where)
    assert protocol.hard_negatives_of(model, {**where, "root": str(tmp_path)}, enc) is None


def test_pretraining_leaves_the_digest_to_prepare(tmp_path, monkeypatch):
    """tune's pretraining needs only the folder: pretrain() hashes nothing."""
    import tokenflow.train

    def fake_train(cfg):
        (tmp_path / "pretrain").mkdir(exist_ok=True)
        (tmp_path / "pretrain" / "val_best.json").write_text(json.dumps({"metrics": {"t2v": {"R@1": 1.0}}}))
        return {"best_step": 1, "steps": 2}

    def no_digest(folder):
        raise AssertionError(f"digest({folder}) computed")

    monkeypatch.setattr(tokenflow.train, "load_config", lambda path, data: data)
    monkeypatch.setattr(tokenflow.train, "train", fake_train)
    monkeypatch.setattr(protocol, "digest", no_digest)
    where = {"dataset": "flickr30k", "root": tmp_path, "pretrain": tmp_path / "pre"}
    lines = []
    assert protocol.pretrain(where, BUDGET, 0, tmp_path, 0, lines.append) == tmp_path / "pretrain" / "best"
    assert "val t2v R@1 1.0, step 1 of 2" in lines[0]
