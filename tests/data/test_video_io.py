"""Fast video input: seeking gives the frames of decoding from the start, and the frame cache
gives the tensors of decoding (issue 20)."""

import fractions
import itertools
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tokenflow.cli import main
from tokenflow.data import MediaDataset, MediaError, RetrievalSplit, collate_media, load_split, uniform_frame_indices
from tokenflow.data import frame_cache as fc
from tokenflow.data import video
from tokenflow.data.frame_cache import FrameCache, prepare_frames, resize_frame, with_frame_cache
from tokenflow.data.video import read_video_frames
from tokenflow.errors import UserError
from tokenflow.models import TinyCLIP, TinyConfig, WordTokenizer

av = pytest.importorskip("av")


def write_coded(path, n, size=64, fps=30, pts_ms=None, fmt="mp4", codec="libx264", x264_params=None):
    """A texture panning under three 16 x 16 grey blocks that spell the frame index in base 16,
    so the pixels tell the index; x264 makes I, P and B frames of it. ``pts_ms``: frame times in
    milliseconds (variable frame rate)."""
    g = np.random.default_rng(0)
    tex = np.kron(g.integers(0, 256, (size, size, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
    with av.open(str(path), "w", format=fmt) as out:
        st = out.add_stream(codec, rate=fps)
        st.width = st.height = size
        st.pix_fmt = "yuv420p"
        st.options = {"crf": "12", "preset": "veryfast"} if codec == "libx264" else {"qscale": "1"}
        if x264_params:
            st.options = {**st.options, "x264-params": x264_params}
        if pts_ms is not None:
            st.codec_context.time_base = fractions.Fraction(1, 1000)
        for t in range(n):
            arr = tex[:size, t % (3 * size) : t % (3 * size) + size].copy()
            for d in range(3):
                arr[:16, 16 * d : 16 * d + 16] = 16 * ((t >> (4 * (2 - d))) & 15) + 8
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[t], fractions.Fraction(1, 1000)
            for p in st.encode(frame):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    return path


def index_of(img) -> int:
    a = np.asarray(img).astype(np.float64)
    return sum(int(a[4:12, 16 * d + 4 : 16 * d + 12].mean() // 16) << (4 * (2 - d)) for d in range(3))


def same_frames(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    vfr = list(itertools.accumulate([0] + [33 if k % 3 else 80 for k in range(149)]))
    return {"short": write_coded(d / "short.mp4", 90), "long": write_coded(d / "long.mp4", 900),
            "vfr": write_coded(d / "vfr.mp4", 150, pts_ms=vfr)}


# -- seeking --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,n", [("short", 90), ("long", 900)])
def test_seeking_picks_the_frames_of_decoding_from_the_start(clips, name, n, monkeypatch):
    with av.open(str(clips[name])) as c:  # I, P and B frames, several keyframes
        kinds = [(f.key_frame, str(f.pict_type)) for f in c.decode(video=0)]
    assert {k for _, k in kinds} >= {"1", "2", "3"} and sum(k for k, _ in kinds) > (n > 100)
    decoded = read_video_frames(clips[name], 12, method="decode")
    assert [index_of(f) for f in decoded] == uniform_frame_indices(n, 12)
    for num in (12, 5, 1):
        want = read_video_frames(clips[name], num, method="decode")
        assert same_frames(read_video_frames(clips[name], num, method="seek"), want)
        assert same_frames(read_video_frames(clips[name], num), want)
    # and "auto" did seek on the container's index: neither the packet pass nor decoding from the start is reached
    monkeypatch.setattr(video, "_read_decoding", lambda *a: pytest.fail("decoded from the start"))
    monkeypatch.setattr(video, "_timeline", lambda *a: pytest.fail("read every packet"))
    assert same_frames(read_video_frames(clips[name], 12), decoded)


def test_open_gops_seek_to_the_frames_shown_before_their_keyframe(tmp_path, monkeypatch):
    """In an open GOP, B frames decoded after a keyframe are shown before it and need the GOP before."""
    path = write_coded(tmp_path / "open.mp4", 395, x264_params="open-gop=1:keyint=40:min-keyint=40:scenecut=0")
    with av.open(str(path)) as c:
        shown = [(f.key_frame, f.pts) for f in c.decode(video=0)]
    keys = [k for k, (key, _) in enumerate(shown) if key]
    with av.open(str(path)) as c:
        order = [p.pts for p in c.demux(video=0) if p.size]
    leading = {k - 1 for k in keys[1:] if order.index(shown[k - 1][1]) > order.index(shown[k][1])}
    assert len(keys) >= 9 and leading  # some frame just before a keyframe is decoded after it
    for num in (5, 16, 40):  # 5 on 395 frames samples frame 39, shown just before the keyframe at 40
        want = read_video_frames(path, num, method="decode")
        assert [index_of(f) for f in want] == uniform_frame_indices(395, num)
        monkeypatch.setattr(video, "_read_decoding", lambda *a: pytest.fail("decoded from the start"))
        assert same_frames(read_video_frames(path, num), want)
        monkeypatch.undo()
    assert leading & set(uniform_frame_indices(395, 5)) or leading & set(uniform_frame_indices(395, 40))


@pytest.mark.parametrize("fmt, codec, path", [("mov", "libx264", "index"), ("mp4", "mpeg4", "index"),
                                               ("matroska", "libx264", "packets"), ("webm", "libvpx-vp9", "packets")])
def test_other_containers_and_codecs_seek_to_the_same_frames(tmp_path, monkeypatch, fmt, codec, path):
    """MOV and MP4 keep an index of every frame; Matroska and WebM index keyframes only, so their
    map comes from the packet pass. Either way no video is decoded from the start."""
    clip = write_coded(tmp_path / f"clip.{fmt}", 300, fmt=fmt, codec=codec)
    want = read_video_frames(clip, 12, method="decode")
    assert [index_of(f) for f in want] == uniform_frame_indices(300, 12)
    used = []
    for name in ("_index_timeline", "_timeline"):
        real = getattr(video, name)
        monkeypatch.setattr(video, name, lambda c, s, real=real, name=name: used.append(name) or real(c, s))
    monkeypatch.setattr(video, "_read_decoding", lambda *a: pytest.fail("decoded from the start"))
    assert same_frames(read_video_frames(clip, 12), want)
    assert used == (["_index_timeline"] if path == "index" else ["_index_timeline", "_timeline"])


def test_when_the_decoder_disagrees_with_the_index_the_packets_are_read(clips, monkeypatch):
    want = read_video_frames(clips["long"], 12, method="decode")
    real = video._index_timeline

    def off_by_one(container, stream):  # an index whose presentation times are one frame late
        line = real(container, stream)
        step = line.pts[1] - line.pts[0]
        return video._Timeline([p + step for p in line.pts], line.keyframes, line.stated)

    calls = []
    packets = video._timeline
    monkeypatch.setattr(video, "_index_timeline", off_by_one)
    monkeypatch.setattr(video, "_timeline", lambda *a: calls.append(1) or packets(*a))
    monkeypatch.setattr(video, "_read_decoding", lambda *a: pytest.fail("decoded from the start"))
    assert same_frames(read_video_frames(clips["long"], 12), want) and calls == [1]


def _remux_shifting_pts(src, dst, from_keyframe: int):
    """``src`` with every packet's pts one frame later from its ``from_keyframe``-th keyframe on
    (decoding times kept): a container whose presentation times drift past its first GOP."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        packets = [p for p in inp.demux(ist) if p.size]
        step = sorted(p.pts for p in packets)[1] - min(p.pts for p in packets)
        keys = 0
        for packet in packets:
            keys += packet.is_keyframe
            if keys > from_keyframe:
                packet.pts += step
            packet.stream = ost
            out.mux(packet)
    return dst


@pytest.mark.parametrize("from_keyframe", [1, 3])
def test_presentation_times_that_drift_after_the_first_gop_are_caught(clips, tmp_path, from_keyframe):
    """The index path checks every GOP it enters, not only the first: else each frame past the
    drift would be the one before the sampled one."""
    path = _remux_shifting_pts(clips["long"], tmp_path / "drift.mp4", from_keyframe)
    want = read_video_frames(path, 12, method="decode")
    assert [index_of(f) for f in want] == uniform_frame_indices(900, 12)
    assert same_frames(read_video_frames(path, 12), want)


class _Entry:
    def __init__(self, ts, key=False, discard=False):
        self.timestamp, self.is_keyframe, self.is_discard = ts, key, discard


class _Packet:
    def __init__(self, pts):
        self.pts, self.size, self.is_discard = pts, 1, False


class _Stream:
    def __init__(self, entries, frames=None):
        self.index_entries, self.frames = entries, len(entries) if frames is None else frames


class _Container:
    def __init__(self, pts):
        self.pts = pts

    def demux(self, stream):
        return (_Packet(p) for p in self.pts)


def test_the_index_timeline_is_refused_unless_it_holds():
    dts = [-2 + k for k in range(12)]  # decoding times; two frames of reordering delay
    pts = [0, 3, 1, 2, 4, 7, 5, 6, 8, 11, 9, 10]  # presentation times, packet order
    good = [_Entry(t, key=k in (0, 4, 8)) for k, t in enumerate(dts)]
    line = video._index_timeline(_Container(pts), _Stream(good))
    assert line.pts == list(range(12)) and line.keyframes == [0, 4, 8] and line.trusted()
    refused = {
        "frame count other than the index's": (pts, _Stream(good, frames=13)),
        "no frame count": (pts, _Stream(good, frames=0)),
        "variable frame rate": (pts, _Stream([_Entry(t * (1 + (k % 2)), key=k == 0) for k, t in enumerate(range(12))])),
        "first frame not a keyframe": (pts, _Stream([_Entry(t, key=k == 4) for k, t in enumerate(dts)])),
        "a frame dropped by an edit list": (pts, _Stream([_Entry(t, key=k == 0, discard=k == 1) for k, t in enumerate(dts)])),
        "first GOP off the decoding times": ([0, 3, 1, 5, 4, 7, 2, 6, 8, 11, 9, 10], _Stream(good)),
        "a packet without pts": ([0, None, 1, 2] + pts[4:], _Stream(good)),
    }
    for why, (packets, stream) in refused.items():
        assert video._index_timeline(_Container(packets), stream) is None, why


def test_the_index_timeline_leaves_long_gops_to_the_packet_pass(monkeypatch):
    """Each GOP a seek enters is held in memory: a GOP over GOP_MAX frames (at worst the whole
    video, with one keyframe) is not read that way."""
    entries = [_Entry(t, key=k in (0, 4, 8)) for k, t in enumerate(range(12))]
    assert video._index_timeline(_Container(list(range(12))), _Stream(entries)) is not None
    monkeypatch.setattr(video, "GOP_MAX", 3)
    assert video._index_timeline(_Container(list(range(12))), _Stream(entries)) is None


def test_variable_frame_rate_is_decoded_from_the_start_unless_told_to_seek(clips, monkeypatch):
    want = read_video_frames(clips["vfr"], 12, method="decode")
    assert [index_of(f) for f in want] == uniform_frame_indices(150, 12)
    assert same_frames(read_video_frames(clips["vfr"], 12, method="seek"), want)  # the pts map still holds
    calls = []
    real = video._read_decoding
    monkeypatch.setattr(video, "_read_decoding", lambda *a: calls.append(a) or real(*a))
    assert same_frames(read_video_frames(clips["vfr"], 12), want) and len(calls) == 1


def _avi_stating(tmp_path, stated: int):
    """An AVI of 30 frames whose headers state ``stated`` frames."""
    path = write_coded(tmp_path / "true.avi", 30, fps=10, fmt="avi", codec="mpeg4")
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, raw.index(b"avih") + 24, stated)  # dwTotalFrames
    struct.pack_into("<I", raw, raw.index(b"strh") + 40, stated)  # the stream's dwLength
    out = tmp_path / f"states{stated}.avi"
    out.write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize("stated", [0, 40, 20])
def test_a_container_with_a_wrong_frame_count(tmp_path, stated):
    path = _avi_stating(tmp_path, stated)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == stated
    want = read_video_frames(path, 6, method="decode")
    if stated in (0, 40):  # none stated, or over-stated: the true 30 frames are sampled
        assert [index_of(f) for f in want] == uniform_frame_indices(30, 6)
    assert same_frames(read_video_frames(path, 6), want)  # auto = today's result, whatever the container says


def test_corrupt_and_missing_videos_fail_with_their_path(tmp_path, clips):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 64)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clips["short"].read_bytes()[:2000])
    for method in ("auto", "seek", "decode"):
        with pytest.raises(MediaError, match="bad.mp4: cannot"):
            read_video_frames(bad, 4, method=method)
        with pytest.raises(MediaError, match="gone.mp4: file not found"):
            read_video_frames(tmp_path / "gone.mp4", 4, method=method)
        with pytest.raises(MediaError, match="cut.mp4"):
            read_video_frames(cut, 4, method=method)
    with pytest.raises(ValueError, match="method must be one of"):
        read_video_frames(clips["short"], 4, method="fast")


# -- frame cache ----------------------------------------------------------------------------------
def tiny_preprocess(size=16):
    return TinyCLIP(TinyConfig(image_size=size, patch_size=8, width=32, layers=1, heads=2, embed_dim=16),
                    WordTokenizer.build(["a"])).preprocess


def video_split(synth):
    return load_split("msrvtt", synth / "videos", "test")


def test_cached_frames_give_the_tensors_of_decoding(tmp_path, synth):
    split, pre = video_split(synth), tiny_preprocess(16)
    cache = FrameCache.create(tmp_path / "c", frames=6, size=16)
    prepare_frames(split.item_paths, cache)
    cached = with_frame_cache(split, tmp_path / "c", 6, pre, 16)
    assert cached.frame_cache == cache and cached.subset([1, 0]).frame_cache == cache
    cache.file_for(split.item_paths[1]).unlink()  # missing from the cache: decoded
    plain, fast = MediaDataset(split, pre, num_frames=6), MediaDataset(cached, pre, num_frames=6)
    for i in range(len(split)):
        a, b = plain[i], fast[i]
        assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    # a dataset sampling another number of frames decodes
    assert torch.equal(MediaDataset(cached, pre, num_frames=8)[0][1], MediaDataset(split, pre, num_frames=8)[0][1])
    assert cache.read(split.item_paths[0])[0].size == (16, 16) and cache.read(split.item_paths[1]) is None
    # two loader workers read the cache too
    loader = torch.utils.data.DataLoader(fast, batch_size=2, num_workers=2, collate_fn=collate_media)
    got = torch.cat([px for _, px, _, _ in loader])
    assert torch.equal(got, torch.stack([plain[i][1] for i in range(len(split))]))


def test_the_cache_resize_is_the_preprocessing_resize():
    from PIL import Image

    pre = tiny_preprocess(16)
    g = np.random.default_rng(1)
    for w, h in ((40, 30), (30, 53), (17, 16), (16, 16), (12, 20)):
        img = Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert torch.equal(pre(img), pre(resize_frame(img, 16))), (w, h)
    assert resize_frame(img, 0) is img
    floor = lambda im: pre(im.resize((int(16 * im.size[0] / min(im.size)), 16)))  # noqa: E731  a resize that floors
    with pytest.raises(UserError, match="--size 0"):
        FrameCache(Path("c"), 12, 16).check_preprocess(floor)
    FrameCache(Path("c"), 12, 0).check_preprocess(floor)  # frames at their decoded size suit every backbone


def test_the_cache_is_written_atomically_and_resumes(tmp_path, synth, monkeypatch):
    paths = video_split(synth).item_paths
    cache = FrameCache.create(tmp_path / "c", frames=4, size=0)
    manifest = json.loads(cache.manifest.read_text())
    assert manifest["frames"] == 4 and manifest["size"] == 0 and manifest["tokenflow"] and manifest["resize"]

    def broken(f, arr, allow_pickle):
        f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(fc.np, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        prepare_frames(paths[:1], cache)
    assert sorted(p.name for p in cache.root.iterdir()) == ["manifest.json"]  # no half file, no temporary
    monkeypatch.undo()

    res = prepare_frames(paths[:2], cache)
    assert (res["written"], res["kept"]) == (2, 0)
    stamps = {p: p.stat().st_mtime_ns for p in cache.root.iterdir()}
    res = prepare_frames(paths, FrameCache.create(tmp_path / "c", frames=4, size=0), workers=2)
    assert (res["written"], res["kept"], res["videos"]) == (len(paths) - 2, 2, len(paths))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # kept files and manifest untouched
    arr = np.load(cache.file_for(paths[0]))
    assert arr.dtype == np.uint8 and arr.shape == (4, 32, 32, 3)
    assert same_frames(list(arr), read_video_frames(paths[0], 4))


def test_a_cache_with_other_settings_is_refused(tmp_path, synth):
    FrameCache.create(tmp_path / "c", frames=4, size=16)
    manifest = str(tmp_path / "c" / "manifest.json")
    with pytest.raises(UserError, match=f"{manifest} was made with frames=4, this run needs frames=12"):
        FrameCache.open(tmp_path / "c", frames=12, size=16)
    with pytest.raises(UserError, match="made with size=16, this run needs size=224"):
        with_frame_cache(video_split(synth), tmp_path / "c", 4, tiny_preprocess(16), 224)
    with pytest.raises(UserError, match="made with frames=4, this run needs frames=6"):
        FrameCache.create(tmp_path / "c", frames=6, size=16)
    with pytest.raises(UserError, match="no manifest.json"):
        FrameCache.open(tmp_path / "none")
    with pytest.raises(UserError, match="image split"):
        with_frame_cache(load_split("flickr30k", synth / "images", "test"), tmp_path / "c", 4, None, 16)
    assert FrameCache.create(tmp_path / "any", 4, 0) == FrameCache.open(tmp_path / "any", frames=4, size=224)


def test_a_corrupt_video_fails_or_is_skipped_with_its_path(tmp_path, synth):
    good = video_split(synth).item_paths[0]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 64)
    cache = FrameCache.create(tmp_path / "c", frames=4, size=0)
    with pytest.raises(MediaError, match="bad.mp4: cannot"):
        prepare_frames([good, bad], cache)
    res = prepare_frames([good, bad, tmp_path / "gone.mp4"], cache, on_error="skip")
    assert [s["path"] for s in res["skipped"]] == [str(bad), str(tmp_path / "gone.mp4")]
    assert res["failed"] == 2 and not cache.file_for(bad).exists()
    # reading it later reports it as before
    split = RetrievalSplit("v", "video", ["g", "b"], [good, bad], ["a", "b"], [0, 1], frame_cache=cache)
    with pytest.raises(MediaError, match="bad.mp4: cannot"):
        MediaDataset(split, lambda im: torch.zeros(3, 2, 2))[1]


def test_prepare_frames_and_evaluate_with_the_cache(tmp_path, synth, capsys, monkeypatch):
    model = TinyCLIP(TinyConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2, embed_dim=16),
                     WordTokenizer.build(video_split(synth).texts))
    model.save_pretrained(tmp_path / "m")
    base = ["--dataset", "msrvtt", "--root", str(synth / "videos")]
    assert main(["prepare-frames", *base, "--frames", "6", "--size", "16", "--out", str(tmp_path / "c")]) == 0
    assert "10 written, 0 already there" in capsys.readouterr().out  # train-9k (6) + test (4)
    assert main(["prepare-frames", *base, "--split", "test", "--frames", "6", "--size", "16",
                 "--out", str(tmp_path / "c")]) == 0
    assert "0 written, 4 already there" in capsys.readouterr().out
    ev = ["evaluate", *base, "--model", str(tmp_path / "m"), "--frames", "6", "--quiet"]
    assert main([*ev, "--out", str(tmp_path / "a.json")]) == 0
    with monkeypatch.context() as m:  # every video comes from the cache
        m.setattr("tokenflow.data.base.read_video_frames", lambda *a: pytest.fail("decoded"))
        assert main([*ev, "--frame-cache", str(tmp_path / "c"), "--out", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["metrics"] == b["metrics"]
    capsys.readouterr()
    assert main([*ev[:-3], "--frames", "12", "--frame-cache", str(tmp_path / "c")]) == 2
    assert "was made with frames=6, this run needs frames=12" in capsys.readouterr().err


def test_training_reads_the_cache_and_logs_the_same_loss(tmp_path, synth, monkeypatch):
    yaml = pytest.importorskip("yaml")
    from tokenflow.train import load_config, train

    FrameCache.create(tmp_path / "c", frames=4, size=16)
    prepare_frames(load_split("msrvtt", synth / "videos", "train").item_paths, FrameCache.open(tmp_path / "c"))

    def run(out, **data):
        cfg = {"data": {"dataset": "msrvtt", "root": str(synth / "videos"), "num_frames": 4, "test_split": None,
                        **data},
               "model": {"backbone": "tiny", "aligner": "tokenflow",
                         "tiny": {"image_size": 16, "width": 32, "layers": 1, "heads": 2, "embed_dim": 16}},
               "optim": {"epochs": 1, "batch_size": 4, "warmup": 0},
               "run": {"out": str(tmp_path / out), "deterministic": True, "log_every": 1, "progress": False,
                       "max_steps": 1}}
        (tmp_path / f"{out}.yaml").write_text(yaml.safe_dump(cfg))
        train(load_config(tmp_path / f"{out}.yaml"))
        log = [json.loads(ln) for ln in (tmp_path / out / "log.jsonl").read_text().splitlines() if ln.strip()]
        return [r["loss"] for r in log if r["kind"] == "train"]

    plain = run("plain")
    with monkeypatch.context() as m:  # the training videos come from the cache (validation ones are decoded)
        real = video.read_video_frames
        train_paths = {str(p) for p in load_split("msrvtt", synth / "videos", "train").item_paths}
        m.setattr("tokenflow.data.base.read_video_frames",
                  lambda p, n: pytest.fail(f"decoded {p}") if str(p) in train_paths else real(p, n))
        assert run("cached", frame_cache=str(tmp_path / "c")) == plain != []
    with pytest.raises(UserError, match="made with frames=4, this run needs frames=6"):
        run("other", frame_cache=str(tmp_path / "c"), num_frames=6)


def test_frames_are_pyavs_rgb_pixels(clips):
    """The faster conversion gives the pixels of PyAV's own ``to_image``, frame for frame."""
    with av.open(str(clips["short"])) as c:
        for k, frame in enumerate(c.decode(video=0)):
            ours, theirs = video._to_image(frame), frame.to_image()
            assert ours.mode == theirs.mode == "RGB" and ours.size == theirs.size
            assert np.array_equal(np.asarray(ours), np.asarray(theirs)), k


def test_two_seeking_threads_outside_loader_workers_and_the_same_frames(clips, monkeypatch):
    import torch.utils.data

    assert video.seek_threads(12) == (2 if len(os.sched_getaffinity(0)) >= 2 else 1) and video.seek_threads(3) == 1
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())  # as inside a loader worker
    assert video.seek_threads(12) == 1
    one = read_video_frames(clips["long"], 12)
    monkeypatch.setattr(video, "seek_threads", lambda n: 2)
    helper = []
    real = video._seek_in
    monkeypatch.setattr(video, "_seek_in", lambda *a: helper.append(a[2]) or real(*a))
    assert same_frames(read_video_frames(clips["long"], 12), one) and helper == [uniform_frame_indices(900, 12)[6:]]
