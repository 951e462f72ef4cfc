"""The loaders on the real, published annotation files (``shared/realdata``, see its SOURCES.md).

The files are read where they lie (xz-compressed, read-only) and unpacked into ``tmp_path``; none
is copied into the project. Media are not needed: a loader only names each video's path (the
media loader reports a missing one later), so no video is read here.

MSR-VTT's ``MSRVTT_data.json`` (the 200,000 captions) is not among the files: for ``train-9k``
and ``train-7k`` a stand-in with one placeholder caption per listed video is written, which
checks the real split lists, not the captions.
"""

import json
import lzma
import shutil
from pathlib import Path

import pytest

from tokenflow.data import load_split

CANDIDATES = (Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata", Path("/work/shared/realdata"))
REALDATA = next((p.resolve() for p in CANDIDATES if p.is_dir()), None)

pytestmark = pytest.mark.skipif(REALDATA is None, reason="real annotation files absent (looked for "
                                + " and ".join(str(p) for p in CANDIDATES) + ")")


def unpack(dataset, names, dest, rename=None):
    """``names`` of ``realdata/dataset`` (each ``NAME.xz``) unpacked into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = REALDATA / dataset / f"{name}.xz"
        if not src.is_file():
            pytest.skip(f"{src} absent")
        with lzma.open(src) as f, open(dest / (rename or {}).get(name, name), "wb") as out:
            shutil.copyfileobj(f, out)
    return dest


def test_msrvtt_1k_a_test(tmp_path):
    root = unpack("msrvtt", ["MSRVTT_JSFUSION_test.csv"], tmp_path / "msrvtt")
    s = load_split("msrvtt", root, "test")
    assert len(s) == 1000 and len(set(s.item_ids)) == 1000 and len(s.texts) == 1000
    assert s.item_ids[0] == "video9770" and s.texts[0] == "a person is connecting something to system"
    assert s.item_paths[0] == root / "MSRVTT_Videos" / "video9770.mp4"  # named, not required to exist


@pytest.mark.parametrize("split,csv,videos", [("train-9k", "MSRVTT_train.9k.csv", 9000),
                                              ("train-7k", "MSRVTT_train.7k.csv", 7010)])
def test_msrvtt_training_lists(tmp_path, split, csv, videos):
    root = unpack("msrvtt", [csv, "MSRVTT_JSFUSION_test.csv"], tmp_path / "msrvtt")
    ids = (root / csv).read_text().split()[1:]
    stand_in = {"videos": [{"video_id": v, "split": "train"} for v in ids],
                "sentences": [{"video_id": v, "caption": f"placeholder {v}"} for v in ids]}
    (root / "MSRVTT_data.json").write_text(json.dumps(stand_in))
    s = load_split("msrvtt", root, split)
    assert len(s) == videos == len(set(s.item_ids))
    test_ids = set(load_split("msrvtt", root, "test").item_ids)
    assert not test_ids & set(s.item_ids)  # 1k-A test videos never train


def test_msrvtt_7k_is_inside_9k(tmp_path):
    root = unpack("msrvtt", ["MSRVTT_train.7k.csv", "MSRVTT_train.9k.csv"], tmp_path)
    seven, nine = ((root / n).read_text().split()[1:] for n in ("MSRVTT_train.7k.csv", "MSRVTT_train.9k.csv"))
    assert set(seven) <= set(nine)


@pytest.mark.parametrize("split,videos", [("train", 1200), ("val", 100), ("test", 670)])
def test_msvd_lists_and_captions(tmp_path, split, videos):
    root = unpack("msvd", ["train_list.txt", "val_list.txt", "test_list.txt", "captions_msvd.json"],
                  tmp_path / "msvd", rename={"captions_msvd.json": "raw-captions.json"})
    s = load_split("msvd", root, split)
    assert len(s) == videos == len(set(s.item_ids))
    assert len(s.texts) > 20 * videos  # about 40 captions per video
    assert set(s.text_item) == set(range(videos))


def test_msvd_names_the_rename_when_only_xpool_captions_are_there(tmp_path):
    root = unpack("msvd", ["test_list.txt", "captions_msvd.json"], tmp_path / "msvd")
    with pytest.raises(FileNotFoundError, match=r"mv .*captions_msvd.json .*raw-captions.json"):
        load_split("msvd", root, "test")


@pytest.mark.parametrize("split,videos", [("train", 10009), ("val_1", 4917), ("test", 4917), ("val_2", 4885)])
def test_activitynet_splits(tmp_path, split, videos):
    name = {"train": "train.json", "val_1": "val_1.json", "test": "val_1.json", "val_2": "val_2.json"}[split]
    root = unpack("activitynet", [name], tmp_path / "activitynet")
    s = load_split("activitynet", root, split)
    assert len(s) == videos == len(s.texts) == len(set(s.item_ids))
    assert all(t.strip() for t in s.texts)
    if split == "train":
        assert len(load_split("activitynet", root, "val")) + len(load_split("activitynet", root, "train-90")) == videos
