"""Runs that cannot be corrupted: resume checks, the folder lock, divergence, leftovers, torn logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.train.helpers import _config, _env, _log
from tokenflow.cli import main
from tokenflow.train import Trainer, load_config, train
from tokenflow.train.checkpoint import FORMAT, read_checkpoint_info
from tokenflow.train.runfolder import SAFE_TO_CHANGE, config_changes, recover_model_dir, save_model_dir
from tokenflow.utils import LOCK_FILE, FolderBusy, folder_lock


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _interrupt(tmp_path: Path, synth: Path, monkeypatch, name: str = "run", **model) -> tuple[Path, Path]:
    """A run killed after its last training step (and its validation), before its end."""
    path = _config(tmp_path, synth / "images", name, run={"max_steps": 2}, distill={"enabled": False},
                   model=model)

    def killed(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "finish", killed)
        with pytest.raises(KeyboardInterrupt):
            train(load_config(path))
    return path, tmp_path / name


@pytest.fixture
def interrupted(tmp_path, synth, monkeypatch):
    """(config path, run folder) of a run killed before its end."""
    return _interrupt(tmp_path, synth, monkeypatch)


# -- the checkpoint's configuration -----------------------------------------------------------
def test_the_checkpoint_carries_config_version_and_date(interrupted):
    path, out = interrupted
    info = read_checkpoint_info(out / "last.safetensors")
    assert info["config"] == json.loads(json.dumps(load_config(path).model_dump(mode="json")))
    from tokenflow import __version__

    assert info["tokenflow_version"] == __version__ and info["date"][:2] == "20"
    assert info["state"]["step"] == 2 and not info["state"].get("finished")


def test_resume_refuses_a_changed_result_key_before_writing_anything(interrupted, capsys):
    path, out = interrupted
    before = _files(out)
    code = main(["train", "--config", str(path), "--resume", "optim.lr=0.002", "model.hparams={lam: 2.0}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.001 -> 0.002" in err and "model.hparams: {} -> {\"lam\": 2.0}" in err
    assert "--force-config" in err
    assert _files(out) == before  # config.yaml included


def test_resume_accepts_keys_that_cannot_change_the_result(interrupted):
    path, out = interrupted
    assert {"run.log_every", "run.progress", "data.workers", "run.eval_batch_size"} <= SAFE_TO_CHANGE
    assert "run.eval_every" not in SAFE_TO_CHANGE and "run.max_steps" not in SAFE_TO_CHANGE
    cfg = load_config(path, ["run.log_every=5", "run.eval_batch_size=3", "run.progress=true"])
    summary = train(cfg, resume=True)
    assert summary["steps"] == 2
    assert not [r for r in _log(out) if r["kind"] == "config_override"]


def test_force_config_resumes_and_records_the_override(interrupted, capsys):
    path, out = interrupted
    assert main(["train", "--config", str(path), "--resume", "--force-config", "optim.lr=0.002"]) == 0
    over = [r for r in _log(out) if r["kind"] == "config_override"]
    assert over == [{"kind": "config_override", "step": 2,
                     "changes": {"optim.lr": {"old": 0.001, "new": 0.002}}}]
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["lr"] == 0.002
    assert read_checkpoint_info(out / "last.safetensors")["config"]["optim"]["lr"] == 0.002
    assert main(["train", "--config", str(path), "--force-config"]) == 2  # only with --resume


def test_resuming_a_finished_run_says_so_and_does_nothing(tmp_path, synth, capsys):
    path = _config(tmp_path, synth / "images", "done", run={"max_steps": 2}, distill={"enabled": False},
                   data={"test_split": "test"})
    assert main(["train", "--config", str(path)]) == 0
    out = tmp_path / "done"
    before = _files(out)
    capsys.readouterr()
    assert main(["train", "--config", str(path), "--resume"]) == 0
    assert "is finished" in capsys.readouterr().err
    assert _files(out) == before  # no second test, no second done record
    assert [r["kind"] for r in _log(out)].count("done") == 1
    # a checkpoint from before runs were marked finished: the log's done record says it
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(out / "last.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    state = json.loads(meta.pop("state"))
    del state["finished"], meta["config"]
    save_file(tensors, str(out / "last.safetensors"), metadata={**meta, "state": json.dumps(state)})
    before = _files(out)
    assert main(["train", "--config", str(path), "--resume"]) == 0
    assert "is finished" in capsys.readouterr().err
    after = _files(out)  # only the mark is added: the same tensors, the state now says finished
    assert {k: v for k, v in after.items() if k != "last.safetensors"} == \
        {k: v for k, v in before.items() if k != "last.safetensors"}
    with safe_open(str(out / "last.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["state"]) == {**state, "finished": True}
        assert all(torch.equal(f.get_tensor(k), v) for k, v in tensors.items())


def test_a_checkpoint_without_config_still_resumes_with_a_warning(interrupted, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path, out = interrupted
    ckpt = out / "last.safetensors"
    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    old = {k: v for k, v in meta.items() if k not in ("config", "tokenflow_version", "date")}
    assert old["format"] == FORMAT
    save_file(tensors, str(ckpt), metadata=old)
    capsys.readouterr()
    summary = train(load_config(path, ["optim.lr=0.5"]), resume=True)
    assert summary["steps"] == 2
    assert "cannot be checked" in capsys.readouterr().err


def test_a_checkpoint_from_an_older_version_resumes_without_a_false_change(interrupted, capsys):
    """A config saved before data.max_words and data.frame_cache existed (with the old
    model.max_text_len) is read in today's form: nothing changed, so --resume goes on."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path, out = interrupted
    ckpt = out / "last.safetensors"
    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config = json.loads(meta["config"])
    words = config["data"].pop("max_words")
    config["data"].pop("frame_cache")
    config["model"]["max_text_len"] = words
    changed = {**config, "optim": {**config["optim"], "lr": 0.123}}  # a real change is still refused
    save_file(tensors, str(ckpt), metadata={**meta, "config": json.dumps(changed)})
    with pytest.raises(Exception, match=r"optim.lr: 0.123 -> ") as refused:
        train(load_config(path), resume=True)
    assert "max_words" not in str(refused.value) and "frame_cache" not in str(refused.value)
    save_file(tensors, str(ckpt), metadata={**meta, "config": json.dumps(config)})
    assert train(load_config(path), resume=True)["steps"] == 2


def test_config_changes_flattens_sections():
    a = {"optim": {"lr": 1, "betas": [0.9, 0.98]}, "run": {"log_every": 1}, "model": {"hparams": {"lam": 1}}}
    b = {"optim": {"lr": 1, "betas": [0.9, 0.99]}, "run": {"log_every": 7}, "model": {"hparams": {}}}
    assert config_changes(a, b) == {"model.hparams": ({"lam": 1}, {}), "optim.betas": ([0.9, 0.98], [0.9, 0.99])}


# -- the lock -------------------------------------------------------------------------------
_HOLD = """
import sys, time
from tokenflow.utils import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], env=_env(), stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_stops_at_once_naming_the_holder(tmp_path, synth, capsys):
    path = _config(tmp_path, synth / "images", "busy", run={"max_steps": 1}, distill={"enabled": False})
    out = tmp_path / "busy"
    proc = _holder(out)
    try:
        t0 = time.perf_counter()
        with pytest.raises(FolderBusy, match=f"pid {proc.pid}"):
            train(load_config(path))
        assert time.perf_counter() - t0 < 30
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing written
        demo = tmp_path / "demo"
        demo.mkdir()
        (demo / ".tokenflow-demo").write_text("")
        proc2 = _holder(demo)
        try:
            assert main(["demo", "--quick", "--out", str(demo), "--methods", "global"]) == 2
            assert f"pid {proc2.pid}" in capsys.readouterr().err
        finally:
            proc2.kill()
            proc2.wait()
    finally:
        proc.send_signal(signal.SIGKILL)  # a killed holder: the OS releases its lock
        proc.wait()
    assert (out / LOCK_FILE).read_text().strip() == str(proc.pid)  # a stale lock file ...
    train(load_config(path))  # ... does not block the next run
    assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_an_ablation_folder_is_locked(tmp_path, synth, capsys):
    path = _config(tmp_path, synth / "images", "abl", run={"max_steps": 1}, data={"test_split": "test"})
    proc = _holder(tmp_path / "abl")
    try:
        assert main(["ablate", "--config", str(path), "--methods", "global"]) == 2
        assert f"pid {proc.pid}" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.wait()
    with folder_lock(tmp_path / "abl"), pytest.raises(FolderBusy):  # the same process cannot take it twice
        with folder_lock(tmp_path / "abl"):
            pass


# -- divergence -------------------------------------------------------------------------------
@pytest.mark.parametrize("aligner", ["tokenflow", None])
def test_a_diverging_run_stops_at_once_and_keeps_the_last_good_state(tmp_path, synth, monkeypatch, aligner,
                                                                     capsys):
    """optim.lr=1e6 from a good checkpoint: a later step has a NaN loss; the run stops
    there (exit 3, a log record), and last.safetensors and best/ are those of the good step."""
    path, out = _interrupt(tmp_path, synth, monkeypatch, aligner=aligner)
    before = _files(out)
    assert "best/model.safetensors" in before
    step = read_checkpoint_info(out / "last.safetensors")["state"]["step"]
    capsys.readouterr()
    code = main(["train", "--config", str(path), "--resume", "--force-config", "optim.lr=1e6", "optim.lr_new=1e6",
                 "optim.epochs=3", "run.max_steps=null"])
    assert code == 3
    err = capsys.readouterr().err
    import re

    found = re.search(r"diverged at step (\d+) \(loss nan, grad norm \S+, lr [0-9.e+]+\)", err)
    assert found and int(found.group(1)) > step and "Traceback" not in err, err
    rec = _log(out)[-1]
    assert rec["kind"] == "diverged" and rec["step"] == int(found.group(1)) and rec["loss"] == "nan"
    assert all(r["kind"] != "train" or r["loss"] == r["loss"] for r in _log(out))  # no NaN was logged as a step
    after = _files(out)
    for name, data in before.items():  # the checkpoint and best/ of the last good step stay
        if name.startswith(("last.safetensors", "best/", "val_best.json")):
            assert after[name] == data, name
    assert not any(r["kind"] == "done" for r in _log(out))


# -- leftovers, interrupted swaps, torn logs ------------------------------------------------------
class _Model:
    """Stands in for a RetrievalModel: save_pretrained writes one file naming its version."""

    def __init__(self, version: str):
        self.version = version

    def save_pretrained(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_text(self.version)
        (folder / "tokenflow.json").write_text(self.version)


def _kill_at(monkeypatch, what: str, n: int):
    """Make the n-th call (0-based) of ``what`` in runfolder raise, as a kill would stop there."""
    import tokenflow.train.runfolder as rf

    target = {"replace": (rf.os, "replace"), "journal": (rf, "write_text_atomic"),
              "save": (_Model, "save_pretrained")}[what]
    real, calls = getattr(*target), []

    def dying(*a, **k):
        calls.append(a)
        if len(calls) - 1 == n:
            if what == "save":  # half a folder, then the kill
                a[1].mkdir(parents=True, exist_ok=True)
                (a[1] / "model.safetensors").write_text("half")
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(*target, dying)


@pytest.mark.parametrize(("what", "n", "expect"), [
    ("save", 0, "old"),  # the new copy half written: the old one stays
    ("journal", 0, "old"),  # the new copy complete but not yet named in the journal: the old one stays
    ("replace", 0, "old"),  # the journal's own rename into place (atomic_path): not written, the old stays
    ("replace", 1, "new"),  # journal written, best/ not yet moved aside: the swap is finished
    ("replace", 2, "new"),  # best/ moved aside, the new copy not yet in place: finished
])
def test_an_interrupted_best_swap_is_recovered(tmp_path, monkeypatch, what, n, expect):
    best = tmp_path / "best"
    save_model_dir(_Model("old"), best)
    with monkeypatch.context() as m:
        _kill_at(m, what, n)
        with pytest.raises(KeyboardInterrupt):
            save_model_dir(_Model("new"), best)
    recover_model_dir(best)
    assert (best / "model.safetensors").read_text() == expect
    assert (best / "tokenflow.json").read_text() == expect
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_the_swap_never_depends_on_the_order_of_pids(tmp_path, monkeypatch):
    """The complete copy is the one the journal names, whatever the pids sort like."""
    best = tmp_path / "best"
    save_model_dir(_Model("old"), best)
    monkeypatch.setattr(os, "getpid", lambda: 10)  # "10" sorts before "9"
    with monkeypatch.context() as m:
        _kill_at(m, "replace", 2)
        with pytest.raises(KeyboardInterrupt):
            save_model_dir(_Model("new"), best)
    (tmp_path / ".best.old-9").mkdir()  # a leftover of an older process
    (tmp_path / ".best.old-9" / "model.safetensors").write_text("older")
    recover_model_dir(best)
    assert (best / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_leftovers_are_removed_when_a_run_resumes(interrupted):
    path, out = interrupted
    junk = [out / ".last.safetensors.ab12cd.tmp", out / ".val_best.json.x1.tmp", out / ".log.jsonl.q.tmp"]
    for p in junk:
        p.write_bytes(b"partial")
    for d in (".best.tmp-4242", ".best.old-77"):
        (out / d).mkdir()
        (out / d / "model.safetensors").write_bytes(b"partial")
    train(load_config(path), resume=True)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]


def test_leftovers_are_removed_when_a_run_starts(tmp_path, synth):
    path = _config(tmp_path, synth / "images", "fresh", run={"max_steps": 1}, distill={"enabled": False})
    out = tmp_path / "fresh"
    out.mkdir()
    (out / ".config.yaml.zz.tmp").write_text("x")
    (out / ".best.tmp-1").mkdir()
    train(load_config(path))
    assert not (out / ".config.yaml.zz.tmp").exists() and not (out / ".best.tmp-1").exists()


def test_a_torn_last_log_line_is_dropped_with_a_warning(interrupted, capsys):
    path, out = interrupted
    log = out / "log.jsonl"
    whole = _log(out)
    with open(log, "a") as f:
        f.write('{"kind": "train", "step": 2, "lo')
    capsys.readouterr()
    train(load_config(path), resume=True)
    err = capsys.readouterr().err
    assert f"{log}: dropped a torn last line" in err
    records = _log(out)
    assert records[: len(whole)] == whole and records[-1]["kind"] == "done"
    log.write_text('{"kind": "train"\n{"kind": "val", "step": 1}\n')  # damage elsewhere is not guessed at
    from tokenflow.errors import FileError
    from tokenflow.train.runfolder import read_log

    with pytest.raises(FileError, match="line 1"):
        read_log(log)


# -- smaller defects ----------------------------------------------------------------------------
def test_every_file_of_a_run_gets_the_usual_permissions(tmp_path, synth):
    path = _config(tmp_path, synth / "images", "perm", run={"max_steps": 1}, distill={"enabled": False})
    train(load_config(path))
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.relative_to(tmp_path / "perm").as_posix(): p.stat().st_mode & 0o777
             for p in (tmp_path / "perm").rglob("*") if p.is_file() and p.name != LOCK_FILE}
    assert "last.safetensors" in modes and "best/model.safetensors" in modes
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)  # not mkstemp's 0600


def test_progress_without_a_terminal_is_plain_lines(tmp_path, synth, monkeypatch, capsys):
    import tokenflow.train.trainer as trainer

    monkeypatch.setattr(trainer, "PLAIN_PROGRESS_S", 0.0)
    path = _config(tmp_path, synth / "images", "plain", run={"max_steps": 3, "progress": True},
                   distill={"enabled": False})
    train(load_config(path))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("train: step")]
    assert [ln.split()[2] for ln in lines] == ["1/3", "2/3", "3/3"]
    assert all(" loss " in ln and " s/step " in ln and " ETA " in ln for ln in lines)
    assert "\r" not in "".join(lines)


def test_an_empty_test_split_stops_before_training(tmp_path):
    from tokenflow.data.synthetic import make_synthetic

    make_synthetic(tmp_path / "d", images=(8, 4, 0), videos=(0, 0, 0), image_size=16, seed=0)
    path = _config(tmp_path, tmp_path / "d" / "images", "r", data={"test_split": "test"})
    with pytest.raises(ValueError, match="no images in split 'test'"):
        train(load_config(path))
    assert not (tmp_path / "r" / "last.safetensors").exists() and not (tmp_path / "r" / "log.jsonl").exists()
