"""Steps shared by the evaluation commands (``tokenflow evaluate`` with a backbone or from stores,
``tokenflow evaluate-compositional``): the split and its checks, ``--max-words``, the fusion weights, the report's
output. They sit in this layer so that the CLI, :mod:`tokenflow.index.offline` and
:mod:`tokenflow.eval.compositional_cli` use one copy."""

from __future__ import annotations

import json
import sys

__all__ = ["evaluation_split", "fusion_weights", "publish_report", "scoring_notes", "with_max_words"]


def evaluation_split(args):
    """The split of ``--dataset --root --split [--media]`` with ``--positives`` added, once
    ``--out``'s folder is writable and ``--rerank-top`` is at least 1 (``UserError`` otherwise)."""
    from ..data import load_split
    from ..errors import UserError
    from ..utils import check_writable

    split = load_split(args.dataset, args.root, args.split, media=args.media)
    if args.positives:
        from ..data.positives import add_positives

        split = add_positives(split, args.positives, args.split)
    if args.out:
        check_writable(args.out.parent, "--out folder")
    if args.rerank_top is not None and args.rerank_top < 1:
        raise UserError(f"--rerank-top: the shortlist must hold at least 1 item, got {args.rerank_top}")
    return split


def with_max_words(backbone, max_words: int | None):
    """``--max-words``: the caption length, up to the backbone's positional limit (``UserError``
    naming the limit beyond it); ``backbone`` itself."""
    from ..errors import UserError

    if max_words is not None:
        try:
            backbone.set_max_text_len(max_words)
        except ValueError as e:
            raise UserError(f"--max-words: {e}") from None
    return backbone


def fusion_weights(args, head: dict) -> tuple[float, float]:
    """``(w_global, w_fine)``: ``--w-global`` / ``--w-fine`` where given, else the model's ``head``'s,
    else 1."""
    w_global = head.get("w_global", 1.0) if args.w_global is None else args.w_global
    w_fine = head.get("w_fine", 1.0) if args.w_fine is None else args.w_fine
    return w_global, w_fine


def scoring_notes(scoring, command: str) -> None:
    """Print to stderr what a :class:`~tokenflow.models.scoring.Scoring` overrode of the trained
    folder, and its notes, as ``tokenflow COMMAND: note: ...`` lines."""
    overridden = scoring.describe_overrides()
    for note in [*([overridden] if overridden else []), *scoring.notes]:
        print(f"tokenflow {command}: note: {note}", file=sys.stderr)


def publish_report(report: dict, args, headline: str, table: str) -> int:
    """Record the command line in ``report``, print ``headline`` and ``table``, and write the report
    as JSON to ``--out`` when given; 0, the command's exit status."""
    from ..utils import write_text_atomic

    report["command"] = ["tokenflow", *(sys.argv[1:] if args.argv is None else args.argv)]
    print(headline)
    print(table)
    if args.out:
        write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
        print(f"report: {args.out}")
    return 0
