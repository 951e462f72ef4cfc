"""tokenflow: fine-grained cross-modal alignment for vision-language retrieval."""

from .align import Aligner, Plan, Scores, get_aligner, list_aligners, register_aligner
from ._version import __version__
from .tokens import Tokens

__all__ = ["Aligner", "Plan", "Scores", "Tokens", "__version__", "get_aligner", "list_aligners", "register_aligner"]
