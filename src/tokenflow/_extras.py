"""Optional dependencies: each feature beyond the alignment core names the extra that installs it.

``pip install tokenflow`` gives the core (plans, losses: torch, numpy, scipy, POT). The rest
comes with extras, e.g. ``pip install 'tokenflow[train,video]'``; using a feature without its
extra raises :class:`MissingExtra`, which says what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UserError

__all__ = ["EXTRAS", "EXTRA_MODULES", "MissingExtra", "require", "require_extra"]

#: Extra -> what it adds (kept in step with pyproject.toml by tests/test_layers.py).
EXTRAS = {
    "train": "training, evaluation on datasets, the demo: pydantic, pyyaml, safetensors, pillow, tqdm",
    "video": "reading and writing videos: av (PyAV)",
    "clip": "CLIP weights from a local Hugging Face folder: transformers, tokenizers, safetensors",
    "viz": "explanation figures: matplotlib, pillow",
    "search": "the FAISS shortlist of large collections: faiss-cpu",
    "serve": "tokenflow serve, the local web page over a search index: fastapi, uvicorn, python-multipart",
}

#: Extra -> the modules it provides that tokenflow imports.
EXTRA_MODULES = {
    "train": ("pydantic", "yaml", "safetensors", "PIL", "tqdm"),
    "video": ("av",),
    "clip": ("transformers", "tokenizers", "safetensors"),
    "viz": ("matplotlib", "PIL"),
    "search": ("faiss",),
    "serve": ("fastapi", "uvicorn"),
}


class MissingExtra(UserError, ImportError):
    """A feature was used without the optional dependency it needs; the message names the extra."""


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtra` naming ``pip install 'tokenflow[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if extra not in EXTRAS:
            raise ValueError(f"unknown extra {extra!r}") from e
        raise MissingExtra(f"{feature} needs {module.split('.')[0]}, which is not installed: "
                           f"pip install 'tokenflow[{extra}]'") from e


def require_extra(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtra` unless every module of ``extra`` can be imported."""
    for module in EXTRA_MODULES[extra]:
        require(module, extra, feature)
