"""Name -> aligner registry (the ``register_model`` pattern of timm)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from .base import Aligner

__all__ = ["aligner_for", "get_aligner", "is_token_plan", "list_aligners", "register_aligner"]

_REGISTRY: dict[str, type[Aligner]] = {}
A = TypeVar("A", bound=type[Aligner])


def register_aligner(name: str) -> Callable[[A], A]:
    """Class decorator registering an :class:`Aligner` under ``name``."""

    def deco(cls: A) -> A:
        if name in _REGISTRY:
            raise ValueError(f"aligner {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_aligners() -> list[str]:
    """Names accepted by :func:`get_aligner`, sorted."""
    return sorted(_REGISTRY)


def is_token_plan(name: str) -> bool:
    """Whether ``name`` is a registered aligner that weights token pairs (it has a patch-word plan
    to explain); False for set methods and unknown names."""
    cls = _REGISTRY.get(name)
    return cls is not None and bool(cls.token_plan)


def get_aligner(name: str, **hyper) -> Aligner:
    """Build the aligner registered as ``name`` with its hyperparameters (e.g. ``lam=1.0``).

    Raises ``ValueError`` naming the valid choices for an unknown name or hyperparameter.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown aligner {name!r}; choose one of {', '.join(list_aligners())}")
    cls = _REGISTRY[name]
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
    cls = _REGISTRY.get(name)
    if cls is not None and dim is not None and "dim" in inspect.signature(cls.__init__).parameters:
        hparams.setdefault("dim", int(dim))
    return get_aligner(name, **hparams)
