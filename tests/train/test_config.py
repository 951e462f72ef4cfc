"""Bad configs stop with a message that names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tokenflow.train import ConfigError, load_config
from tokenflow.train.schedule import lr_at

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path, data) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _good(tmp_path) -> dict:
    (tmp_path / "data").mkdir(exist_ok=True)
    return {"data": {"dataset": "flickr30k", "root": str(tmp_path / "data")}, "model": {"backbone": "tiny"},
            "run": {"out": str(tmp_path / "run")}}


def test_good_config_and_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, _good(tmp_path)), ["optim.lr=1e-6", "model.hparams={lam: 2}",
                                                         "data.test_split=null", "distill.enabled=true"])
    assert cfg.optim.lr == 1e-6 and cfg.model.hparams == {"lam": 2} and cfg.data.test_split is None
    assert cfg.distill.enabled and cfg.distill.ema == 0.95 and cfg.distill.queue == 16  # the paper's defaults
    again = load_config(None, data=yaml.safe_load(cfg.to_yaml()))  # the saved config.yaml reads back
    assert again == cfg


@pytest.mark.parametrize("change, words", [
    ({"optim": {"lr": "fast"}}, ["optim.lr", "valid number"]),
    ({"optim": {"learning_rate": 1e-3}}, ["optim.learning_rate", "unknown key"]),
    ({"data": {"dataset": "imagenet"}}, ["data.dataset"]),
    ({"model": {"aligner": "tokenflw"}}, ["model.aligner", "unknown aligner 'tokenflw'"]),
    ({"distill": {"ema": 1.5}}, ["distill.ema"]),
    ({"run": {}}, ["run.out", "required key is missing"]),
    # Plan hyperparameters are checked against the plan's declared spec when the file is read.
    ({"model": {"hparams": {"lamb": 2}}}, ["  model.hparams: 'lamb' is not a hyperparameter of plan 'tokenflow' "
                                           "(valid: lam)"]),
    ({"model": {"hparams": {"lam": "fast"}}}, ["  model.hparams: lam='fast' has the wrong type for plan "
                                               "'tokenflow': expected a number > 0 (default 20.0)"]),
    ({"model": {"hparams": {"lam": float("nan")}}}, ["model.hparams: lam=nan is not finite"]),
    ({"model": {"aligner": "wti", "hparams": {"layers": 2.0}}}, ["model.hparams: layers=2.0 has the wrong type",
                                                                  "expected one of 1, 2, 3"]),
    ({"model": {"aligner": "partial-ot", "hparams": {"mass": 0}}}, ["model.hparams: mass=0 is out of range"]),
    ({"model": {"aligner": "mpa", "hparams": {"dim": 512}}}, ["'dim' is not a hyperparameter of plan 'mpa'"]),
])
def test_bad_values_name_the_key(tmp_path, change, words):
    data = _good(tmp_path)
    for section, values in change.items():
        data[section] = values if section == "run" and not values else {**data.get(section, {}), **values}
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_plan_hyperparameters_are_checked_after_overrides(tmp_path):
    path = _write(tmp_path, {**_good(tmp_path), "model": {"backbone": "tiny", "hparams": {"lam": 2.0}}})
    with pytest.raises(ConfigError, match="model.hparams: 'lam' is not a hyperparameter of plan 'sinkhorn'"):
        load_config(path, ["model.aligner=sinkhorn"])  # lam belongs to the file's plan, not the new one
    cfg = load_config(path, ["model.aligner=sinkhorn", "model.hparams={n_iter: 20, tol: null}"])
    assert cfg.model.hparams == {"n_iter": 20, "tol": None}
    with pytest.raises(ConfigError, match=r"model.hparams: global-only training .* got lam; clear them"):
        load_config(path, ["model.aligner=null"])  # global only: nothing would read lam
    assert load_config(path, ["model.aligner=null", "model.hparams={}"]).model.aligner is None


def test_missing_files_and_bad_overrides(tmp_path):
    with pytest.raises(ConfigError, match="config file .* not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    path = _write(tmp_path, _good(tmp_path))
    with pytest.raises(ConfigError, match="data.root: folder .*missing does not exist"):
        load_config(path, [f"data.root={tmp_path / 'missing'}"])
    with pytest.raises(ConfigError, match="model.backbone: folder .*clip does not exist"):
        load_config(path, [f"model.backbone={tmp_path / 'clip'}"])
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(path, ["optim.lr"])
    with pytest.raises(ConfigError, match="optim.nope"):
        load_config(path, ["optim.nope=1"])


def test_cs_section(tmp_path):
    path = _write(tmp_path, _good(tmp_path))
    assert load_config(path).cs.weight == 0.0  # off unless asked for
    with pytest.raises(ConfigError, match="cs.unpaired_media: folder .*nowhere does not exist"):
        load_config(path, ["cs.weight=0.1", f"cs.unpaired_media={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="cs.unpaired_texts: file .*caps.txt does not exist"):
        load_config(path, ["cs.weight=0.1", f"cs.unpaired_texts={tmp_path / 'caps.txt'}"])
    with pytest.raises(ConfigError, match="cs: unpaired data is given but cs.weight and cs.token_weight are 0"):
        load_config(path, [f"cs.unpaired_media={tmp_path}"])
    with pytest.raises(ConfigError, match="cs.sigma"):
        load_config(path, ["cs.weight=0.1", "cs.sigma=0"])


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_validate(name):
    cfg = load_config(CONFIGS / name, check_paths=False)
    assert cfg.run.out.name


def test_schedule_warms_up_then_follows_a_cosine():
    assert lr_at(0, 100, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 10) == pytest.approx(0.5)
    assert lr_at(100, 100, 10) == pytest.approx(0.0)
    assert lr_at(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
