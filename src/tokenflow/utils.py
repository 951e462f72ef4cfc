"""Small shared helpers: atomic file writes, the lock of an output folder, and what machine a result
was measured on."""

from __future__ import annotations

import contextlib
import errno
import os
import platform
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch

from ._version import __version__
from .errors import FileError, UserError

__all__ = ["LOCK_FILE", "FolderBusy", "atomic_path", "check_writable", "folder_lock", "machine", "machine_info",
           "read_safetensors", "remove_temporaries", "usable_cores", "write_text_atomic"]

#: The lock file inside an output folder (see :func:`folder_lock`).
LOCK_FILE = ".tokenflow.lock"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one
    ``os.replace``, on error it is removed. Readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        # again: a writer may have replaced the file (safetensors' save_file makes a new 0600 one)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class FolderBusy(UserError):
    """Another process holds the output folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive OS lock (``fcntl.flock``) on ``folder``/:data:`LOCK_FILE` for the block.

    A second process that asks for it stops at once with :class:`FolderBusy` naming the holder's
    pid (written into the lock file). The OS drops the lock when its holder exits, killed or not,
    so a stale lock file never blocks a later run; the file itself stays (removing it would let
    two processes lock two different files).
    """
    import fcntl

    path = Path(folder) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 (held open for the whole block)
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise FolderBusy(f"{folder} is in use by another tokenflow process (pid {holder}, lock file {path}); "
                             "wait for it to end or choose another output folder") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        f.close()


def check_writable(folder: str | Path, what: str = "output folder") -> None:
    """Raise :class:`FileError` unless files can be created in ``folder`` (or, when it does not
    exist yet, in its nearest existing parent): checked before any work starts."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise FileError(f"{what} {folder}: {probe} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tokenflow-probe-", dir=probe)
    except OSError as e:
        raise FileError(f"{what} {folder} is not writable ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def remove_temporaries(folder: str | Path, patterns: tuple[str, ...] = (".*.tmp",)) -> list[Path]:
    """Delete what killed writers of this project left in ``folder``: :func:`atomic_path`'s
    ``.NAME.*.tmp`` files and whatever else matches ``patterns`` (files or folders); returns them.
    Call it only while holding the folder's lock."""
    import shutil

    removed = []
    for pattern in patterns:
        for p in sorted(Path(folder).glob(pattern)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def read_safetensors(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a truncated, corrupt or foreign (e.g. pickled) file
    raises :class:`FileError` naming it."""
    from ._extras import require

    require("safetensors", "train", f"reading {what}")
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise FileError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_info() -> dict:
    """What a measurement ran on: platform, CPU model and cores, torch and its threads, GPU, date."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tokenflow": __version__,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine() -> str:
    """:func:`machine_info` as one line for result tables."""
    info = machine_info()
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    return (f"{info['cpus']}-core {info.get('cpu_model', info['processor'])}{gpu}, torch {info['torch']}, "
            f"{info['torch_threads']} threads")
