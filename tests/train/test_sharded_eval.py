"""Evaluation shared by two gloo processes (torchrun, CPU) gives the single-process reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import save_tiny_model
from tests.train.helpers import ROOT, _config, _torchrun, eval_cases, run_case
from tokenflow.data import load_split
from tokenflow.data.synthetic import make_synthetic
from tokenflow.distributed import DistInfo
from tokenflow.eval.evaluate import evaluate
from tokenflow.models import RetrievalModel, TinyConfig


@pytest.fixture(scope="module")
def cases_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sharded")
    make_synthetic(folder / "data", images=(8, 6, 2), videos=(0, 0, 0), image_size=32, seed=2)
    shutil.copytree(folder / "data" / "images", folder / "broken")
    load_split("flickr30k", folder / "broken", "val").item_paths[1].write_bytes(b"not a jpeg")
    train = load_split("flickr30k", folder / "data" / "images", "train")
    save_tiny_model(folder / "model", train.texts, seed=0, w_global=0.7, w_fine=1.3,
                    config=TinyConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2, embed_dim=16))
    return folder


def _assert_same_report(got: dict, want: dict, what: str) -> None:
    want = json.loads(json.dumps(want))
    assert set(got) == set(want), what
    for key in ("split", "evaluated", "skipped", "settings", "similarity", "aligner", "backbone"):
        assert got[key] == want[key], (what, key)
    for block in [k for k in want if k.startswith("metrics")]:
        for d in ("t2v", "v2t"):
            assert got[block][d] == pytest.approx(want[block][d], abs=1e-9), (what, block, d)


@pytest.mark.slow
def test_two_processes_give_the_single_process_report(tmp_path, cases_folder):
    """Each process encodes its share of the items and texts and scores its own rows; rank 0's
    report equals ``evaluate`` in one process, skipped files, folds and empty shares included."""
    out = tmp_path / "reports.json"
    _torchrun([str(ROOT / "tests" / "train" / "_sharded_eval.py"), str(cases_folder), str(out)], tmp_path)
    reports = json.loads(out.read_text())
    cases = eval_cases(cases_folder)
    assert reports.keys() == cases.keys()
    for name, case in cases.items():
        _assert_same_report(reports[name], run_case(*case, DistInfo()), name)
    assert reports["a broken image skipped"]["skipped"]["count"] == 1
    assert reports["a broken image skipped"]["evaluated"] == {"items": 5, "texts": 25}
    assert "metrics_folds_2" in reports["global, folds of 2"]


@pytest.mark.slow
def test_torchrun_training_validates_and_tests_the_chosen_model_on_both_processes(tmp_path, synth):
    """`tokenflow train` under torchrun: val_best.json and test.json (sharded, with the chosen
    model sent to the other process) are the single-process reports of best/."""
    cfg = _config(tmp_path, synth / "images", "two", run={"max_steps": 2}, data={"test_split": "test"})
    _torchrun(["-m", "tokenflow.cli", "train", "--config", str(cfg)], tmp_path)
    out = tmp_path / "two"
    best = RetrievalModel.from_pretrained(out / "best")
    for split, name in (("val", "val_best.json"), ("test", "test.json")):
        got = json.loads((out / name).read_text())
        want = evaluate(best.backbone, load_split("flickr30k", synth / "images", split), best.aligner,
                        w_global=best.w_global, w_fine=best.w_fine)
        for extra in ("step", "epoch", "checkpoint", "command"):
            got.pop(extra, None)
        _assert_same_report(got, want, name)
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in log if r["kind"] != "train"] == ["val", "done"]
