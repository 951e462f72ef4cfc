"""`tokenflow demo --quick --seeds 2` end to end, and `tokenflow ablate` on a small config."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml

from tokenflow.cli import main
from tokenflow.data import load_split
from tokenflow.demo import digest
from tokenflow.demo.tune import read_tuned
from tokenflow.models import load_backbone
from tokenflow.train import load_config
from tokenflow.train import build_model


@pytest.mark.slow
def test_demo_quick_two_seeds_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--seeds", "2", "--methods", "global", "max-avg", "tokenflow",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == [0, 1] and res["tasks"] == ["scenes"] and res["protocols"] == ["scratch", "finetune"]
    assert [(r["protocol"], r["method"], r["seed"]) for r in res["rows"]] == [
        (p, m, s) for p in ("scratch", "finetune") for m in ("global", "max-avg", "tokenflow") for s in (0, 1)]
    tuned = read_tuned()["results"]["scenes"]
    for r in res["rows"]:
        assert r["steps"] == res["rows"][0]["steps"]  # the same budget for every method and protocol
        # better than chance at R@10 (a caption may have several correct images)
        chance10 = 100 * 10 * (1 + r["texts_with_several_positives"] / r["test_texts"]) / r["test_items"]
        assert r["t2v"]["R@10"] > 1.5 * min(chance10, 60), (r["protocol"], r["method"], r["seed"])
        assert 0 <= r["hard_negatives"]["accuracy"] <= 100 and r["hard_negatives"]["items"] == r["test_texts"]
        # tokenflow runs with the hyperparameters chosen on val for its protocol
        want = tuned[r["protocol"]]["tokenflow"]["chosen"] if r["method"] == "tokenflow" else {}
        assert r["hparams"] == want or r["method"] == "global", (r["method"], r["hparams"])
    # pointing only for token plans, under all three readings
    assert [("pointing" in r) for r in res["rows"]] == [False, False, True, True, True, True] * 2
    for r in res["rows"]:
        if "pointing" in r:
            assert {"flow", "abs", "plan"} <= set(r["pointing"]) and 0 < r["pointing"]["chance"] < 20
    # mean ± sample std over the seeds, and the paired difference from global on the same seeds
    table = (out / "results.md").read_text()
    for s in res["summary"]:
        rs = [r for r in res["rows"] if (r["protocol"], r["method"]) == (s["protocol"], s["method"])]
        vals = [r["t2v"]["R@1"] for r in rs]
        assert s["t2v"]["R@1"] == pytest.approx([statistics.mean(vals), statistics.stdev(vals)])
        assert f"| {s['method']} | {s['hparams']} | {s['t2v']['R@1'][0]:.1f} ± {s['t2v']['R@1'][1]:.1f} |" in table
        if s["method"] != "global":
            base = {r["seed"]: r["t2v"]["R@1"] for r in res["rows"]
                    if (r["protocol"], r["method"]) == (s["protocol"], "global")}
            diffs = [r["t2v"]["R@1"] - base[r["seed"]] for r in rs]
            assert s["paired_r1"]["mean"] == pytest.approx(statistics.mean(diffs))
            assert s["paired_r1"]["positive"] == sum(d > 0 for d in diffs)
    for column in ("Δ t2v R@1 vs global (paired)", "verdict", "hard neg. %", "pointing T·c %", "pointing |T·c| %",
                   "pointing T %", "train s"):
        assert column in table
    assert "## scenes, scratch" in capsys.readouterr().out and "## scenes, finetune" in table
    # every fine-tune started from its seed's pretrained encoder, and the cache is as it was written
    for seed in (0, 1):
        runs = out / "runs" / "scenes" / "finetune" / f"seed-{seed}"
        pre = runs / "pretrain" / "best"
        rows = [r for r in res["rows"] if r["seed"] == seed and r["protocol"] == "finetune"]
        assert {r["pretrained_sha256"] for r in rows} == {digest(pre)}
        cfg = load_config(runs / "max-avg" / "config.yaml", check_paths=False)
        assert Path(cfg.model.backbone) == pre
        model = build_model(cfg, load_split("flickr30k", cfg.data.root, "train"))
        saved = load_backbone(pre).state_dict()
        assert all(torch.equal(v, saved[k]) for k, v in model.backbone.state_dict().items())
        # ... and the fine-tune moved away from it
        tuned_model = load_backbone(runs / "max-avg" / "best").state_dict()
        assert any(not torch.equal(v, saved[k]) for k, v in tuned_model.items())
        # from scratch means the tiny encoder from a fresh start
        scratch = load_config(out / "runs" / "scenes" / "scratch" / f"seed-{seed}" / "max-avg" / "config.yaml",
                              check_paths=False)
        assert scratch.model.backbone == "tiny"
    assert len(res["figures"]) == 3 and all(Path(f).is_file() for f in res["figures"])
    # a folder that is not the demo's is refused
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
