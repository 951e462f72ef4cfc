import csv
import json
import pickle
import re
import shutil
from collections import Counter

import pytest
import torch
from PIL import Image

from tokenflow.data import (
    MediaDataset,
    MediaError,
    coco_1k_folds,
    collate_media,
    convert_pickled_captions,
    load_karpathy,
    load_split,
    read_video_frames,
    uniform_frame_indices,
)


def write_karpathy(tmp_path, images):
    (tmp_path / "imgs" / "val2014").mkdir(parents=True)
    for img in images:
        Image.new("RGB", (20, 10), (10, 20, 30)).save(tmp_path / "imgs" / img.get("filepath", "") / img["filename"])
    p = tmp_path / "dataset_coco.json"
    p.write_text(json.dumps({"dataset": "coco", "images": images}))
    return p


def caps(*raw):
    return [{"raw": r, "tokens": r.split()} for r in raw]


def test_karpathy_splits_paths_and_captions(tmp_path):
    images = [
        {"filepath": "val2014", "filename": "a.jpg", "cocoid": 1, "split": "train", "sentences": caps("x", "y")},
        {"filepath": "val2014", "filename": "b.jpg", "cocoid": 2, "split": "restval", "sentences": caps("z")},
        {"filepath": "val2014", "filename": "c.jpg", "cocoid": 3, "split": "test",
         "sentences": caps(*"abcdefg")},
        {"filepath": "val2014", "filename": "d.jpg", "cocoid": 4, "split": "val", "sentences": caps("v")},
    ]
    p = write_karpathy(tmp_path, images)
    train = load_karpathy(p, tmp_path / "imgs", "train")
    assert train.item_ids == ["1", "2"] and train.texts == ["x", "y", "z"] and train.text_item == [0, 0, 1]
    assert train.item_paths[0] == tmp_path / "imgs" / "val2014" / "a.jpg"
    test = load_karpathy(p, tmp_path / "imgs", "test")
    assert test.texts == list("abcde")  # 5 captions per image
    assert test.positives().tolist() == [[True] * 5]
    assert load_split("coco", tmp_path, "val", media=tmp_path / "imgs").item_ids == ["4"]


def test_coco_1k_folds():
    from tokenflow.data import RetrievalSplit

    s = RetrievalSplit("coco/test", "image", [str(i) for i in range(10)], [None] * 10,
                       [f"t{i}" for i in range(20)], [i // 2 for i in range(20)])
    folds = coco_1k_folds(s, fold_size=5)
    assert [f.item_ids for f in folds] == [list("01234"), list("56789")]
    assert folds[1].texts[:2] == ["t10", "t11"] and folds[1].text_item[:2] == [0, 0]
    with pytest.raises(ValueError, match="folds of 3"):
        coco_1k_folds(s, fold_size=3)


@pytest.mark.parametrize(
    "images,msg",
    [
        ([{"filename": "a.jpg", "split": "test"}], r"images\[0\]: missing field 'sentences'"),
        ([{"filename": "a.jpg", "split": "dev", "sentences": caps("x")}], r"images\[0\]\.split"),
        ([{"filename": "a.jpg", "split": "test", "sentences": []}], "non-empty list"),
        ([{"filename": "a.jpg", "split": "test", "sentences": [{"raw": " "}]}], r"sentences\[0\]"),
        ([{"filename": "a.jpg", "split": "train", "sentences": caps("x")}], "no images in split 'test'"),
    ],
)
def test_karpathy_bad_input(tmp_path, images, msg):
    p = tmp_path / "dataset_flickr30k.json"
    p.write_text(json.dumps({"images": images}))
    with pytest.raises(ValueError, match=msg):
        load_karpathy(p, tmp_path, "test")


def test_karpathy_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_karpathy(tmp_path / "nope.json", tmp_path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_karpathy(tmp_path / "bad.json", tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        load_karpathy(tmp_path / "bad.json", tmp_path, "dev")
    with pytest.raises(ValueError, match="unknown dataset 'kinetics'"):
        load_split("kinetics", tmp_path)


def test_synthetic_images_through_the_flickr_loader(synth):
    s = load_split("flickr30k", synth / "images", "test")
    assert len(s) == 6 and len(s.texts) == 30 and s.captions_per_item() == [5] * 6
    assert all(p.is_file() for p in s.item_paths)
    # hard negatives: each scene has a twin with the same words in other bindings
    for split in (s, load_split("msrvtt", synth / "videos", "train")):
        by_item = [[t for t, i in zip(split.texts, split.text_item) if i == k] for k in range(len(split))]
        for a, b in zip(by_item[::2], by_item[1::2]):
            assert set(a) != set(b)
            assert Counter(re.findall(r"[a-z]+", " ".join(a))) == Counter(re.findall(r"[a-z]+", " ".join(b)))


def test_msrvtt_layout(synth):
    root = synth / "videos"
    test = load_split("msrvtt", root, "test")
    assert len(test) == 4 and len(test.texts) == 4 and test.text_item == [0, 1, 2, 3]
    rows = list(csv.DictReader(open(root / "MSRVTT_JSFUSION_test.csv")))
    assert [r["video_id"] for r in rows] == test.item_ids and rows[0]["key"] == "ret0"
    val, train, full = (load_split("msrvtt", root, s) for s in ("val", "train", "train-9k"))
    assert len(val) == 2 and len(train) == 4 and len(full) == 6
    assert not set(val.item_ids) & set(train.item_ids)
    assert len(val.texts) == 10  # all captions


def test_msrvtt_bad_files(tmp_path, synth):
    root = tmp_path / "m"
    shutil.copytree(synth / "videos", root)
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,video\nret0,video1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['video_id', 'sentence'\]"):
        load_split("msrvtt", root, "test")
    data = json.loads((root / "MSRVTT_data.json").read_text())
    data["sentences"][0] = {"video_id": "video0"}
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"sentences\[0\] needs string fields"):
        load_split("msrvtt", root, "train")
    with pytest.raises(ValueError, match="test, val, train, train-9k or train-7k"):
        load_split("msrvtt", root, "validation")


def test_msrvtt_train_7k(tmp_path, synth):
    root = tmp_path / "m"
    shutil.copytree(synth / "videos", root)
    with pytest.raises(FileNotFoundError, match="MSRVTT_train.7k.csv not found"):
        load_split("msrvtt", root, "train-7k")
    nine = load_split("msrvtt", root, "train-9k")
    (root / "MSRVTT_train.7k.csv").write_text("video_id\n" + "\n".join(nine.item_ids[:3]) + "\n")
    seven = load_split("msrvtt", root, "train-7k")
    assert seven.name == "msrvtt/train-7k" and seven.item_ids == nine.item_ids[:3]
    assert seven.texts == [t for t, i in zip(nine.texts, nine.text_item) if i < 3]  # all captions


def test_msvd_names_the_xpool_rename(tmp_path):
    root = tmp_path / "msvd"
    root.mkdir()
    (root / "test_list.txt").write_text("abc_1_5\n")
    (root / "captions_msvd.json").write_text(json.dumps({"abc_1_5": ["a cat"]}))
    with pytest.raises(FileNotFoundError, match="X-Pool") as e:
        load_split("msvd", root, "test")
    assert f"mv {root / 'captions_msvd.json'} {root / 'raw-captions.json'}" in str(e.value)
    (root / "captions_msvd.json").rename(root / "raw-captions.json")
    assert load_split("msvd", root, "test").texts == ["a cat"]


def test_msvd_pickle_is_converted_without_running_code(tmp_path, synth):
    root = tmp_path / "msvd"
    (root / "YouTubeClips").mkdir(parents=True)
    for vid in ("abc_1_5", "def_2_9"):
        shutil.copy(synth / "videos" / "MSRVTT_Videos" / "video0.mp4", root / "YouTubeClips" / f"{vid}.avi")
    with open(root / "raw-captions.pkl", "wb") as f:
        pickle.dump({"abc_1_5": [["a", "cat"], ["the", "cat", "sits"]], "def_2_9": [["a", "dog"]]}, f)
    (root / "test_list.txt").write_text("abc_1_5\ndef_2_9\n")
    with pytest.raises(FileNotFoundError, match="tokenflow convert-captions"):
        load_split("msvd", root, "test")
    convert_pickled_captions(root / "raw-captions.pkl")
    s = load_split("msvd", root, "test")
    assert s.texts == ["a cat", "the cat sits", "a dog"] and s.text_item == [0, 0, 1]
    assert s.item_paths[0].suffix == ".avi" and s.item_paths[0].is_file()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(root / "evil.pkl", "wb") as f:
        pickle.dump({"x": [Evil()]}, f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        convert_pickled_captions(root / "evil.pkl")


def test_activitynet_paragraphs(tmp_path):
    ann = {f"v_{i}": {"duration": 10.0, "timestamps": [[0, 5], [5, 10]], "sentences": [f"s{i}a. ", f" s{i}b."]}
           for i in range(20)}
    (tmp_path / "train.json").write_text(json.dumps(ann))
    (tmp_path / "val_1.json").write_text(json.dumps({"v_x": ann["v_0"]}))
    test = load_split("activitynet", tmp_path, "test")
    assert test.texts == ["s0a. s0b."] and test.item_paths[0].name == "v_x.mp4"
    val, tr = load_split("activitynet", tmp_path, "val"), load_split("activitynet", tmp_path, "train-90")
    assert len(val) == 2 and len(tr) == 18 and not set(val.item_ids) & set(tr.item_ids)
    (tmp_path / "val_1.json").write_text(json.dumps({"v_x": {"sentences": []}}))
    with pytest.raises(ValueError, match="'v_x'.sentences must be a non-empty list"):
        load_split("activitynet", tmp_path, "val_1")


def test_uniform_frame_indices():
    assert uniform_frame_indices(24, 12) == list(range(1, 24, 2))
    assert uniform_frame_indices(5, 12) == [0, 1, 2, 3, 4]
    assert uniform_frame_indices(100, 4) == [12, 37, 62, 87]
    idx = uniform_frame_indices(1000, 12)
    assert len(idx) == 12 and idx == sorted(idx) and idx[0] >= 0 and idx[-1] < 1000
    with pytest.raises(ValueError):
        uniform_frame_indices(0, 12)


def test_video_frames_are_the_sampled_ones(tmp_path):
    # a video whose frame t shows a shape that starts at t: the brightness tells the index
    import av
    import numpy as np

    path = tmp_path / "ramp.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        st = out.add_stream("libx264", rate=10)
        st.width = st.height = 32
        st.pix_fmt = "yuv420p"
        st.options = {"crf": "0"}
        for t in range(30):
            arr = np.full((32, 32, 3), t * 8, dtype=np.uint8)
            for p in st.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(p)
        for p in st.encode():
            out.mux(p)
    frames = read_video_frames(path, 6)
    got = [round(float(np.asarray(f).mean()) / 8) for f in frames]
    assert got == uniform_frame_indices(30, 6)
    assert len(read_video_frames(path, 40)) == 30  # short clip: all frames


def test_media_policy_fail_and_skip(tmp_path, synth):
    from tokenflow.data import RetrievalSplit

    good = synth / "images" / "flickr30k-images" / "000000.jpg"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:100])  # truncated JPEG
    s = RetrievalSplit("t", "image", ["0", "1", "2"], [good, bad, tmp_path / "missing.jpg"], ["a", "b", "c"], [0, 1, 2])
    prep = lambda im: torch.zeros(3, 4, 4)
    with pytest.raises(MediaError, match="bad.jpg: cannot decode image"):
        MediaDataset(s, prep)[1]
    with pytest.raises(MediaError, match="missing.jpg: file not found"):
        MediaDataset(s, prep)[2]
    ds = MediaDataset(s, prep, on_error="skip")
    idx, px, _, errs = collate_media([ds[i] for i in range(3)])
    assert idx == [0] and px.shape == (1, 3, 4, 4)
    assert [(e[0], e[1].endswith(n)) for e, n in zip(errs, ("bad.jpg", "missing.jpg"))] == [(1, True), (2, True)]

    vid = tmp_path / "bad.mp4"
    vid.write_bytes(b"\x00" * 64)
    sv = RetrievalSplit("v", "video", ["0"], [vid], ["a"], [0])
    with pytest.raises(MediaError, match="bad.mp4: cannot"):
        MediaDataset(sv, prep)[0]
    with pytest.raises(ValueError, match="'fail' or 'skip'"):
        MediaDataset(sv, prep, on_error="ignore")


def test_video_items_are_padded_with_a_mask(synth):
    s = load_split("msrvtt", synth / "videos", "test")
    ds = MediaDataset(s, lambda im: torch.zeros(3, 8, 8), num_frames=16)
    i, px, mask, err = ds[0]
    assert px.shape == (16, 3, 8, 8) and mask.sum() == 10 and not mask[10:].any() and err is None


def test_unpaired_extras_are_written_apart_from_the_pairs(tmp_path, synth):
    from tokenflow.data.synthetic import make_synthetic

    res = make_synthetic(tmp_path, images=(8, 4, 6), videos=(4, 2, 4), image_size=32, frames=10, seed=3, unpaired=5)
    imgs = sorted((tmp_path / "images" / "unpaired" / "images").iterdir())
    vids = sorted((tmp_path / "videos" / "unpaired" / "videos").iterdir())
    assert len(imgs) == 5 and len(vids) == 5 and res["images_unpaired"] == str(tmp_path / "images" / "unpaired")
    caps = (tmp_path / "images" / "unpaired" / "captions.txt").read_text().splitlines()
    assert len(caps) == 5 and all(caps)
    # the paired benchmark is byte for byte the one written without extras
    assert (tmp_path / "images" / "dataset_flickr30k.json").read_bytes() == \
        (synth / "images" / "dataset_flickr30k.json").read_bytes()


def test_unpaired_pool_draws_by_step_and_reports_bad_files(tmp_path, synth):
    from tokenflow.models import TinyCLIP, TinyConfig, WordTokenizer
    from tokenflow.train.data import UnpairedPool

    folder = tmp_path / "media"
    folder.mkdir()
    for p in sorted((synth / "images" / "flickr30k-images").iterdir())[:6]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.md").write_text("ignored: not an image file")
    texts = tmp_path / "caps.txt"
    texts.write_text("a red circle\n\n blue square \n")
    pre = TinyCLIP(TinyConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2, embed_dim=16),
                   WordTokenizer.build(["a"])).preprocess
    pool = UnpairedPool(folder, texts, "image", pre, 1, on_error="skip")
    assert pool.texts == ["a red circle", "blue square"]
    a = pool.draw(7, seed=1, step=3)
    b = pool.draw(7, seed=1, step=3)
    assert torch.equal(a[0], b[0]) and a[2] == b[2]  # a function of (seed, step, rank)
    assert len(a[0]) == 6 and len(a[3]) == 1 and "broken.jpg" in a[3][0][1]  # all 7 drawn; the bad one reported
    assert len(a[2]) == 2
    with pytest.raises(Exception, match="broken.jpg"):
        UnpairedPool(folder, None, "image", pre, 1, on_error="fail").draw(7, seed=1, step=3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="cs.unpaired_media: .*empty holds no image files"):
        UnpairedPool(empty, None, "image", pre, 1)
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="cs.unpaired_texts: .*blank.txt holds no caption"):
        UnpairedPool(None, tmp_path / "blank.txt", "image", pre, 1)
