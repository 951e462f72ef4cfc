"""Media for the page, read safely: files only from the indexed collection, uploads decoded with caps.

* :class:`MediaRoot` maps an item to its file. The client names an item (its id); the path comes
  from the feature store, never from the request. The file is resolved (symlinks followed) and
  must lie inside the collection root, so a link that points outside is refused.
* :func:`thumbnail_png` turns an image, or a video's middle frame (the frame ``tokenflow explain``
  shows), into a small PNG: the page never receives the raw file.
* :func:`decode_upload` opens an uploaded query image with PIL under a byte cap, a pixel cap
  (checked from the header, before any pixel is decoded), a list of formats, and ``verify()``.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from .._extras import require
from ..data.base import VIDEO_EXTENSIONS
from ..errors import UserError

__all__ = ["RequestError", "MediaRoot", "UPLOAD_FORMATS", "decode_upload", "middle_frame_index", "thumbnail_png"]

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
        image = _open_capped(Image, path, max_pixels, formats=None)
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _open_capped(Image, source, max_pixels: int, formats: Sequence[str] | None):
    """Open, check the pixel count from the header, verify, then decode as RGB."""
    errors = (Image.UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning,
              OSError, ValueError, SyntaxError, EOFError)
    reopen = (lambda: Image.open(io.BytesIO(source), formats=formats)) if isinstance(source, bytes) else (
        lambda: Image.open(source, formats=formats))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with reopen() as im:
                if im.width * im.height > max_pixels:
                    raise RequestError(f"image of {im.width} x {im.height} pixels: more than the "
                                       f"{max_pixels} allowed", 413)
                im.verify()  # structure and checksums, without decoding the pixels
            with reopen() as im:
                im.load()
                return im.convert("RGB")
        except errors as e:
            raise RequestError(f"not a readable image ({type(e).__name__}: {e})", 400) from None


def decode_upload(data: bytes, max_bytes: int, max_pixels: int) -> object:
    """A query image from uploaded bytes as an RGB PIL image, or :class:`RequestError`."""
    if len(data) > max_bytes:
        raise RequestError(f"upload of {len(data)} bytes: more than the {max_bytes} allowed", 413)
    if not data:
        raise RequestError("the uploaded image is empty", 400)
    return _open_capped(_pil(), data, max_pixels, formats=UPLOAD_FORMATS)
