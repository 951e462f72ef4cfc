"""The explanation panel's numbers: one pair's plan as JSON, with the words of its tokens.

:func:`explanation` is :func:`tokenflow.viz.explain.explanation_of` (the numbers of ``tokenflow
explain``) as the page reads it: ``d`` and ``e`` are the plan's own token weights where it has
them, else each token's share of the fine score, and ``weights``/``weights_label`` say which;
``markers`` groups the strongest pairs by patch. :func:`stored_words` labels the tokens of a text
kept in a store (a text collection): the store keeps the text, not its token ids, so the text is
tokenized again by the model that encoded it.
"""

from __future__ import annotations

from ..align import Aligner
from ..models.base import DualEncoder
from ..tokens import Tokens
from ..viz.explain import explanation_of, numbered_tokens, token_labels

__all__ = ["TOP_PAIRS", "explanation", "stored_words"]

TOP_PAIRS = 6  # strongest word-patch pairs in an explanation


def explanation(aligner: Aligner, vis: Tokens, txt: Tokens, *, tokens: list[str], caption: str,
                grid: tuple[int, int], direction: str, device: str = "cpu", tokens_note: str | None = None) -> dict:
    """The JSON of one pair's explanation (``vis``, ``txt``: one row each). ``tokens`` labels the
    text's real tokens; when they are not as many, the tokens are numbered and ``tokens_note``
    says why."""
    n = int(txt.mask[0].sum())
    if len(tokens) != n:
        tokens_note = f"{len(tokens)} words for {n} tokens: the tokens are numbered"
        tokens = numbered_tokens(n)
    expl = explanation_of(aligner, vis.to(device), txt.to(device), direction=direction, caption=caption,
                          tokens=tokens, grid=grid)  # explanation_of runs under torch.no_grad
    return {**expl.to_dict(TOP_PAIRS), "tokens_note": tokens_note}


def stored_words(model: DualEncoder, text: str | None, n: int) -> tuple[list[str], str | None]:
    """Labels of the ``n`` real tokens of a stored text, and a note when they are not its words.

    The text as ``model`` tokenizes it (the very tokens the store holds when ``model`` encoded
    it); else its words split as :func:`tokenflow.viz.explain.token_labels` does when they are as
    many; else :func:`~tokenflow.viz.explain.numbered_tokens`, with a note saying why."""
    if not text:
        return numbered_tokens(n), "the store keeps no text for this item: its tokens are numbered"
    ids, mask = model.tokenize([text])
    words = model.decode_tokens(ids[0][mask[0].bool()].tolist())
    if len(words) == n:
        return words, None
    words, numbered = token_labels(text, n), numbered_tokens(n)
    if words != numbered:
        return words, "the served model tokenizes this text otherwise: words as split by spaces and punctuation"
    return numbered, (f"the stored text has {n} tokens, which the served model's tokens "
                      "and the text's words do not match: its tokens are numbered")
