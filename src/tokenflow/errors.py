"""The errors a user can fix, apart from bugs.

``tokenflow`` prints a :class:`UserError` as one message naming the file, key or folder at fault
and exits with status 2; :class:`Diverged` (training stopped on a non-finite loss) exits with 3;
anything else is a bug and shows its traceback (exit 1). ``tokenflow --debug`` always shows it.
"""

from __future__ import annotations

__all__ = ["Diverged", "FileError", "HParamError", "InputError", "UserError"]


class UserError(Exception):
    """An error the user can fix (a bad config, a missing or unreadable file, a busy folder);
    the message says what and where. :class:`InputError`, :class:`FileError`, :class:`HParamError`,
    :class:`~tokenflow.train.ConfigError`, :class:`~tokenflow.data.MediaError` and
    :class:`~tokenflow._extras.MissingExtra` are ones."""


class FileError(UserError, ValueError):
    """A file or folder that cannot be read or written as needed: the message names it."""


class InputError(UserError, ValueError):
    """A bad value or file content given by the user: an unknown dataset, split or method name, a
    malformed annotation file, a setting out of its range. The message names the file, field or
    option and what was expected. It is a ``ValueError`` too, so ``except ValueError`` still
    catches it."""


class HParamError(UserError, ValueError):
    """A plan hyperparameter that is unknown, of the wrong type, non-finite or out of range: the
    message names where it came from (``--hp``, a config key, a request), the plan and the key."""


class Diverged(RuntimeError):
    """Training met a non-finite loss or gradient norm and stopped at that step; the last
    checkpoint and ``best/`` are those of the last good step."""
