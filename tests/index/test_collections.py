"""The library side of a collection on disk: which index folders a path names, the store an index
was built over, splits of loose media files, and the index kind chosen by size."""

from pathlib import Path

import pytest

from tokenflow.errors import FileError, UserError
from tokenflow.index.collections import AUTO_FLAT_MAX, auto_settings, index_dirs, media_split


def test_auto_index_kind_by_size():
    assert auto_settings(1000) == {"kind": "flat"}
    assert auto_settings(AUTO_FLAT_MAX) == {"kind": "flat"}
    big = auto_settings(1_000_000)
    assert big == {"kind": "ivf", "encoding": "sq8", "nlist": 1000, "nprobe": 31, "train_size": 64_000}


def test_index_dirs_names_what_is_missing(tmp_path):
    from tokenflow.index.shortlist import INDEX_SETTINGS
    from tokenflow.index.store import MANIFEST

    index = tmp_path / "idx"
    index.mkdir()
    (index / INDEX_SETTINGS).write_text("{}")
    assert index_dirs(index) == [index]  # an index folder itself
    with pytest.raises(FileNotFoundError, match="no feature store here"):
        index_dirs(tmp_path / "nothing")
    for part in ("part-000", "part-001"):
        (tmp_path / "s" / part).mkdir(parents=True)
        (tmp_path / "s" / part / MANIFEST).write_text("{}")
    (tmp_path / "s" / "part-000" / "index").mkdir()
    (tmp_path / "s" / "part-000" / "index" / INDEX_SETTINGS).write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"part-001/index: no index here .*tokenflow index"):
        index_dirs(tmp_path / "s")
    (tmp_path / "s" / "part-002").mkdir()  # a rank that died before writing anything
    with pytest.raises(FileError, match="part-002 are unfinished"):
        index_dirs(tmp_path / "s")


def test_media_split_ids_are_relative_paths_without_extension_unless_they_clash(tmp_path):
    files = [tmp_path / "a" / "x.jpg", tmp_path / "a" / "b" / "y.png"]
    split = media_split(files, "image", "queries")
    assert split.item_ids == ["x", str(Path("b") / "y")] and split.item_paths == files and split.texts == []
    clash = media_split([tmp_path / "x.jpg", tmp_path / "x.png"], "image", "queries")
    assert clash.item_ids == ["x.jpg", "x.png"]
    with pytest.raises(UserError, match="queries: no video files"):
        media_split([], "video", "queries")
