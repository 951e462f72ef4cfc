"""Video input before and after issue 20: videos/s to 12 sampled frames, decoding from the start
(the code before, kept as ``method="decode"``), seeking (``method="auto"``) and the frame cache.

    python benchmarks/video_io.py [--quick] [--work /tmp/tokenflow-video-io] [--frames 12] [--workers 0 2]

Writes H.264 mp4 videos once into ``--work`` (kept for the next run): 224 x 224 px, 30 fps,
libx264 at its defaults (preset veryfast, crf 23, keyint 250 with scene cuts), a textured
background that pans, a moving square, and a cut to another texture every 6 s, so the GOPs
look like a real encode's. Six MSR-VTT-like clips (10-30 s) and three ActivityNet-like ones
(2-3 min); ``--quick``: three of 4-6 s and one of 30 s. For every group and every reader it
reports videos/s with 0 and 2 DataLoader worker processes (one video per item, frames as a uint8
tensor; each video read at least twice, in a balanced order, so that two workers get equal shares;
the median of ``--rounds`` passes, interleaved between readers), then the training data loader
(``PairDataset`` + ``collate_media``, batches of 4, clip_preprocess at 224) with and without the
cache. Every path is checked to give the frames of
decoding from the start before it is timed. Files are in the page cache (written just before).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tokenflow.data.base import RetrievalSplit, collate_media  # noqa: E402
from tokenflow.data.frame_cache import FrameCache, prepare_frames, with_frame_cache  # noqa: E402
from tokenflow.data.video import read_video_frames  # noqa: E402
from tokenflow.models.transforms import clip_preprocess  # noqa: E402
from tokenflow.train.data import PairDataset  # noqa: E402
from tokenflow.utils import atomic_path, machine, machine_info  # noqa: E402

SIZE, FPS = 224, 30
MEAN, STD = (0.481, 0.458, 0.408), (0.269, 0.261, 0.276)


def write_video(path: Path, seconds: float, seed: int) -> None:
    """A panning texture with a moving square and a cut every 6 s, H.264 at x264's defaults."""
    import av

    if path.is_file():
        return
    g = np.random.default_rng(seed)
    textures = [np.kron(g.integers(40, 215, (96, 96, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
                for _ in range(4)]
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        st = out.add_stream("libx264", rate=FPS)
        st.width = st.height = SIZE
        st.pix_fmt = "yuv420p"
        st.options = {"preset": "veryfast"}
        for t in range(int(seconds * FPS)):
            tex = textures[(t // (6 * FPS)) % len(textures)]
            x, y = (2 * t) % (768 - SIZE), (t // 2) % (768 - SIZE)
            arr = tex[y : y + SIZE, x : x + SIZE].copy()
            c = int(96 + 64 * np.sin(t / 20))
            arr[c : c + 32, (3 * t) % (SIZE - 32) : (3 * t) % (SIZE - 32) + 32] = 250
            for p in st.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)


class Frames(torch.utils.data.Dataset):
    """Video -> its sampled frames as one uint8 array [F, H, W, 3], by ``reader``."""

    def __init__(self, paths: list[Path], reader):
        self.paths, self.reader = paths, reader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        frames = self.reader(self.paths[i])
        # A tensor, so that a worker hands it over in shared memory, as the training loader does.
        return torch.from_numpy(frames if isinstance(frames, np.ndarray) else np.stack([np.asarray(f) for f in frames]))


def cached(cache: FrameCache, path: Path) -> np.ndarray:
    return cache.read_array(path)


def timed(loader, batches: list, full: list) -> float:
    """Seconds for one pass over ``full`` after a one-batch pass that starts the (persistent) workers."""
    batches[:] = full[:1]
    sum(1 for _ in loader)
    batches[:] = full
    t0 = time.perf_counter()
    sum(1 for _ in loader)
    return time.perf_counter() - t0


def balanced(paths: list[Path], reads: int) -> list[Path]:
    """The videos in turn, forwards then backwards, repeated up to ``reads`` items (at least one
    turn: every video twice), so that two workers taking items in turn get the same share of long
    and short videos."""
    turn = paths + paths[::-1]
    return (turn * -(-reads // len(turn)))[: max(reads, len(turn))]


class Timer:
    """One loader per reader (persistent workers), timed in interleaved rounds."""

    def __init__(self, items: list[Path], reader, workers: int):
        self.full, self.batches = [[i] for i in range(len(items))], []
        self.loader = torch.utils.data.DataLoader(Frames(items, reader), batch_sampler=self.batches,
                                                  num_workers=workers, persistent_workers=workers > 0,
                                                  collate_fn=lambda b: b[0])

    def videos_per_s(self) -> float:
        return len(self.full) / timed(self.loader, self.batches, self.full)


def train_items_per_s(paths: list[Path], cache_root: Path | None, frames: int, workers: int, captions: int) -> float:
    """Pairs/s of the training loader (``captions`` per video, batches of 4) with or without the cache."""
    texts = [f"clip {k} caption {c}" for k in range(len(paths)) for c in range(captions)]
    split = RetrievalSplit("bench", "video", [p.stem for p in paths], paths, texts,
                           [k for k in range(len(paths)) for _ in range(captions)])
    pre = partial(clip_preprocess, size=SIZE, mean=MEAN, std=STD)
    split = with_frame_cache(split, cache_root, frames, pre, SIZE)
    full, batches = [list(range(k, min(k + 4, len(texts)))) for k in range(0, len(texts), 4)], []
    loader = torch.utils.data.DataLoader(PairDataset(split, pre, num_frames=frames), batch_sampler=batches,
                                         num_workers=workers, persistent_workers=workers > 0,
                                         collate_fn=collate_media)
    return len(texts) / timed(loader, batches, full)


def check_equal(paths: list[Path], cache: FrameCache, frames: int) -> None:
    pre = partial(clip_preprocess, size=SIZE, mean=MEAN, std=STD)
    for p in paths:
        want = read_video_frames(p, frames, method="decode")
        got = read_video_frames(p, frames, method="auto")
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(want, got, strict=True)), p
        assert all(torch.equal(pre(a), pre(b)) for a, b in zip(want, cache.read(p), strict=True)), p


def measure(groups: dict[str, list[Path]], cache: FrameCache, args) -> list[dict]:
    readers = {"decode from start": partial(read_video_frames, num_frames=args.frames, method="decode"),
               "seek": partial(read_video_frames, num_frames=args.frames, method="auto"),
               "cache": partial(cached, cache)}
    rows = []
    for group, paths in groups.items():
        for workers in args.workers:
            row = {"group": group, "videos": len(paths), "workers": workers, "rounds": args.rounds}
            timers = {name: Timer(balanced(paths, 60 if name == "cache" else 6), reader, workers)
                      for name, reader in readers.items()}
            runs = {name: [] for name in readers}
            for _ in range(args.rounds):  # interleaved, so that a slow spell of the machine hits every reader
                for name, timer in timers.items():
                    runs[name].append(timer.videos_per_s())
            for name, r in runs.items():
                row[name], row[f"{name} reads"], row[f"{name} runs"] = statistics.median(r), len(timers[name].full), r
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
            del timers
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter videos")
    p.add_argument("--work", type=Path, default=Path("/tmp/tokenflow-video-io"), help="videos and cache")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--rounds", type=int, default=3, help="timed passes per reader (median reported)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "video-io.json")
    args = p.parse_args()
    lengths = {"short (10-30 s)": [10, 14, 18, 22, 26, 30], "long (2-3 min)": [120, 150, 180]}
    if args.quick:
        lengths = {"short (4-6 s)": [4, 5, 6], "long (30 s)": [30]}
    work = args.work / ("quick" if args.quick else "full")
    t0 = time.perf_counter()
    groups = {g: [work / "videos" / f"{g.split()[0]}{k}_{s}s.mp4" for k, s in enumerate(secs)]
              for g, secs in lengths.items()}
    for g, secs in lengths.items():
        for k, (path, s) in enumerate(zip(groups[g], secs)):
            write_video(path, s, seed=k)
    print(f"videos ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cache = FrameCache.create(work / f"cache-{args.frames}", args.frames, SIZE)
    t0 = time.perf_counter()
    prep = prepare_frames([v for vs in groups.values() for v in vs], cache)
    prep_s = time.perf_counter() - t0
    check_equal([v for vs in groups.values() for v in vs], cache, args.frames)
    rows = measure(groups, cache, args)
    every = [v for vs in groups.values() for v in vs]
    train = [{"workers": w, "seek": train_items_per_s(every, None, args.frames, w, captions=2),
              "cache": train_items_per_s(every, cache.root, args.frames, w, captions=8)} for w in args.workers]
    report = {"benchmark": "video_io", "quick": args.quick, "frames": args.frames, "size": SIZE, "fps": FPS,
              "lengths_s": lengths, "prepare_frames_s": prep_s, "prepared": prep["written"], "rows": rows,
              "train_loader_items_per_s": train, "machine": machine_info(),
              "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{machine()}; {args.frames} frames per video, {SIZE} px, {FPS} fps")
    print("| videos | workers | decode from start videos/s | seek videos/s | cache videos/s | seek / decode "
          "| cache / decode |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        d = r["decode from start"]
        print(f"| {r['group']} x{r['videos']} | {r['workers']} | {d:.2f} | {r['seek']:.2f} | {r['cache']:.1f} | "
              f"{r['seek'] / d:.1f}x | {r['cache'] / d:.0f}x |")
    print("\n| training loader (PairDataset, batch 4, clip_preprocess 224) | workers | items/s |")
    print("|---|---|---|")
    for t in train:
        print(f"| seeking | {t['workers']} | {t['seek']:.2f} |\n| cache | {t['workers']} | {t['cache']:.2f} |")
    print(f"\nprepare-frames (this process): {prep['written']} videos in {prep_s:.1f} s; JSON: {args.out}")


if __name__ == "__main__":
    main()
