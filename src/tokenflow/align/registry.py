"""Name -> aligner registry (the ``register_model`` pattern of timm).

The built-in plans are listed by name with the module that defines them, and a module is
imported only when one of its names is asked for: ``get_aligner("max-avg")`` loads neither
POT nor scipy, which only the transport plans need.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import TypeVar

from .base import Aligner

__all__ = ["aligner_for", "get_aligner", "get_aligner_class", "is_token_plan", "list_aligners", "register_aligner"]

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

    Raises ``ValueError`` naming the valid choices for an unknown name.
    """
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(f"{__package__}.{BUILTIN[name]}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown aligner {name!r}; choose one of {', '.join(list_aligners())}")
    return _REGISTRY[name]


def is_token_plan(name: str) -> bool:
    """Whether ``name`` is a registered aligner that weights token pairs (it has a patch-word plan
    to explain); False for set methods and unknown names."""
    if name not in BUILTIN and name not in _REGISTRY:
        return False
    return bool(get_aligner_class(name).token_plan)


def get_aligner(name: str, **hyper) -> Aligner:
    """Build the aligner registered as ``name`` with its hyperparameters (e.g. ``lam=1.0``).

    Raises ``ValueError`` naming the valid choices for an unknown name or hyperparameter.
    """
    cls = get_aligner_class(name)
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p != "self"]
    unknown = sorted(set(hyper) - set(valid))
    if unknown:
        raise ValueError(f"aligner {name!r} has no hyperparameter(s) {unknown}; valid: {valid}")
    return cls(**hyper)


def aligner_for(name: str, hparams: dict | None = None, dim: int | None = None) -> Aligner:
    """:func:`get_aligner` for a backbone of embedding size ``dim``: aligners with learned
    heads over the features (``mpa``, ``dive``) get ``dim`` unless ``hparams`` sets it."""
    hparams = dict(hparams or {})
    cls = get_aligner_class(name)
    if dim is not None and "dim" in inspect.signature(cls.__init__).parameters:
        hparams.setdefault("dim", int(dim))
    return get_aligner(name, **hparams)
