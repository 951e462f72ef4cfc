"""The ``tokenflow`` command: ``demo``, ``make-data``, ``train``, ``ablate``, ``evaluate``,
``evaluate-compositional``, ``explain``, ``encode``, ``import-features``, ``index``, ``search``,
``serve``, ``prepare-frames``, ``convert-captions``, ``bench``.

Exit status: 0 done; 2 an error the user can fix (:class:`~tokenflow.errors.UserError`, a missing
file or folder), printed as one message; 3 training diverged; 1 a bug, with its traceback.
``--debug`` shows the traceback of every error."""

from __future__ import annotations

import argparse
import sys
import traceback

from .._version import __version__
from ..errors import Diverged, UserError
from . import bench, data, demo, evaluate, explain, index, serve, train

__all__ = ["build_parser", "main"]

#: OS errors about a path the user gave (a missing file, a file where a folder is expected, ...):
#: the message names the path, so they are user errors too.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)

#: The command families, in the order their commands are listed.
FAMILIES = (bench, index, evaluate, data, demo, explain, train, serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``tokenflow`` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="tokenflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tokenflow {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    sub = parser.add_subparsers(dest="command", required=True)
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``tokenflow ARGV`` (None: the process's arguments) and return its exit status."""
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except Diverged as e:
        return _fail(args, e, 3)
    except (UserError, *PATH_ERRORS) as e:  # the message names the file, key or folder at fault
        return _fail(args, e, 2)
    except Exception as e:  # a bug, a bare ValueError included: the traceback is what a report needs
        traceback.print_exc()
        print(f"tokenflow {args.command}: internal error ({type(e).__name__}); please report it with the "
              "traceback above", file=sys.stderr)
        return 1


def _fail(args: argparse.Namespace, e: BaseException, code: int) -> int:
    if args.debug:
        traceback.print_exception(e)
    print(f"tokenflow {args.command}: {e}", file=sys.stderr)
    return code
