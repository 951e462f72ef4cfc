"""Declared hyperparameters: each plan lists its own once, as ``hparam_specs``.

A plan class declares its hyperparameters next to its ``__init__``::

    hparam_specs = (HParam("lam", float, 20.0, low=0.0, low_open=True, doc="inverse temperature"),)

Everything that checks or shows hyperparameters reads that tuple (through
:func:`tokenflow.align.hparam_specs` and :func:`tokenflow.align.check_hparams`): the registry,
training configs, the command line's ``--hp``, the server and the documentation's table.
Constructor arguments that are not hyperparameters (``chunk``; ``dim``, which the backbone gives)
are not listed.

Values are checked as they come from YAML, JSON or ``--hp``: a ``float`` hyperparameter takes
any finite int or float (not a bool), an ``int`` one an int only, a ``bool`` one a bool, a ``str``
one a str. A hyperparameter whose default is None also takes None. Bounds are inclusive unless
``low_open`` / ``high_open`` makes them exclusive; ``choices`` lists the only values allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import HParamError

__all__ = ["HParam", "TYPES", "check_values", "find_problems", "format_value"]

#: The types a hyperparameter may have. ``object`` is only for the fallback spec of a plugin
#: without one, read off its constructor: any value is taken, except a non-finite number.
TYPES = (float, int, bool, str, object)
_KIND = {float: "a number", int: "an integer", bool: "true or false", str: "a string", object: "any value"}


def format_value(value: object) -> str:
    """``value`` as it is written in a config or ``--hp`` (``null``, ``true``, ``0.05``, ``unroll``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class HParam:
    """One hyperparameter of a plan.

    Attributes:
        name: the constructor argument.
        type: ``float``, ``int``, ``bool`` or ``str`` (see the module docstring).
        default: the constructor's default (None: the hyperparameter may also be None).
        low, high: bounds, inclusive unless ``low_open`` / ``high_open``; None: unbounded.
        choices: the only values allowed, or None.
        doc: what it does, in a few words.
    """

    name: str
    type: type
    default: object
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    doc: str = ""
    low_open: bool = False
    high_open: bool = False

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise TypeError(f"hyperparameter {self.name}: type must be one of float, int, bool, str, got {self.type}")
        bad = self.problem(self.default)
        if bad is not None:
            raise ValueError(f"hyperparameter {self.name}: its default {self.default!r} {bad}")

    @property
    def optional(self) -> bool:
        """Whether None is accepted (the default is None)."""
        return self.default is None

    def range_text(self) -> str:
        """The allowed values beyond the type: ``> 0``, ``in (0, 1]``, ``one of 1, 2, 3`` or ``""``."""
        if self.choices is not None:
            return "one of " + ", ".join(format_value(c) for c in self.choices)
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return f"in {'(' if self.low_open else '['}{lo:g}, {hi:g}{')' if self.high_open else ']'}"
        if lo is not None:
            return f"{'>' if self.low_open else '>='} {lo:g}"
        if hi is not None:
            return f"{'<' if self.high_open else '<='} {hi:g}"
        return ""

    def expected(self) -> str:
        """What a value must be, in words: ``a number > 0 (default 20.0)``."""
        kind = "" if self.choices is not None else _KIND[self.type]
        text = " ".join(filter(None, [kind, self.range_text()]))
        if self.optional:
            text += " or null"
        return f"{text} (default {format_value(self.default)})"

    def problem(self, value: object) -> str | None:
        """Why ``value`` is not allowed (``has the wrong type``, ...), or None when it is."""
        if value is None and self.optional:
            return None
        if self.type is object:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            return "is not finite" if number and not math.isfinite(value) else None
        if not _has_type(value, self.type):
            return "has the wrong type"
        if self.type is float and not math.isfinite(value):
            return "is not finite"
        if self.choices is not None:
            return None if value in self.choices else "is not one of the choices"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return "is out of range"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return "is out of range"
        return None


def _has_type(value: object, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def find_problems(plan: str, specs: dict[str, HParam], hparams: dict) -> list[str]:
    """One message per key of ``hparams`` that is not in ``specs`` (naming the valid ones) or whose
    value its spec rejects (saying what was expected); empty when all is well."""
    if not isinstance(hparams, dict):
        return [f"plan {plan!r}: expected a mapping of hyperparameter names to values, got {type(hparams).__name__}"]
    problems = []
    for key, value in hparams.items():
        spec = specs.get(key)
        if spec is None:
            valid = ", ".join(sorted(specs)) or "none"
            problems.append(f"{key!r} is not a hyperparameter of plan {plan!r} (valid: {valid})")
            continue
        bad = spec.problem(value)
        if bad is not None:
            problems.append(f"{key}={value!r} {bad} for plan {plan!r}: expected {spec.expected()}")
    return problems


def check_values(plan: str, specs: dict[str, HParam], hparams: dict, source: str) -> None:
    """Raise :class:`~tokenflow.errors.HParamError`, its message starting with ``source``, when
    :func:`find_problems` finds any."""
    problems = find_problems(plan, specs, hparams)
    if problems:
        raise HParamError(f"{source}: " + "; ".join(problems))
