"""A method's loss suffix (``max-avg+sigmoid``) in ``tokenflow ablate`` / ``tokenflow demo --methods``."""

from __future__ import annotations

import json

import pytest
import yaml

from tokenflow.train import load_config
from tokenflow.train.ablate import _method_config, check_methods, folder_name, method_loss, parse_method, run_methods

BASE = {"data": {"dataset": "flickr30k", "root": "/x"}, "model": {"backbone": "tiny", "aligner": "tokenflow"},
        "distill": {"enabled": True}, "run": {"out": "/x/out"}}


@pytest.mark.parametrize(("spec", "name", "hp", "loss"), [
    ("max-avg+sigmoid", "max-avg", {}, "sigmoid"),
    ("global+infonce", "global", {}, "infonce"),
    ("scan:lam=2+sigmoid", "scan", {"lam": 2}, "sigmoid"),
    ("omit:mass=1.0e+3", "omit", {"mass": 1e3}, None),  # a '+' inside a value is no suffix
    ("tokenflow", "tokenflow", {}, None),
])
def test_parse_a_loss_suffix(spec, name, hp, loss):
    assert parse_method(spec) == (name, hp)
    assert method_loss(spec)[1] == loss


def test_unknown_suffix_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['max-avg\+hinge'\].*\+infonce or \+sigmoid"):
        check_methods(["max-avg+hinge"])
    assert check_methods(["max-avg", "max-avg+sigmoid", "max-avg"]) == ["max-avg", "max-avg+sigmoid"]


def test_row_config_takes_the_loss_and_validates():
    sig = _method_config(BASE, "max-avg+sigmoid")
    assert sig["loss"]["kind"] == "sigmoid" and sig["model"]["aligner"] == "max-avg"
    assert sig["distill"]["enabled"] is False  # distillation's softmax targets do not serve the sigmoid loss
    cfg = load_config(None, data=sig, check_paths=False)
    assert cfg.loss.kind == "sigmoid" and not cfg.distill.enabled
    plain = _method_config(BASE, "max-avg")
    assert "loss" not in plain and plain["distill"]["enabled"] is True  # no suffix: the config's own
    back = _method_config({**BASE, "loss": {"kind": "sigmoid", "bias": -5.0}, "distill": {"enabled": False}},
                          "global+infonce")
    assert back["loss"] == {"kind": "infonce"} and back["model"]["aligner"] is None
    load_config(None, data=back, check_paths=False)
    cs = _method_config(BASE, "cs-aligner:weight=0.5+sigmoid")
    assert cs["cs"]["weight"] == 0.5 and cs["loss"]["kind"] == "sigmoid"
    assert folder_name("max-avg+sigmoid") != folder_name("max-avg")


def test_sigmoid_turning_distillation_off_is_visible(capsys):
    sig = _method_config(BASE, "max-avg+sigmoid")
    assert sig["distill"] == {"enabled": False, "disabled_by": "sigmoid"}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max-avg+sigmoid: distillation turned off" in err
    cfg = load_config(None, data=sig, check_paths=False)
    assert cfg.distill.disabled_by == "sigmoid" and "disabled_by: sigmoid" in cfg.to_yaml()  # the run's config.yaml
    # distillation already off, or no sigmoid suffix: nothing turned off, nothing said
    off = _method_config({**BASE, "distill": {"enabled": False}}, "max-avg+sigmoid")
    assert off["distill"] == {"enabled": False}
    assert _method_config(BASE, "max-avg")["distill"] == {"enabled": True}
    assert capsys.readouterr().err == ""
    assert load_config(None, data=BASE, check_paths=False).distill.disabled_by is None


def test_run_methods_trains_one_row_per_loss(tmp_path, synth):
    base = {"data": {"dataset": "flickr30k", "root": str(synth / "images")},
            "model": {"backbone": "tiny", "tiny": {"image_size": 16, "width": 32, "layers": 1, "heads": 2,
                                                   "embed_dim": 16}},
            "optim": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
            "run": {"out": str(tmp_path), "progress": False, "max_steps": 1}}
    base = yaml.safe_load(load_config(None, data=base).to_yaml())
    rows = run_methods(base, ["max-avg", "max-avg+sigmoid"], tmp_path, log=lambda *a: None)
    assert [r["method"] for r in rows] == ["max-avg", "max-avg+sigmoid"]
    kinds = [yaml.safe_load((tmp_path / folder_name(m) / "config.yaml").read_text())["loss"]["kind"]
             for m in ("max-avg", "max-avg+sigmoid")]
    assert kinds == ["infonce", "sigmoid"]
    head = json.loads((tmp_path / folder_name("max-avg+sigmoid") / "best" / "tokenflow.json").read_text())
    assert head["aligner"] == "max-avg" and "logit_bias" in head
