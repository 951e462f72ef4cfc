"""The SugarCrepe loader on the published files (``shared/realdata/sugarcrepe``, read where they
lie, skipped when absent), the generic hard-negative format, and each bad input's message.

The COCO images are not in the project: the real-file tests write tiny PNG fixtures named after
the filenames the files list."""

from __future__ import annotations

import json
import lzma
import re
import shutil
from pathlib import Path

import pytest

from tokenflow.data.hard_negatives import read_hard_negatives, write_hard_negatives
from tokenflow.data.sugarcrepe import SUGARCREPE_CATEGORIES, load_sugarcrepe, sugarcrepe_files
from tokenflow.errors import FileError

CANDIDATES = (Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata", Path("/work/shared/realdata"))
REALDATA = next((p.resolve() for p in CANDIDATES if (p / "sugarcrepe").is_dir()), None)
real = pytest.mark.skipif(REALDATA is None, reason="SugarCrepe files absent (looked in "
                          + " and ".join(str(p) for p in CANDIDATES) + ")")


def sources_counts() -> dict[str, int]:
    """Entries per category, as SOURCES.md's SugarCrepe table gives them."""
    text = (REALDATA / "SOURCES.md").read_text().split("## SugarCrepe", 1)[1]
    rows = re.findall(r"^\| `(\w+)\.json` \|.*\| ([\d,]+) \|$", text, flags=re.M)
    return {name: int(n.replace(",", "")) for name, n in rows}


def fixture_images(folder: Path, names) -> Path:
    """One tiny PNG per filename (the COCO images are not here)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(folder / "template.png")
    for name in set(names):
        shutil.copyfile(folder / "template.png", folder / name)
    return folder


def real_filenames(category: str) -> list[str]:
    with lzma.open(REALDATA / "sugarcrepe" / f"{category}.json.xz") as f:
        return [e["filename"] for e in json.load(f).values()]


@real
def test_every_category_has_the_entry_count_of_sources_md(tmp_path):
    counts = sources_counts()
    assert set(counts) == set(SUGARCREPE_CATEGORIES) and sum(counts.values()) == 7511
    items = load_sugarcrepe(REALDATA / "sugarcrepe", tmp_path, check_media=False)
    got = {}
    for it in items:
        got[it.category] = got.get(it.category, 0) + 1
    assert got == counts
    for it in items:  # every entry: a filename and two non-empty captions
        assert it.media.parent == tmp_path and it.media.name.endswith(".jpg")
        assert it.caption.strip() and len(it.negatives) == 1 and it.negatives[0].strip()
    assert len({it.media for it in items if it.category == "swap_obj"}) == 224  # as SOURCES.md says


def sources_first_swap_att() -> tuple[str, str, str]:
    """(image, caption, negative) of the entry SOURCES.md describes as swap_att's first."""
    text = " ".join((REALDATA / "SOURCES.md").read_text().split())
    m = re.search(r'The first entry of `swap_att\.json` is image `([^`]+)`, caption "([^"]+)", negative "([^"]+)"',
                  text)
    assert m, "SOURCES.md no longer describes swap_att's first entry"
    return m.groups()


@real
def test_the_swap_att_entry_of_sources_md_reads_as_it_says(tmp_path):
    """SOURCES.md's "first entry" of swap_att is its entry "18" (key "0" is another image, in the
    file whose sha256 SOURCES.md gives): the loader keeps the file's order and reads that entry
    exactly as described."""
    image, caption, negative = sources_first_swap_att()
    images = fixture_images(tmp_path / "val2017", real_filenames("swap_att"))
    path = REALDATA / "sugarcrepe" / "swap_att.json.xz"
    items = load_sugarcrepe(path, images)
    with lzma.open(path) as f:
        raw = list(json.load(f).items())
    assert [it.where for it in items] == [f"{path} entry {k!r}" for k, _ in raw]  # file order, every key
    assert [(it.media.name, it.caption, it.negatives[0]) for it in items] == [
        (e["filename"], e["caption"], e["negative_caption"]) for _, e in raw]
    described = [it for it in items if it.media.name == image and it.caption == caption]
    assert len(described) == 1 and described[0].negatives == (negative,) and described[0].media.is_file()
    assert described[0].media == images / image and described[0].category == "swap_att"


@real
def test_a_subset_of_files_gives_those_categories_plain_or_compressed(tmp_path):
    ann = tmp_path / "data"
    ann.mkdir()
    shutil.copyfile(REALDATA / "sugarcrepe" / "swap_obj.json.xz", ann / "swap_obj.json.xz")
    with lzma.open(REALDATA / "sugarcrepe" / "add_att.json.xz") as f:
        (ann / "add_att.json").write_bytes(f.read())
    assert set(sugarcrepe_files(ann)) == {"add_att", "swap_obj"}
    images = fixture_images(tmp_path / "val2017", real_filenames("add_att") + real_filenames("swap_obj"))
    items = load_sugarcrepe(ann, images)
    assert {it.category for it in items} == {"add_att", "swap_obj"} and len(items) == 692 + 245
    assert [it.category for it in load_sugarcrepe(ann, images, ["swap_obj"])] == ["swap_obj"] * 245
    with pytest.raises(FileError, match="no file for category replace_rel"):
        load_sugarcrepe(ann, images, ["replace_rel"])


def write_sugarcrepe(folder: Path, entries: dict, name: str = "swap_att.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(entries))
    return folder


def test_sugarcrepe_bad_input_names_the_file_and_the_entry(tmp_path):
    images = fixture_images(tmp_path / "img", ["a.jpg"])
    good = {"filename": "a.jpg", "caption": "a red cup", "negative_caption": "a blue cup"}
    ann = write_sugarcrepe(tmp_path / "ann", {"0": good, "1": {**good, "filename": "missing.jpg"}})
    with pytest.raises(FileError, match=r"swap_att\.json entry '1': image .*missing\.jpg not found"):
        load_sugarcrepe(ann, images)
    write_sugarcrepe(ann, {"0": good, "7": {**good, "negative_caption": "  "}})
    with pytest.raises(FileError, match=r"swap_att\.json entry '7': negative_caption is empty"):
        load_sugarcrepe(ann, images)
    write_sugarcrepe(ann, {"0": {**good, "caption": ""}})
    with pytest.raises(FileError, match=r"swap_att\.json entry '0': caption is empty"):
        load_sugarcrepe(ann, images)
    write_sugarcrepe(ann, {"0": {"filename": "a.jpg", "caption": "x"}})
    with pytest.raises(FileError, match=r"entry '0': missing negative_caption"):
        load_sugarcrepe(ann, images)
    write_sugarcrepe(ann, [good])
    with pytest.raises(FileError, match=r"swap_att\.json: expected a non-empty object"):
        load_sugarcrepe(ann, images)
    (ann / "swap_att.json").write_text("{not json")
    with pytest.raises(FileError, match=r"swap_att\.json: not valid JSON"):
        load_sugarcrepe(ann, images)
    with pytest.raises(FileError, match="no SugarCrepe file here"):
        load_sugarcrepe(tmp_path / "img", images)


def test_generic_format_reads_what_it_writes_and_names_bad_entries(tmp_path):
    fixture_images(tmp_path / "imgs", ["a.png", "b.png"])
    entries = [{"image": "imgs/a.png", "caption": "a red circle", "negatives": ["a blue circle", "a red square"],
                "category": "replace"},
               {"image": "imgs/b.png", "caption": "a cat", "negatives": ["a dog"]}]
    path = write_hard_negatives(tmp_path / "hn.json", entries)
    items = read_hard_negatives(path)
    assert [it.media for it in items] == [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "b.png"]
    assert items[0].negatives == ("a blue circle", "a red square") and items[1].category == "all"
    assert items[0].texts == ("a red circle", "a blue circle", "a red square")
    # a bare list, and another images root
    (tmp_path / "list.json").write_text(json.dumps([{**entries[1], "image": "b.png"}]))
    assert read_hard_negatives(tmp_path / "list.json", tmp_path / "imgs")[0].media == tmp_path / "imgs" / "b.png"
    bad = [
        ({**entries[1], "image": "imgs/none.png"}, r"entry 1: image .*none\.png not found"),
        ({**entries[1], "caption": " "}, r"entry 1: caption is empty"),
        ({**entries[1], "negatives": []}, r"entry 1: negatives must be a non-empty list"),
        ({**entries[1], "negatives": "a dog"}, r"entry 1: negatives must be a non-empty list"),
        ({**entries[1], "negatives": ["a dog", ""]}, r"entry 1: negative 1 is empty"),
        ({"caption": "a cat", "negatives": ["a dog"]}, r"entry 1: needs exactly one of 'image' or 'video'"),
        ({"image": "imgs/b.png", "negatives": ["a dog"]}, r"entry 1: missing caption"),
        ("a cat", r"entry 1: expected an object"),
    ]
    for entry, message in bad:
        write_hard_negatives(path, [entries[0], entry])
        with pytest.raises(FileError, match=re.escape(str(path)) + " " + message):
            read_hard_negatives(path)
    path.write_text(json.dumps({"format": "something-else/1", "items": entries}))
    with pytest.raises(FileError, match="is not tokenflow-hard-negatives/1"):
        read_hard_negatives(path)
    path.write_text(json.dumps({"images": entries}))
    with pytest.raises(FileError, match="expected .*items"):
        read_hard_negatives(path)
    path.write_text("[{")
    with pytest.raises(FileError, match="not valid JSON"):
        read_hard_negatives(path)
    with pytest.raises(FileError, match="not found"):
        read_hard_negatives(tmp_path / "absent.json")


def test_generic_format_reads_xz(tmp_path):
    fixture_images(tmp_path, ["a.png"])
    doc = json.dumps([{"image": "a.png", "caption": "a cat", "negatives": ["a dog"], "category": "c"}])
    with lzma.open(tmp_path / "hn.json.xz", "wt") as f:
        f.write(doc)
    assert read_hard_negatives(tmp_path / "hn.json.xz")[0].category == "c"
