"""Name -> aligner registry (the ``register_model`` pattern of timm).

The built-in plans are listed by name with the module that defines them, and a module is
imported only when one of its names is asked for: ``get_aligner("max-avg")`` loads neither
POT nor scipy, which only the transport plans need.

Each plan declares its hyperparameters once, as a ``hparam_specs`` tuple of
:class:`~tokenflow.align.hparams.HParam` next to its ``__init__``; :func:`hparam_specs`,
:func:`check_hparams` and :func:`hparam_table` read it. A plugin registered without one falls
back to its constructor's signature, read here and nowhere else: every argument but ``self``,
``chunk`` and ``dim`` is a hyperparameter, typed after its default (an int default: an integer,
a float one: a finite number, no or a None default: any value but a non-finite number).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import TypeVar

from ..errors import InputError
from .base import Aligner
from .hparams import HParam, check_values, format_value

__all__ = ["aligner_for", "check_hparams", "get_aligner", "get_aligner_class", "hparam_specs", "hparam_table",
           "is_token_plan", "list_aligners", "register_aligner"]

#: Constructor arguments that are not hyperparameters: the block size, and the embedding size,
#: which the backbone gives (:func:`aligner_for`).
NOT_HPARAMS = ("chunk", "dim")

#: Built-in names and the module (under ``tokenflow.align``) that registers each.
BUILTIN: dict[str, str] = {
    "assignment": "transport",
    "dive": "sets",
    "emd": "transport",
    "learnable": "learnable",
    "max-avg": "max_avg",
    "max-sum": "max_sum",
    "mpa": "sets",
    "omit": "transport",
    "partial-ot": "transport",
    "scan": "scan",
    "sinkhorn": "transport",
    "tokenflow": "tokenflow",
    "uniform": "uniform",
    "wti": "wti",
    "xclip": "xclip",
}

_REGISTRY: dict[str, type[Aligner]] = {}
A = TypeVar("A", bound=type[Aligner])


def register_aligner(name: str) -> Callable[[A], A]:
    """Class decorator registering an :class:`Aligner` under ``name``."""

    def deco(cls: A) -> A:
        if name in _REGISTRY:
            raise ValueError(f"aligner {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        if name in BUILTIN and not cls.__module__.startswith(f"{__package__}."):
            raise ValueError(f"aligner {name!r} is a built-in name; register yours under another")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_aligners() -> list[str]:
    """Names accepted by :func:`get_aligner`, sorted (built-in and registered ones)."""
    return sorted(set(BUILTIN) | set(_REGISTRY))


def get_aligner_class(name: str) -> type[Aligner]:
    """The class registered as ``name`` (importing its module on first use).

    Raises :class:`~tokenflow.errors.InputError` (a user error and a ``ValueError``) naming the
    valid choices for an unknown name.
    """
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(f"{__package__}.{BUILTIN[name]}")
    if name not in _REGISTRY:
        raise InputError(f"unknown aligner {name!r}; choose one of {', '.join(list_aligners())}")
    return _REGISTRY[name]


def is_token_plan(name: str) -> bool:
    """Whether ``name`` is a registered aligner that weights token pairs (it has a patch-word plan
    to explain); False for set methods and unknown names."""
    if name not in BUILTIN and name not in _REGISTRY:
        return False
    return bool(get_aligner_class(name).token_plan)


def _declared_specs(cls: type[Aligner]) -> tuple[HParam, ...]:
    """``hparam_specs`` of the class that defines ``cls``'s constructor (or of a subclass of it);
    a constructor without one gets a spec read off its signature."""
    for k in cls.__mro__:
        if "hparam_specs" in vars(k):
            return tuple(vars(k)["hparam_specs"])
        if "__init__" in vars(k):
            break
    specs = []
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name == "self" or p.name in NOT_HPARAMS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is p.empty else p.default
        kind = type(default) if type(default) in (bool, int, float, str) else object
        specs.append(HParam(p.name, kind, default))
    return tuple(specs)


def hparam_specs(name: str) -> dict[str, HParam]:
    """The hyperparameters of the plan registered as ``name``, by name, as its class declares them
    (``chunk`` and ``dim`` are not hyperparameters). Raises ``InputError`` for an unknown plan."""
    return {spec.name: spec for spec in _declared_specs(get_aligner_class(name))}


def check_hparams(name: str, hparams: dict, *, source: str = "hparams") -> None:
    """Check hyperparameters for the plan ``name`` against its spec.

    Raises :class:`~tokenflow.errors.HParamError` (a ``UserError`` and a ``ValueError``) whose
    message names ``source`` (``--hp``, a config key, a request), the plan, each bad key and what
    was expected: an unknown key lists the valid ones; a wrong type, a non-finite number or a
    value out of range gives the type, range and default. Cross-checks between hyperparameters
    (``heads`` dividing the embedding size, ...) are left to the plan's constructor."""
    check_values(name, hparam_specs(name), hparams, source)


def hparam_table() -> str:
    """A Markdown table of every built-in plan's hyperparameters: plan, name, type, default,
    range or choices, meaning (one ``(none)`` row for a plan without any)."""
    rows = ["| plan | hyperparameter | type | default | range | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    for name in sorted(BUILTIN):
        specs = hparam_specs(name)
        if not specs:
            rows.append(f"| `{name}` | (none) | | | | |")
        for spec in specs.values():
            kind = spec.type.__name__ + (" or null" if spec.optional else "")
            rows.append(f"| `{name}` | `{spec.name}` | {kind} | `{format_value(spec.default)}` | "
                        f"{spec.range_text()} | {spec.doc} |")
    return "\n".join(rows) + "\n"


def _construction_args(cls: type[Aligner]) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) & set(NOT_HPARAMS)


def get_aligner(name: str, **hyper) -> Aligner:
    """Build the aligner registered as ``name`` with its hyperparameters (e.g. ``lam=1.0``);
    ``chunk`` and, for plans with learned heads, ``dim`` may be given too.

    Raises ``InputError`` naming the valid choices for an unknown name, and
    :class:`~tokenflow.errors.HParamError` (a ``ValueError``) for a hyperparameter its spec rejects.
    """
    cls = get_aligner_class(name)
    extra = _construction_args(cls)
    check_hparams(name, {k: v for k, v in hyper.items() if k not in extra}, source=f"get_aligner({name!r})")
    return cls(**hyper)


def aligner_for(name: str, hparams: dict | None = None, dim: int | None = None) -> Aligner:
    """:func:`get_aligner` for a backbone of embedding size ``dim``: aligners with learned
    heads over the features (``mpa``, ``dive``, ``wti``, ``xclip``) get ``dim`` unless ``hparams``
    sets it."""
    hparams = dict(hparams or {})
    cls = get_aligner_class(name)
    if dim is not None and "dim" in _construction_args(cls):
        hparams.setdefault("dim", int(dim))
    return get_aligner(name, **hparams)
