"""TrainState is the checkpoint's ``state`` object, typed; the run log reads the kill hook once."""

from __future__ import annotations

import json

from tokenflow.train import TrainState
from tokenflow.train.runfolder import KILL_ENV
from tokenflow.train.runlog import RunLog


def test_train_state_writes_the_checkpoint_state_dict_of_before():
    s = TrainState()
    assert s.to_dict() == {"step": 0, "best": None, "best_step": None, "last_eval_step": None, "skipped": 0}
    s.step, s.best, s.best_step, s.last_eval_step = 10, 1.5, 5, 10
    s.skip({"b.jpg", "a.jpg"})
    s.skip({"a.jpg"})  # a broken file is met every epoch: counted once
    s.finished = True
    d = s.to_dict()
    assert d == {"step": 10, "best": 1.5, "best_step": 5, "last_eval_step": 10, "skipped": 2,
                 "skipped_paths": ["a.jpg", "b.jpg"], "finished": True}
    assert TrainState.from_dict(json.loads(json.dumps(d))) == s


def test_an_older_checkpoint_state_still_reads():
    # before skipped files were counted, and before finished runs were marked
    s = TrainState.from_dict({"step": 3, "best": 0.5, "best_step": 2, "last_eval_step": 2})
    assert (s.step, s.best, s.best_step, s.last_eval_step, s.skipped, s.finished) == (3, 0.5, 2, 2, 0, False)
    assert s.to_dict() == {"step": 3, "best": 0.5, "best_step": 2, "last_eval_step": 2, "skipped": 0}


def test_the_log_reads_the_kill_hook_once_when_it_opens(tmp_path, monkeypatch):
    monkeypatch.delenv(KILL_ENV, raising=False)
    log = RunLog(tmp_path / "log.jsonl", True, None)
    monkeypatch.setenv(KILL_ENV, "log-line:1")  # too late: this log writes whole lines
    log.write({"kind": "train", "step": 1})
    log.close()
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"kind": "train", "step": 1}
    assert log._append.__func__ is RunLog._append_whole
    armed = RunLog(tmp_path / "armed.jsonl", True, None)  # a test's kill: the torn write (not called here)
    assert armed._append.__func__ is RunLog._append_torn
