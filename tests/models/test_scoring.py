"""The scoring path's refusals (the agreement of every command is tests/serve/test_trained_scoring.py)."""

import pytest

from tokenflow.errors import HParamError, UserError
from tokenflow.models.scoring import build_plan


def test_global_only_refuses_hyperparameters_instead_of_ignoring_them():
    assert build_plan(None, "none", {}, dim=16)[0] is None
    with pytest.raises(HParamError, match=r"--hp: .*'none'.* takes no hyperparameters, got lam") as err:
        build_plan(None, "none", {"lam": 1.0}, dim=16)
    assert isinstance(err.value, UserError)


def test_a_plan_gets_its_hyperparameters_checked_and_applied():
    plan = build_plan(None, "tokenflow", {"lam": 3.0}, dim=16)[0]
    assert plan.hparams()["lam"] == 3.0
    with pytest.raises(HParamError, match="lamb"):
        build_plan(None, "tokenflow", {"lamb": 3.0}, dim=16)


def test_load_scoring_refuses_bad_hyperparameters_before_loading_the_backbone(monkeypatch, tmp_path):
    """Named plan, the trained folder's plan, or global only: the check needs no backbone, so every
    caller (evaluate, search, serve, ...) fails before the weights are read."""
    import json

    from tokenflow.models import scoring

    def no_backbone(folder):
        raise AssertionError("the backbone was loaded before the hyperparameters were checked")

    monkeypatch.setattr(scoring, "load_backbone", no_backbone)
    with pytest.raises(HParamError, match="--hp: 'lamb' is not a hyperparameter of plan 'tokenflow'"):
        scoring.load_scoring(tmp_path, "tokenflow", {"lamb": 3.0})
    with pytest.raises(HParamError, match=r"--hp: .*'none'.* takes no hyperparameters, got lam"):
        scoring.load_scoring(tmp_path, "none", {"lam": 3.0})
    (tmp_path / scoring.HEAD_FILE).write_text(json.dumps({"aligner": "max-avg", "hparams": {}}))
    with pytest.raises(HParamError, match="--hp: 'lam' is not a hyperparameter of plan 'max-avg'"):
        scoring.load_scoring(tmp_path, None, {"lam": 3.0})
