"""``tokenflow make-data``, ``convert-captions`` and ``prepare-frames``: the data a run reads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_frames, add_on_error

__all__ = ["add_parsers"]


def _sizes(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected TRAIN,VAL,TEST counts such as 1000,100,100, got {text!r}")
    return parts


def _make_data(args: argparse.Namespace) -> int:
    from ..data.synthetic import make_synthetic

    paths = make_synthetic(args.out, images=args.images, videos=args.videos, image_size=args.size,
                           frames=args.frames, seed=args.seed, image_format=args.format, unpaired=args.unpaired)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ..data import convert_pickled_captions

    print(convert_pickled_captions(args.pickle, args.out))
    return 0


def _prepare_frames(args: argparse.Namespace) -> int:
    from ..data import load_split
    from ..data.frame_cache import VIDEO_SPLITS, FrameCache, prepare_frames

    videos = [p for s in args.split or VIDEO_SPLITS[args.dataset]
              for p in load_split(args.dataset, args.root, s, media=args.media).item_paths]
    cache = FrameCache.create(args.out, args.frames, args.size)
    res = prepare_frames(videos, cache, workers=args.workers, on_error=args.on_error)
    for bad in res["skipped"]:
        print(f"tokenflow prepare-frames: skipped {bad['path']}: {bad['reason']}", file=sys.stderr)
    print(f"{args.out}: {res['videos']} videos, {res['written']} written, {res['kept']} already there, "
          f"{res['failed']} skipped")
    return 0


def add_parsers(sub) -> None:
    """Register ``make-data``, ``convert-captions`` and ``prepare-frames``."""
    _add_make_data(sub)
    _add_convert_captions(sub)
    _add_prepare_frames(sub)


def _add_make_data(sub) -> None:
    p = sub.add_parser("make-data", help="write the synthetic benchmark (Karpathy JSON + images, MSR-VTT + mp4)")
    p.add_argument("out", type=Path, help="output folder (images/ and videos/ are created in it)")
    p.add_argument("--images", type=_sizes, default=(1000, 100, 100), help="train,val,test images (even counts)")
    p.add_argument("--videos", type=_sizes, default=(200, 50, 50), help="train,val,test videos (even counts)")
    p.add_argument("--size", type=int, default=64, help="image and frame side in pixels")
    add_frames(p, default=16, help="frames written per video (default 16)")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image files (default: jpg)")
    p.add_argument("--seed", type=int, default=0, help="the generator's seed (same seed, same files)")
    p.add_argument("--unpaired", type=int, default=0, metavar="N",
                   help="also write N unpaired items and N unpaired captions per benchmark (for cs.unpaired_*)")
    p.set_defaults(func=_make_data)


def _add_convert_captions(sub) -> None:
    p = sub.add_parser("convert-captions", help="turn MSVD's raw-captions.pkl into JSON without running code")
    p.add_argument("pickle", type=Path, help="MSVD's raw-captions.pkl (read without running code)")
    p.add_argument("--out", type=Path, default=None, help="default: next to the pickle, .json")
    p.set_defaults(func=_convert)


def _add_prepare_frames(sub) -> None:
    p = sub.add_parser("prepare-frames", help="decode the sampled frames of a video dataset once, into a cache "
                                              "that evaluate --frame-cache and data.frame_cache read")
    p.add_argument("--dataset", required=True, choices=("msrvtt", "msvd", "activitynet"),
                   help="video dataset format of --root")
    p.add_argument("--root", required=True, type=Path, help="dataset folder in its standard layout")
    p.add_argument("--split", nargs="+", default=None, help="splits whose videos to prepare (default: all videos)")
    p.add_argument("--media", type=Path, default=None, help="video folder if not the default one")
    add_frames(p)
    p.add_argument("--size", type=int, default=224, help="shortest side of a stored frame: the backbone's image "
                   "size (0: frames kept at their decoded size, for any backbone)")
    p.add_argument("--out", required=True, type=Path, help="cache folder (created; an existing one is completed)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes")
    add_on_error(p, skip="list it and leave it out of the cache")
    p.set_defaults(func=_prepare_frames)
