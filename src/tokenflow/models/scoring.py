"""The one scoring path: a model folder, plus explicit overrides, turned into what is scored with.

A folder written by training holds the backbone, ``tokenflow.json`` (the plan, its
hyperparameters, ``w_global`` and ``w_fine``) and, for plans with parameters,
``aligner.safetensors``. :func:`load_scoring` reads it once and applies the overrides a command
or a request gives (another plan, hyperparameters, fusion weights): the trained plan keeps its
learned weights unless an override changes their shape, any other plan is built fresh, and
:attr:`Scoring.overrides` names exactly what differs from the folder. ``evaluate``, ``encode``,
``search``, ``serve``, ``explain`` and :class:`~tokenflow.index.Searcher` all come through here,
so that they score the same model, query and item with the same number. A bare backbone folder
(no ``tokenflow.json``) gives the ``tokenflow`` plan (or the one asked for) and unit weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..align import Aligner, aligner_for, check_hparams
from ..errors import FileError, HParamError, UserError
from ..utils import read_safetensors
from .base import DualEncoder
from .loading import load_backbone

__all__ = ["GLOBAL_ONLY", "HEAD_FILE", "Scoring", "TrainedPlan", "build_plan", "load_scoring", "read_head_config"]

GLOBAL_ONLY = "none"  # the plan name of scoring by the global similarity alone
DEFAULT_PLAN = "tokenflow"  # the plan of a bare backbone folder
HEAD_FILE = "tokenflow.json"  # a trained folder's plan, hyperparameters and fusion weights


def read_head_config(folder: str | Path) -> dict | None:
    """``tokenflow.json`` of a saved model folder, or ``None`` for a bare backbone folder."""
    path = Path(folder) / HEAD_FILE
    if not path.is_file():
        return None
    try:
        head = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(head, dict) or "aligner" not in head:
        raise FileError(f"{path}: expected an object with 'aligner', 'hparams', 'w_global', 'w_fine'")
    return head


@dataclass(frozen=True)
class TrainedPlan:
    """What a trained folder says about scoring: its plan (``"none"``: global only), the plan's
    hyperparameters and learned weights (empty for a plan without parameters), the fusion weights
    and the raw ``tokenflow.json`` (``head``)."""

    folder: Path
    name: str
    hparams: dict
    state: dict[str, Tensor]
    w_global: float
    w_fine: float
    head: dict

    @classmethod
    def read(cls, folder: str | Path) -> TrainedPlan | None:
        """The trained plan of ``folder``, or None for a bare backbone folder."""
        folder = Path(folder)
        head = read_head_config(folder)
        if head is None:
            return None
        weights = folder / "aligner.safetensors"
        state = read_safetensors(weights, "plan weights") if weights.is_file() else {}
        hparams = head.get("hparams") or {}
        if not isinstance(hparams, dict):
            raise UserError(f"{folder / 'tokenflow.json'}: 'hparams' must be an object, got {hparams!r}")
        return cls(folder, head["aligner"] or GLOBAL_ONLY, dict(hparams), state, float(head.get("w_global", 1.0)),
                   float(head.get("w_fine", 1.0)), head)


@dataclass(frozen=True)
class Scoring:
    """What is scored with: ``w_global * (v_bar . t_bar) + w_fine * s_dir`` with ``aligner``.

    ``name``: the plan (``"none"``: global only, ``aligner`` None). ``trained``: the plan is the
    folder's trained one with its learned weights and hyperparameters (overridden ones aside).
    ``overrides``: field -> (the folder's value, the value used), for exactly the fields that differ
    (``"aligner"``, ``"hparams.NAME"``, ``"w_global"``, ``"w_fine"``); empty for a bare backbone.
    ``notes``: messages for the user (learned weights freshly initialised). ``head``: the folder's
    ``tokenflow.json`` ({} for a bare backbone). ``backbone`` is None for stored features
    (:func:`~tokenflow.index.offline.plan_for_stores`)."""

    backbone: DualEncoder | None
    aligner: Aligner | None
    name: str
    w_global: float
    w_fine: float
    trained: bool
    overrides: dict[str, tuple[object, object]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    head: dict = field(default_factory=dict)

    def describe_overrides(self) -> str | None:
        """One line naming what differs from the trained folder, or None when nothing does."""
        if not self.overrides:
            return None
        parts = [f"{k} {old!r} -> {new!r}" for k, (old, new) in self.overrides.items()]
        return "overrides the trained model's " + ", ".join(parts)


def _fits(plan: Aligner, state: dict[str, Tensor]) -> bool:
    """Whether ``state`` has exactly ``plan``'s parameter names and shapes."""
    own = plan.state_dict()
    return own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own)


def _checked_name(trained: TrainedPlan | None, name: str | None, hparams: dict) -> str:
    """The plan scored with (``name``, else the trained one, else ``tokenflow``), once ``hparams``
    are checked against its declared hyperparameters (:class:`~tokenflow.errors.HParamError`
    naming them otherwise; global only takes none). Needs no backbone."""
    name = name or (None if trained is None else trained.name) or DEFAULT_PLAN
    if name == GLOBAL_ONLY:
        if hparams:  # nothing would read them: say so rather than ignore them
            raise HParamError(f"--hp: scoring by the global similarity alone ({GLOBAL_ONLY!r}) takes no "
                              f"hyperparameters, got {', '.join(sorted(hparams))}")
    else:
        check_hparams(name, hparams, source="--hp")
    return name


def build_plan(trained: TrainedPlan | None, name: str | None = None, hparams: dict | None = None, *,
               dim: int) -> tuple[Aligner | None, str, bool, dict[str, tuple[object, object]], list[str]]:
    """``(aligner, plan name, trained, overrides, notes)`` for a backbone of embedding size ``dim``.

    ``name`` None takes the trained plan (a bare backbone: ``tokenflow``). The trained plan is
    built with its trained hyperparameters updated by ``hparams`` and keeps its learned weights
    while they still fit; any other plan is built fresh from ``hparams``. See :class:`Scoring`."""
    hparams = dict(hparams or {})
    return _build_plan(trained, _checked_name(trained, name, hparams), hparams, dim=dim)


def _build_plan(trained: TrainedPlan | None, name: str, hparams: dict, *,
                dim: int) -> tuple[Aligner | None, str, bool, dict[str, tuple[object, object]], list[str]]:
    """:func:`build_plan` of the plan ``name`` given by :func:`_checked_name` (``hparams`` checked)."""
    trained_name = None if trained is None else trained.name
    overrides: dict[str, tuple[object, object]] = {}
    if trained_name is not None and name != trained_name:
        overrides["aligner"] = (trained_name, name)
    if name == GLOBAL_ONLY:
        return None, name, trained_name == GLOBAL_ONLY, overrides, []
    if name != trained_name:
        plan = aligner_for(name, hparams, dim=dim)
        notes = []
        if any(True for _ in plan.parameters()):
            where = "no trained model folder gives them" if trained is None else \
                f"{trained.folder} was trained with {trained_name}"
            notes.append(f"{name} has learned weights and {where}; they are freshly initialised. Use a folder "
                         f"trained with {name} to score with its weights.")
        return plan, name, False, overrides, notes
    for key, value in hparams.items():
        if trained.hparams.get(key) != value:
            overrides[f"hparams.{key}"] = (trained.hparams.get(key), value)
    plan = aligner_for(name, {**trained.hparams, **hparams}, dim=dim)
    if not trained.state:
        return plan, name, True, overrides, []
    if _fits(plan, trained.state):
        plan.load_state_dict(trained.state)
        return plan, name, True, overrides, []
    changed = ", ".join(k for k in overrides if k.startswith("hparams."))
    return plan, name, False, overrides, [f"{changed} change the shape of {name}'s learned weights in "
                                          f"{trained.folder}; they are freshly initialised"]


def load_scoring(folder: str | Path, aligner: str | None = None, hparams: dict | None = None, *,
                 w_global: float | None = None, w_fine: float | None = None,
                 backbone: DualEncoder | None = None) -> Scoring:
    """What ``folder`` (a trained model folder or a bare backbone folder) is scored with, after the
    given overrides: ``aligner`` (a plan name, ``"none"``: global only), ``hparams`` (the plan's
    hyperparameters), ``w_global``, ``w_fine`` (None: the folder's, else 1). ``backbone``: the
    folder's backbone when already loaded (it is not loaded again). Bad hyperparameters raise
    :class:`~tokenflow.errors.UserError` naming them, before the backbone is loaded."""
    folder = Path(folder)
    trained = TrainedPlan.read(folder)
    hparams = dict(hparams or {})
    name = _checked_name(trained, aligner, hparams)  # a bad --hp fails fast, not after loading the weights
    backbone = load_backbone(folder) if backbone is None else backbone
    plan, name, is_trained, overrides, notes = _build_plan(trained, name, hparams, dim=backbone.embed_dim)
    weights = {}
    for key, given in (("w_global", w_global), ("w_fine", w_fine)):
        saved = 1.0 if trained is None else getattr(trained, key)
        weights[key] = saved if given is None else float(given)
        if trained is not None and weights[key] != saved:
            overrides[key] = (saved, weights[key])
    return Scoring(backbone, plan, name, weights["w_global"], weights["w_fine"], is_trained, overrides,
                   tuple(notes), {} if trained is None else dict(trained.head))
