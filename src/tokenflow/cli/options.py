"""The option groups that several commands share, each defined once here: ``--device``,
``--frames``, ``--video-tokens``, ``--on-error``, the fusion weights ``--w-global`` /
``--w-fine``, ``--hp NAME=VALUE`` and the stored-feature options ``--visual-store`` /
``--text-store``. A command whose meaning or default differs passes it as a parameter, so the
difference is written where the command is built."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["DEFAULT_FRAMES", "add_device", "add_frames", "add_fusion_weights", "add_hp", "add_on_error",
           "add_store_options", "add_video_tokens", "hparams", "parse_hparam"]

#: Frames sampled per video where a command does not say otherwise.
DEFAULT_FRAMES = 12


def add_device(p: argparse.ArgumentParser, help: str = "cpu, cuda, cuda:1 ...", default: str = "cpu") -> None:
    """``--device``: where the model runs."""
    p.add_argument("--device", default=default, help=help)


def add_frames(p: argparse.ArgumentParser, default: int = DEFAULT_FRAMES,
               help: str = "frames sampled per video") -> None:
    """``--frames``: frames per video (sampled when reading, or written by make-data)."""
    p.add_argument("--frames", type=int, default=default, help=help)


def add_video_tokens(p: argparse.ArgumentParser) -> None:
    """``--video-tokens``: one token per frame, or every patch of every frame."""
    p.add_argument("--video-tokens", choices=("frames", "patches"), default="frames",
                   help="a video's tokens: one per frame (default), or every patch of every frame")


def add_on_error(p: argparse.ArgumentParser, skip: str = "skip and count in the report") -> None:
    """``--on-error fail|skip`` for missing or unreadable media; ``skip`` says what skipping does."""
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help=f"missing or unreadable media: stop (default), or {skip}")


def add_fusion_weights(p: argparse.ArgumentParser, fine: str = "the fine-grained score") -> None:
    """``--w-global`` and ``--w-fine``: the weights of the fused score (default: a trained model's,
    else 1); ``fine`` names what the fine weight multiplies."""
    p.add_argument("--w-global", type=float, default=None,
                   help="weight of the global similarity (default: a trained model's, else 1)")
    p.add_argument("--w-fine", type=float, default=None,
                   help=f"weight of {fine} (default: a trained model's, else 1)")


def parse_hparam(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` as ``(name, value)``, the value read as JSON where it parses (``lam=20``,
    ``iters=3``, ``uniform=true``), else kept as text."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r} (no name)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_hp(p: argparse.ArgumentParser, help: str = "plan hyperparameter (repeatable)") -> None:
    """``--hp NAME=VALUE``, repeatable; read it with :func:`hparams`."""
    p.add_argument("--hp", type=parse_hparam, action="append", metavar="NAME=VALUE", help=help)


def hparams(args: argparse.Namespace) -> dict:
    """The ``--hp`` values as a dict. The scoring path checks them against the plan's declared
    hyperparameters (:func:`~tokenflow.models.scoring.build_plan`; ``load_scoring`` before it
    loads the backbone)."""
    return dict(args.hp or [])


def add_store_options(p: argparse.ArgumentParser, *, explain: bool = False,
                      visual: str = "store of the visual items' features",
                      text: str = "store of the captions' features") -> None:
    """``--visual-store`` and ``--text-store`` (``visual``, ``text``: their help), in a group of
    their own; ``explain`` adds ``--item`` and ``--text-id``."""
    g = p.add_argument_group("stored features instead of a backbone (tokenflow encode or import-features)")
    g.add_argument("--visual-store", type=Path, default=None, help=visual)
    g.add_argument("--text-store", type=Path, default=None, help=text)
    if explain:
        g.add_argument("--item", default=None, help="the visual item's id in --visual-store")
        g.add_argument("--text-id", default=None, help="the caption's id in --text-store")
