"""`tokenflow demo --quick` end to end, and `tokenflow ablate` on a small config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tokenflow.cli import main
from tokenflow.demo import METHODS


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["rows"]] == list(METHODS)
    chance = 100 / res["sizes"][2]
    for r in res["rows"]:
        assert r["t2v"]["R@1"] > 2.5 * chance and r["v2t"]["R@1"] > 2.5 * chance, r["method"]
        assert r["steps"] == res["rows"][0]["steps"]  # the same budget for every method
    md = (out / "results.md").read_text()
    assert all(f"| {m} |" in md for m in METHODS) and "t2v R@1" in md
    assert len(res["figures"]) == 3 and all(Path(f).is_file() and f.endswith(".png") for f in res["figures"])
    assert "| tokenflow |" in capsys.readouterr().out
    # a second run replaces the first; a folder that is not the demo's is refused
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["demo", "--quick", "--out", str(other), "--methods", "global"]) == 2
    assert "was not written by tokenflow demo" in capsys.readouterr().err


def test_unknown_method_is_refused(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--methods", "filip"]) == 2
    assert "unknown method(s) ['filip']" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "--methods", "omit:mass"]) == 2
    assert "expected NAME:key=value" in capsys.readouterr().err


def test_ablate_runs_each_method_of_a_config(tmp_path, synth, capsys):
    cfg = {"data": {"dataset": "flickr30k", "root": str(synth / "images")},
           "model": {"backbone": "tiny", "tiny": {"image_size": 16, "width": 32, "layers": 1, "heads": 2,
                                                  "embed_dim": 16}},
           "optim": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
           "run": {"out": str(tmp_path / "abl"), "progress": False, "max_steps": 2}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["ablate", "--config", str(path), "--methods", "global", "scan", "omit:mass=0.8,marginals=l2g",
                 "cs-aligner", "run.seed=3"]) == 0
    res = json.loads((tmp_path / "abl" / "results.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["global", "scan", "omit:mass=0.8,marginals=l2g", "cs-aligner"]
    assert res["overrides"] == ["run.seed=3"]
    omit = json.loads((tmp_path / "abl" / "omit_mass_0.8_marginals_l2g" / "best" / "tokenflow.json").read_text())
    assert omit["aligner"] == "omit" and omit["hparams"]["mass"] == 0.8 and omit["hparams"]["marginals"] == "l2g"
    cs = yaml.safe_load((tmp_path / "abl" / "cs-aligner" / "config.yaml").read_text())
    assert cs["model"]["aligner"] is None and cs["cs"]["weight"] == 0.1
    assert (tmp_path / "abl" / "scan" / "test.json").is_file()
    head = json.loads((tmp_path / "abl" / "scan" / "best" / "tokenflow.json").read_text())
    assert head["aligner"] == "scan"
    assert "| scan |" in (tmp_path / "abl" / "results.md").read_text()
