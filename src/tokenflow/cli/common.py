"""Steps that several commands take the same way: the evaluated split and its checks,
``--max-words``, the notes of the scoring path, reading a file of lines, and printing and writing
a report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import InputError, UserError

__all__ = ["evaluation_split", "print_notes", "publish_report", "read_lines", "scoring_notes", "with_max_words"]


def evaluation_split(args: argparse.Namespace):
    """The split of ``--dataset --root --split [--media]`` with ``--positives`` added, once
    ``--out``'s folder is writable and ``--rerank-top`` is at least 1 (``UserError`` otherwise)."""
    from ..data import load_split
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
    """``--max-words``: the caption length, up to the backbone's positional limit (the backbone's
    :class:`~tokenflow.errors.InputError` naming the limit, as ``--max-words: ...``); returns
    ``backbone`` itself."""
    if max_words is not None:
        try:
            backbone.set_max_text_len(max_words)
        except InputError as e:
            raise InputError(f"--max-words: {e}") from None
    return backbone


def print_notes(command: str, notes: list[str], kind: str = "note") -> None:
    """Each of ``notes`` on stderr as ``tokenflow COMMAND: KIND: ...``."""
    for note in notes:
        print(f"tokenflow {command}: {kind}: {note}", file=sys.stderr)


def scoring_notes(scoring, command: str) -> None:
    """Print to stderr what a :class:`~tokenflow.models.scoring.Scoring` overrode of the trained
    folder, and its notes, as ``tokenflow COMMAND: note: ...`` lines."""
    overridden = scoring.describe_overrides()
    print_notes(command, [*([overridden] if overridden else []), *scoring.notes])


def read_lines(path: Path, what: str) -> list[str]:
    """The non-empty lines of the UTF-8 file ``path`` (``what``: what they are, for messages)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: {what} must be UTF-8 text, one per line ({e})") from None
    lines = [line for line in lines if line]
    if not lines:
        raise UserError(f"{path}: no {what} (the file is empty)")
    return lines


def publish_report(report: dict, args: argparse.Namespace, headline: str, table: str) -> int:
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
