"""User errors are one message and exit 2, divergence 3, bugs a traceback and exit 1; the
messages name the file, folder or key at fault."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tokenflow.cli import main
from tokenflow.data import load_split
from tokenflow.errors import FileError, UserError
from tokenflow.models import TinyCLIP, WordTokenizer
from tokenflow.models.tiny import TinyConfig

TINY = {"image_size": 16, "width": 32, "layers": 1, "heads": 2, "embed_dim": 16}


@pytest.fixture
def tiny_backbone_dir(tmp_path, synth) -> Path:
    """A bare tiny backbone folder of this test's own (a test may damage its files)."""
    split = load_split("flickr30k", synth / "images", "train")
    TinyCLIP(TinyConfig(**TINY), WordTokenizer.build(split.texts)).save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _evaluate(root: Path, model: Path, *extra: str) -> int:
    return main(["evaluate", "--dataset", "flickr30k", "--root", str(root), "--split", "val", "--model", str(model),
                 "--quiet", *extra])


def test_every_user_error_is_one_family():
    from tokenflow._extras import MissingExtra
    from tokenflow.data import MediaError
    from tokenflow.train import ConfigError

    for cls in (MissingExtra, MediaError, ConfigError, FileError):
        assert issubclass(cls, UserError)


@pytest.mark.parametrize("damage", ["truncated", "pickled", "garbage"])
def test_a_damaged_weights_file_is_named(tmp_path, synth, tiny_backbone_dir, capsys, damage):
    weights = tiny_backbone_dir / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "pickled":
        torch.save({"w": torch.zeros(3)}, weights)
    else:
        weights.write_bytes(b"\x00" * 64)
    assert _evaluate(synth / "images", tiny_backbone_dir) == 2
    err = capsys.readouterr().err
    assert f"{weights}: not a readable safetensors file" in err and "Traceback" not in err
    image = load_split("flickr30k", synth / "images", "val").item_paths[0]
    assert main(["explain", "--model", str(tiny_backbone_dir), "--media", str(image), "--caption", "a red square",
                 "--out", str(tmp_path / "e.png")]) == 2
    assert f"{weights}: not a readable safetensors file" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": "flickr30k", "root": str(synth / "images")},
                                   "model": {"backbone": str(tiny_backbone_dir)},
                                   "run": {"out": str(tmp_path / "run")}}))
    assert main(["train", "--config", str(cfg)]) == 2
    assert f"{weights}: not a readable safetensors file" in capsys.readouterr().err


def test_a_damaged_checkpoint_is_named(tmp_path, synth, capsys):
    from tests.train.helpers import _config

    path = _config(tmp_path, synth / "images", "run", run={"max_steps": 1}, distill={"enabled": False})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.safetensors").write_bytes(b"\x80\x04pickle")
    assert main(["train", "--config", str(path), "--resume"]) == 2
    assert "last.safetensors: not a readable safetensors checkpoint" in capsys.readouterr().err


def test_a_read_only_output_folder_stops_before_any_work(tmp_path, synth, tiny_backbone_dir, monkeypatch, capsys):
    import tokenflow.utils as utils

    locked = tmp_path / "ro"
    locked.mkdir()
    real = utils.tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):  # a read-only folder (chmod does not stop root, who runs CI here)
        if Path(dir).resolve() == locked.resolve():
            raise PermissionError(13, "Permission denied")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(utils.tempfile, "mkstemp", mkstemp)
    import importlib

    monkeypatch.setattr(importlib.import_module("tokenflow.eval.evaluate"), "evaluate",
                        lambda *a, **k: pytest.fail("evaluated first"))
    assert _evaluate(synth / "images", tiny_backbone_dir, "--out", str(locked / "r.json")) == 2
    assert f"--out folder {locked} is not writable (Permission denied)" in capsys.readouterr().err
    from tests.train.helpers import _config

    path = _config(tmp_path, synth / "images", "run", run={"max_steps": 1, "out": str(locked / "run")})
    assert main(["train", "--config", str(path)]) == 2
    assert f"run.out {locked / 'run'} is not writable" in capsys.readouterr().err
    assert not (locked / "run").exists()
    assert main(["demo", "--quick", "--out", str(locked / "demo"), "--methods", "global"]) == 2
    assert "is not writable" in capsys.readouterr().err and not (locked / "demo").exists()
    (tmp_path / "file.txt").write_text("")
    assert _evaluate(synth / "images", tiny_backbone_dir, "--out", str(tmp_path / "file.txt" / "r.json")) == 2
    assert f"{tmp_path / 'file.txt'} is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(("hp", "message"), [("lam=fast", "lam='fast' has the wrong type"),
                                             ("lam=Infinity", "lam=inf is not finite"),
                                             ("lam=NaN", "lam=nan is not finite"),
                                             ("lam=true", "lam=True has the wrong type"),
                                             ("lam=-1", "lam=-1 is out of range"),
                                             ("bogus=1", "'bogus' is not a hyperparameter of")])
def test_a_hyperparameter_must_be_a_finite_number(synth, tiny_backbone_dir, capsys, hp, message):
    assert _evaluate(synth / "images", tiny_backbone_dir, "--aligner", "tokenflow", "--hp", hp) == 2
    err = capsys.readouterr().err
    assert f"--hp: {message}" in err and "plan 'tokenflow'" in err and "Traceback" not in err


def test_a_training_hyperparameter_must_be_a_finite_number(tmp_path, synth):
    from tokenflow.train import ConfigError, load_config
    from tokenflow.train.config import TrainConfig

    data = {"data": {"dataset": "flickr30k", "root": str(synth / "images")},
            "model": {"backbone": "tiny", "hparams": {"lam": ".inf"}}, "run": {"out": str(tmp_path / "r")}}
    for value in (".inf", "fast", ".nan"):
        with pytest.raises(ConfigError, match="model.hparams: lam="):
            load_config(None, [f"model.hparams={{lam: {value}}}"], data=data)
    assert isinstance(load_config(None, ["model.hparams={lam: 3}"], data=data), TrainConfig)


def test_every_item_unreadable_with_skip_is_a_clear_message(tmp_path, synth, tiny_backbone_dir, capsys):
    root = tmp_path / "data"
    shutil.copytree(synth / "images", root)
    for p in load_split("flickr30k", root, "val").item_paths:
        p.write_bytes(b"not a jpeg")
    assert _evaluate(root, tiny_backbone_dir, "--on-error", "skip") == 2
    err = capsys.readouterr().err
    assert "none of its 4 images could be read (all skipped); first: " in err and "Traceback" not in err


def _bad_input(case: str, root: Path):
    """Call the library with one kind of bad input a user can give."""
    from tokenflow.data.video import uniform_frame_indices
    from tokenflow.index.shortlist import IndexSettings
    from tokenflow.train.ablate import check_methods

    root.mkdir(exist_ok=True)
    if case == "split name":
        return load_split("flickr30k", root, "nope")
    if case == "annotation file":
        (root / "dataset_flickr30k.json").write_text('{"images": [{"split": "test"}]}')
        return load_split("flickr30k", root, "test")
    if case == "index settings":
        return IndexSettings(kind="flat", encoding="sq8")
    if case == "method":
        return check_methods(["filip"])
    return uniform_frame_indices(10, 0)


@pytest.mark.parametrize(("case", "message"), [
    ("split name", "split must be one of"), ("annotation file", "missing field 'filename'"),
    ("index settings", "encoding 'sq8' needs kind ivf or hnsw"), ("method", "unknown method"),
    ("frames", "frames per video must be at least 1")])
def test_bad_input_to_the_library_is_an_input_error(tmp_path, case, message):
    """What a user gives (a split name, an annotation file, index settings, a method, a frame count)
    fails as an InputError: one message at the command line, and still a ValueError to code."""
    from tokenflow.errors import InputError

    with pytest.raises(InputError, match=message):
        _bad_input(case, tmp_path / "data")
