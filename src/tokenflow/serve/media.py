"""Media for the page, read safely: files only from the indexed collection, uploads decoded with caps.

* :class:`MediaRoot` maps an item to its file. The client names an item (its id); the path comes
  from the feature store, never from the request. The file is resolved (symlinks followed) and
  must lie inside the collection root, so a link that points outside is refused.
* :func:`thumbnail_png` turns an image, or a video's middle frame (the frame ``tokenflow explain``
  shows), into a small PNG: the page never receives the raw file.
* :func:`decode_upload` opens an uploaded query image with PIL under a byte cap, a pixel cap
  (checked from the header, before any pixel is decoded), a list of formats, and ``verify()``.
  Its errors name the upload (file name, declared type) and the problem: an image too large
  (its width x height and the cap; not PIL's own decompression-bomb message), or bytes that
  no accepted format reads.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

from .._extras import require
from ..data.base import VIDEO_EXTENSIONS
from ..errors import UserError

__all__ = ["RequestError", "MediaRoot", "UPLOAD_FORMATS", "decode_upload", "middle_frame_index", "thumbnail_png",
           "upload_name"]

#: Image formats accepted as a query upload (PIL names).
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


class RequestError(UserError):
    """A request the server refuses; ``status`` is the HTTP status (4xx) of the JSON error."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def middle_frame_index(n_frames: int) -> int:
    """The frame a video is explained on: the 6th of 12, as in the paper (and ``tokenflow explain``)."""
    return n_frames // 2 - 1 if n_frames > 1 else 0


class MediaRoot:
    """Where the collection's files may be read from.

    Args:
        paths: each item's stored path (None for texts); relative paths are taken from ``base``.
        root: the folder every file must resolve into; default: the deepest folder holding all
            the stored paths (as written, before symlinks are followed).
        base: the folder relative paths start from (default: the current directory).
    """

    def __init__(self, paths: Sequence[str | None], root: str | Path | None = None, base: str | Path | None = None):
        self.base = Path(base) if base is not None else Path.cwd()
        absolute = [os.path.abspath(self.base / p) for p in paths if p]
        if root is None:
            root = os.path.commonpath([os.path.dirname(p) for p in absolute]) if absolute else self.base
        self.root = Path(root).resolve()

    def resolve(self, stored: str | None) -> Path:
        """The real file of a stored path; :class:`RequestError` 404 if there is none, 403 if it
        resolves outside the root (``..`` in a stored path, an absolute path elsewhere, a symlink)."""
        if not stored:
            raise RequestError("this item has no media file (a text collection)", 404)
        try:
            real = (self.base / stored).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            raise RequestError("the item's media file is missing", 404) from None
        if not real.is_relative_to(self.root):
            raise RequestError("the item's media file lies outside the collection root: refused", 403)
        if not real.is_file():
            raise RequestError("the item's media is not a regular file", 404)
        return real


def _pil():
    require("PIL", "train", "serving images")
    from PIL import Image

    return Image


def thumbnail_png(path: Path, size: int = 256, num_frames: int = 12, max_pixels: int = 50_000_000) -> bytes:
    """A PNG of at most ``size`` x ``size`` pixels: the image, or the video's middle frame."""
    Image = _pil()
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        from ..data.video import read_video_frames

        frames = read_video_frames(path, num_frames)
        image = frames[middle_frame_index(len(frames))].convert("RGB")
    else:
        image = _open_capped(Image, path, max_pixels, None, f"media file {path.name!r}")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _header_size(Image, source: bytes | Path, formats: Sequence[str]) -> tuple[int, int] | None:
    """(width, height) read from the header by the first of ``formats`` that accepts it, or None.

    The format's opener is called directly, as ``Image.open`` does, but without the size check
    ``Image.open`` then makes itself, which refuses a huge image with a message naming no size."""
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as fp:
        prefix = fp.read(16)
        for fmt in formats:
            factory, accept = Image.OPEN.get(fmt, (None, None))
            ok = factory is not None and (not accept or accept(prefix))
            if not ok or isinstance(ok, str):  # a string: PIL's warning that the format does not apply
                continue
            fp.seek(0)
            try:
                im = factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error, OSError, ValueError, EOFError):
                continue
            size = im.size
            im.close()
            return size
    return None


def _open_capped(Image, source: bytes | Path, max_pixels: int, formats: Sequence[str] | None, what: str):
    """Check the pixel count from the header, open, verify, then decode as RGB; ``what`` names the
    source in errors."""
    Image.init()
    names = tuple(formats) if formats is not None else tuple(Image.ID)
    size = _header_size(Image, source, names)
    if size is None:
        accepted = ", ".join(formats) if formats is not None else "any format PIL knows"
        raise RequestError(f"not an image PIL can read ({what}; accepted formats: {accepted})", 400)
    if size[0] * size[1] > max_pixels:
        raise RequestError(f"image too large ({what}): {size[0]} x {size[1]} = {size[0] * size[1]} pixels, "
                           f"at most {max_pixels} allowed", 413)
    errors = (Image.UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning,
              OSError, ValueError, SyntaxError, EOFError, struct.error)
    reopen = (lambda: Image.open(io.BytesIO(source), formats=names)) if isinstance(source, bytes) else (
        lambda: Image.open(source, formats=names))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with reopen() as im:
                im.verify()  # structure and checksums, without decoding the pixels
            with reopen() as im:
                im.load()
                return im.convert("RGB")
        except errors as e:
            reason = _OBJECT_REPR.sub("the file", str(e)) or "no detail"
            raise RequestError(f"not an image PIL can read ({what}: {type(e).__name__}: {reason})", 400) from None


_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")  # e.g. <_io.BytesIO object at 0x7f...>: no use to a user


def upload_name(filename: str | None, content_type: str | None) -> str:
    """How errors name an upload: ``upload 'q.png', image/png``."""
    name = "upload" if not filename else f"upload {filename[:80]!r}"
    return f"{name}, {content_type[:80]}" if content_type else name


def decode_upload(data: bytes, max_bytes: int, max_pixels: int, *, filename: str | None = None,
                  content_type: str | None = None) -> object:
    """A query image from uploaded bytes as an RGB PIL image, or :class:`RequestError` naming the
    upload (``filename``, ``content_type``: as the client declared them) and the problem."""
    what = upload_name(filename, content_type)
    if len(data) > max_bytes:
        raise RequestError(f"{what} of {len(data)} bytes: more than the {max_bytes} allowed", 413)
    if not data:
        raise RequestError(f"the uploaded image is empty ({what})", 400)
    return _open_capped(_pil(), data, max_pixels, UPLOAD_FORMATS, what)
