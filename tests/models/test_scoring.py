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
