"""Each plan's declared hyperparameters (``hparam_specs``) and the checks that read them."""

from __future__ import annotations

import inspect
import math

import pytest

from tokenflow.align import (HParam, aligner_for, check_hparams, get_aligner, get_aligner_class, hparam_specs,
                             hparam_table, register_aligner)
from tokenflow.align.base import Aligner
from tokenflow.align.registry import BUILTIN, NOT_HPARAMS
from tokenflow.errors import HParamError, UserError

BUILTINS = sorted(BUILTIN)


def _constructor_defaults(name: str) -> dict[str, object]:
    """The constructor's arguments and defaults, without ``self`` and the non-hyperparameters."""
    params = inspect.signature(get_aligner_class(name).__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self" and k not in NOT_HPARAMS}


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_declares_its_spec_next_to_its_constructor(name):
    cls = get_aligner_class(name)
    owner = next(k for k in cls.__mro__ if "hparam_specs" in vars(k) or "__init__" in vars(k))
    assert "hparam_specs" in vars(owner), f"{name}: {owner.__qualname__} defines __init__ but no hparam_specs"
    specs = hparam_specs(name)
    assert all(isinstance(s, HParam) for s in specs.values())
    assert {k: s.default for k, s in specs.items()} == _constructor_defaults(name)
    for key, spec in specs.items():  # same type too: 1 is not 1.0 for an int hyperparameter
        assert spec.default is None or type(spec.default) is spec.type, (name, key)


@pytest.mark.parametrize("name", BUILTINS)
def test_the_defaults_pass_and_build(name):
    specs = hparam_specs(name)
    defaults = {k: s.default for k, s in specs.items()}
    check_hparams(name, defaults)
    # Given explicitly, the spec's defaults build the same plan as the constructor's own.
    assert aligner_for(name, defaults, dim=8).hparams() == aligner_for(name, {}, dim=8).hparams()


@pytest.mark.parametrize("name", BUILTINS)
def test_what_a_plan_reports_is_its_spec(name):
    # A trained folder stores hparams() in tokenflow.json: it must build the same plan again.
    saved = aligner_for(name, {}, dim=8).hparams()
    assert set(saved) - {"dim"} == set(hparam_specs(name))
    assert aligner_for(name, saved).hparams() == saved


def _outside(spec: HParam) -> list[object]:
    """Values of the right type just beyond each bound or off the choices."""
    out = []
    if spec.choices is not None and spec.type is not bool:
        out.append(max(spec.choices) + 1 if spec.type is int else "no-such-choice")
    step = 1 if spec.type is int else 0.5
    if spec.low is not None:
        out.append(spec.type(spec.low) if spec.low_open else spec.type(spec.low - step))
    if spec.high is not None:
        out.append(spec.type(spec.high) if spec.high_open else spec.type(spec.high + step))
    return out


CASES = [(name, key, value) for name in BUILTINS for key, spec in hparam_specs(name).items()
         for value in _outside(spec)]


@pytest.mark.parametrize(("name", "key", "value"), CASES)
def test_the_constructor_rejects_what_the_spec_rejects(name, key, value):
    with pytest.raises(HParamError, match=f"--hp: {key}={value!r} is (out of range|not one of the choices) for "
                                          f"plan '{name}': expected "):
        check_hparams(name, {key: value}, source="--hp")
    cls = get_aligner_class(name)
    kwargs = {"dim": 8} if "dim" in inspect.signature(cls.__init__).parameters else {}
    with pytest.raises(ValueError, match=key):
        cls(**kwargs, **{key: value})


def test_the_bounds_are_checked_at_the_edges():
    assert len(CASES) >= 20
    check_hparams("partial-ot", {"mass": 1.0})  # (0, 1]: 1 is in, 0 is out
    check_hparams("mpa", {"gd_weight": 0.0})  # >= 0
    check_hparams("tokenflow", {"lam": 1})  # an int is a number
    check_hparams("sinkhorn", {"tol": None})  # the default None is allowed
    for bad in ({"mass": 0.0}, {"mass": 1.0 + 1e-9}):
        with pytest.raises(HParamError, match="expected a number in \\(0, 1\\]"):
            check_hparams("partial-ot", bad)


def test_an_unknown_key_lists_the_valid_ones_and_names_the_source():
    with pytest.raises(HParamError) as err:
        check_hparams("sinkhorn", {"lam": 2.0}, source="model.hparams")
    assert str(err.value) == ("model.hparams: 'lam' is not a hyperparameter of plan 'sinkhorn' "
                              "(valid: eps, grad, n_iter, tol)")
    with pytest.raises(HParamError, match=r"^request: 'lam' is not .* plan 'max-avg' \(valid: none\)$"):
        check_hparams("max-avg", {"lam": 2.0}, source="request")
    with pytest.raises(HParamError, match=r"'dim' is not a hyperparameter of plan 'wti' \(valid: layers\)"):
        check_hparams("wti", {"dim": 512})  # the backbone gives dim


@pytest.mark.parametrize(("name", "hp", "problem", "expected"), [
    ("tokenflow", {"lam": "abc"}, "lam='abc' has the wrong type", "a number > 0 (default 20.0)"),
    ("tokenflow", {"lam": True}, "lam=True has the wrong type", "a number > 0 (default 20.0)"),
    ("sinkhorn", {"n_iter": 1.5}, "n_iter=1.5 has the wrong type", "an integer >= 1 (default 100)"),
    ("sinkhorn", {"n_iter": 10.0}, "n_iter=10.0 has the wrong type", "an integer >= 1 (default 100)"),
    ("assignment", {"exact": 1}, "exact=1 has the wrong type", "true or false (default false)"),
    ("omit", {"solver": 3}, "solver=3 has the wrong type", "one of sinkhorn, exact (default sinkhorn)"),
    ("scan", {"lam": math.nan}, "lam=nan is not finite", "a number > 0 (default 9.0)"),
    ("scan", {"lam": math.inf}, "lam=inf is not finite", "a number > 0 (default 9.0)"),
    ("sinkhorn", {"tol": -math.inf}, "tol=-inf is not finite", "a number > 0 or null (default null)"),
    ("wti", {"layers": 4}, "layers=4 is not one of the choices", "one of 1, 2, 3 (default 2)"),
    ("dive", {"alpha": 0}, "alpha=0 is out of range", "a number > 0 (default 16.0)"),
])
def test_a_bad_value_says_what_was_expected(name, hp, problem, expected):
    with pytest.raises(HParamError) as err:
        check_hparams(name, hp, source="--hp")
    assert str(err.value) == f"--hp: {problem} for plan '{name}': expected {expected}"
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)


def test_every_problem_is_reported_at_once():
    check_hparams("sinkhorn", {"tol": None, "grad": "plan-fixed"})
    with pytest.raises(HParamError) as err:  # one message per bad key, in the order given
        check_hparams("sinkhorn", {"n_iter": 2.5, "lam": 1.0, "eps": math.inf}, source="x")
    assert str(err.value) == "x: " + "; ".join([
        "n_iter=2.5 has the wrong type for plan 'sinkhorn': expected an integer >= 1 (default 100)",
        "'lam' is not a hyperparameter of plan 'sinkhorn' (valid: eps, grad, n_iter, tol)",
        "eps=inf is not finite for plan 'sinkhorn': expected a number > 0 (default 0.05)",
    ])
    with pytest.raises(HParamError, match=r"^x: n_iter=0 is out of range .*; 'foo' is not a hyperparameter"):
        check_hparams("sinkhorn", {"n_iter": 0, "foo": 1, "eps": 0.1}, source="x")
    with pytest.raises(HParamError, match="x: plan 'tokenflow': expected a mapping .* got list"):
        check_hparams("tokenflow", [("lam", 1.0)], source="x")
    with pytest.raises(ValueError, match="unknown aligner 'filip'"):
        check_hparams("filip", {})


def test_get_aligner_raises_hparam_errors_that_old_callers_still_catch():
    with pytest.raises(HParamError, match=r"get_aligner\('tokenflow'\): 'temperature' is not a hyperparameter"):
        get_aligner("tokenflow", temperature=0.05)
    with pytest.raises(ValueError, match="lam=0 is out of range for plan 'scan'"):
        get_aligner("scan", lam=0)
    with pytest.raises(ValueError, match="chunk must be a positive"):  # chunk and dim are no hyperparameters
        get_aligner("uniform", chunk=0)
    assert get_aligner("wti", dim=6, chunk=3).hparams() == {"dim": 6, "layers": 2}
    with pytest.raises(HParamError, match="'dim' is not a hyperparameter of plan 'tokenflow'"):
        get_aligner("tokenflow", dim=6)


@pytest.mark.parametrize("name", ["mpa", "dive"])
def test_heads_that_do_not_divide_dim_is_a_user_error_naming_the_divisors(name):
    with pytest.raises(HParamError) as err:
        aligner_for(name, {"heads": 3}, dim=16)
    assert str(err.value) == (f"plan '{name}': heads=3 does not divide the embedding size dim=16; "
                              "heads must be one of 1, 2, 4, 8, 16")
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)
    assert aligner_for(name, {"heads": 8}, dim=16).hparams()["heads"] == 8


def test_the_table_lists_every_builtin_hyperparameter():
    table = hparam_table()
    lines = table.splitlines()
    assert lines[0].startswith("| plan | hyperparameter | type | default |")
    for name in BUILTINS:
        specs = hparam_specs(name)
        if not specs:
            assert f"| `{name}` | (none) |" in table
        for key, spec in specs.items():
            row = next((ln for ln in lines if ln.startswith(f"| `{name}` | `{key}` |")), None)
            assert row is not None, (name, key)
            assert spec.doc and spec.doc in row and spec.range_text() in row
    assert "| `partial-ot` | `mass` | float | `0.9` | in (0, 1] |" in table
    assert "| `sinkhorn` | `tol` | float or null | `null` | > 0 |" in table
    assert "| `wti` | `layers` | int | `2` | one of 1, 2, 3 |" in table


def test_a_spec_rejects_a_default_it_would_refuse():
    with pytest.raises(ValueError, match="its default 0.0 is out of range"):
        HParam("lam", float, 0.0, low=0.0, low_open=True)
    with pytest.raises(TypeError, match="type must be one of"):
        HParam("lam", list, [])


def test_a_plugin_without_a_spec_falls_back_to_its_signature(monkeypatch):
    from tokenflow.align import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the plugins leave with the test

    @register_aligner("test-hparams-plugin")
    class Plugin(Aligner):
        def __init__(self, width: int = 3, scale: float = 1.0, tag: str = "a", extra=None,
                     chunk: int | None = None) -> None:
            super().__init__(chunk)
            self.width = width

    specs = hparam_specs("test-hparams-plugin")
    assert {k: (s.type, s.default) for k, s in specs.items()} == {
        "width": (int, 3), "scale": (float, 1.0), "tag": (str, "a"), "extra": (object, None)}
    check_hparams("test-hparams-plugin", {"width": 5, "extra": [1, 2]})
    with pytest.raises(HParamError, match=r"width=2.5 has the wrong type .* an integer \(default 3\)"):
        get_aligner("test-hparams-plugin", width=2.5)
    with pytest.raises(HParamError, match="extra=nan is not finite"):
        check_hparams("test-hparams-plugin", {"extra": math.nan})
    with pytest.raises(HParamError, match=r"valid: extra, scale, tag, width"):
        get_aligner("test-hparams-plugin", lam=1.0)

    @register_aligner("test-hparams-plugin-child")
    class Child(Plugin):  # declares its own spec: the registry reads that, not the signature
        hparam_specs = (HParam("width", int, 3, low=1, doc="width"),)

    assert list(hparam_specs("test-hparams-plugin-child")) == ["width"]
    with pytest.raises(HParamError, match="width=0 is out of range"):
        get_aligner("test-hparams-plugin-child", width=0)
