"""``models.scoring.hparam_problems``: the plan's declared spec, one message per bad key."""

from __future__ import annotations

import math

from tokenflow.models.scoring import hparam_problems


def test_problems_come_from_the_declared_spec():
    assert hparam_problems("tokenflow", {"lam": 2}) == []
    assert hparam_problems("sinkhorn", {"tol": None, "grad": "plan-fixed"}) == []
    assert hparam_problems("sinkhorn", {"n_iter": 2.5, "lam": 1.0, "eps": math.inf}) == [
        "n_iter=2.5 has the wrong type for plan 'sinkhorn': expected an integer >= 1 (default 100)",
        "'lam' is not a hyperparameter of plan 'sinkhorn' (valid: eps, grad, n_iter, tol)",
        "eps=inf is not finite for plan 'sinkhorn': expected a number > 0 (default 0.05)",
    ]
