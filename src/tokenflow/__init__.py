"""tokenflow: fine-grained cross-modal alignment for vision-language retrieval."""

from .align import Aligner, Plan, Scores, get_aligner, list_aligners, register_aligner
from .tokens import Tokens

__version__ = "0.1.0"

__all__ = ["Aligner", "Plan", "Scores", "Tokens", "__version__", "get_aligner", "list_aligners", "register_aligner"]
