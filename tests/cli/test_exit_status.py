"""What ``tokenflow`` exits with: 2 and one line for what the user can fix (a UserError, a missing
path, an unreadable image in a batch, naming the file), 3 for a diverged run, and 1 with the
traceback for anything else, a bare ValueError from library code included."""

from __future__ import annotations

import shutil

import pytest

from tokenflow.cli import main
from tokenflow.errors import Diverged, FileError, InputError, UserError


@pytest.fixture
def fail_with(monkeypatch):
    """Make ``tokenflow make-data`` raise the given exception."""
    import tokenflow.cli.data as data

    def install(exc: BaseException) -> None:
        def command(args):
            raise exc

        monkeypatch.setattr(data, "_make_data", command)

    return install


def test_a_bare_value_error_is_a_bug_with_its_traceback(tmp_path, fail_with, capsys):
    fail_with(ValueError("shapes [3, 4] and [5, 4] differ"))
    assert main(["make-data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: shapes [3, 4] and [5, 4] differ" in err
    assert "internal error (ValueError)" in err


def test_a_bug_shows_its_traceback_and_exits_1_and_debug_shows_every_traceback(tmp_path, fail_with, capsys):
    fail_with(KeyError("oops"))
    assert main(["make-data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'oops'" in err and "internal error" in err
    fail_with(FileError(f"{tmp_path}: broken"))
    assert main(["make-data", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"tokenflow make-data: {tmp_path}: broken\n"
    assert main(["--debug", "make-data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith(f"tokenflow make-data: {tmp_path}: broken\n")


@pytest.mark.parametrize("exc", [UserError("--x: bad"), InputError("a.json: bad"),
                                 FileNotFoundError("nope.txt not found"), PermissionError("ro/: not writable"),
                                 NotADirectoryError("f.txt is not a folder"), FileExistsError("out exists")])
def test_what_a_user_can_fix_is_one_line_and_exit_2(tmp_path, fail_with, capsys, exc):
    fail_with(exc)
    assert main(["make-data", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"tokenflow make-data: {exc}\n"


def test_a_diverged_run_exits_3(tmp_path, fail_with, capsys):
    fail_with(Diverged("diverged at step 4"))
    assert main(["make-data", str(tmp_path)]) == 3
    assert capsys.readouterr().err == "tokenflow make-data: diverged at step 4\n"


def test_input_errors_are_value_errors_too(tmp_path):
    from tokenflow.data import load_split

    assert issubclass(InputError, UserError) and issubclass(InputError, ValueError)
    with pytest.raises(InputError, match="unknown dataset 'flickr31k'"):
        load_split("flickr31k", tmp_path, "test")
    with pytest.raises(ValueError, match="unknown dataset"):  # old callers catching ValueError still do
        load_split("flickr31k", tmp_path, "test")


@pytest.fixture
def broken(tmp_path, synth):
    """The synthetic images with every val and train image unreadable."""
    from tokenflow.data import load_split

    root = tmp_path / "data"
    shutil.copytree(synth / "images", root)
    for split in ("train", "val"):
        for p in load_split("flickr30k", root, split).item_paths:
            p.write_bytes(b"not an image")
    return root


def test_an_unreadable_image_read_by_a_worker_is_named(broken, capsys):
    from tests.helpers import save_tiny_model
    from tokenflow.data import load_split
    from tokenflow.models import TinyConfig

    model = save_tiny_model(broken / "m", load_split("flickr30k", broken, "val").texts, seed=0, w_global=1.0,
                            w_fine=1.0, config=TinyConfig(image_size=16, width=32, layers=1, heads=2, embed_dim=16))
    first = load_split("flickr30k", broken, "val").item_paths[0]
    assert main(["evaluate", "--dataset", "flickr30k", "--root", str(broken), "--split", "val", "--model", str(model),
                 "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"tokenflow evaluate: {first}: cannot decode image" in err and "Traceback" not in err, err


def test_a_wholly_unreadable_training_batch_is_named(tmp_path, broken, capsys):
    from tests.train.helpers import _config
    from tokenflow.data import load_split

    cfg = _config(tmp_path, broken, "run", data={"on_error": "skip"}, run={"max_steps": 1},
                  distill={"enabled": False})
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    paths = {str(p) for p in load_split("flickr30k", broken, "train").item_paths}
    named = err.split("tokenflow train: ", 1)[1].split(": cannot decode image", 1)[0]
    assert named in paths and "the whole batch of flickr30k/train was unreadable" in err, err
    assert "Traceback" not in err
