"""Kill-and-resume at named points (the ``TOKENFLOW_TEST_KILL_AT`` hook of train/runfolder.py):
inside ``best/``'s swap, inside a log line, inside a checkpoint write, before the end; and a loop
of kills in a row. Every killed run, resumed, ends bit-identical to a run never interrupted."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.helpers import ROOT, _config, _env, _log, _tensors
from tokenflow.train.checkpoint import read_checkpoint_info
from tokenflow.train.runfolder import KILL_POINTS
from tokenflow.utils import LOCK_FILE

pytestmark = pytest.mark.slow

#: (kill spec, what it interrupts). The run: 30 steps, 5 per epoch, a checkpoint every step;
#: validation improves at steps 5 and 10, so the second swap of best/ (step 10) has an old copy.
POINTS = [
    ("best-copy:2", "the new best/ written under its temporary name, no journal yet"),
    ("best-journal:2", "the journal written, the old best/ still in place"),
    ("best-aside:1", "the old best/ moved aside, the new one not yet in place"),
    ("best-in:2", "the new best/ in place, the journal not yet removed"),
    ("best-unjournaled:2", "the journal removed, the old copy not yet deleted"),
    ("val-best:2", "best/ swapped, val_best.json and the checkpoint not yet written"),
    ("log-line:6", "half of the first validation record written"),
    ("log-line:9", "half of a train record written"),
    ("checkpoint:4", "a checkpoint written under its temporary name, not renamed"),
    ("done:1", "the done record written, the checkpoint not yet marked finished"),
]
KILLS = 20  # the kill loop's kills in a row


def _drive(cfg: Path, plan: dict[str, list[str | None]], tmp: Path) -> dict[str, list[int]]:
    """Each folder's runs, in order, through tests/train/_kill_runs.py; their exit statuses."""
    (tmp / "plan.json").write_text(json.dumps(plan))
    subprocess.run([sys.executable, "-m", "tests.train._kill_runs", str(cfg), str(tmp / "plan.json"),
                    str(tmp / "codes.json")], check=True, env=_env(), cwd=ROOT, timeout=600)
    return json.loads((tmp / "codes.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synth):
    """(config, the uninterrupted run's folder, {spec: (folder, exit statuses)})."""
    tmp = tmp_path_factory.mktemp("kills")
    cfg = _config(tmp, synth / "images", "whole", optim={"epochs": 6}, run={"save_every": 1},
                  data={"test_split": "test"})
    cuts = [spec for spec, _ in POINTS]
    plan = {str(tmp / "whole"): [None], **{str(tmp / f"cut-{spec.replace(':', '-')}"): [spec, None] for spec in cuts}}
    codes = _drive(cfg, plan, tmp)
    return cfg, tmp / "whole", {spec: (Path(out), codes[out]) for spec, out in zip(["whole", *cuts], plan, strict=True)}


def _records(out: Path) -> list[dict]:
    """The log without its timings."""
    return [{k: v for k, v in r.items() if k not in ("pairs_per_s", "seconds")} for r in _log(out)]


def _report(path: Path) -> dict:
    """A report without its date, its timings, and what names the run folder or the command line."""
    report = json.loads(path.read_text())
    for key in ("command", "date", "timings"):
        report.pop(key, None)
    report.get("checkpoint", {}).pop("folder", None)
    return report


def assert_same_run(whole: Path, cut: Path) -> None:
    """Weights, optimizer, teacher, queues, RNG, state, best/, reports and log: all the same."""
    a, b = _tensors(whole / "last.safetensors"), _tensors(cut / "last.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"the resumed run differs in {different[:5]}"
    assert read_checkpoint_info(cut / "last.safetensors")["state"] == \
        read_checkpoint_info(whole / "last.safetensors")["state"]
    best = sorted(p.name for p in (whole / "best").iterdir())
    assert sorted(p.name for p in (cut / "best").iterdir()) == best
    for name in best:
        assert (cut / "best" / name).read_bytes() == (whole / "best" / name).read_bytes(), f"best/{name}"
    assert _report(cut / "val_best.json") == _report(whole / "val_best.json")
    assert _report(cut / "test.json") == _report(whole / "test.json")
    assert _records(cut) == _records(whole)
    assert [r["kind"] for r in _log(cut)].count("done") == 1
    assert sorted(p.name for p in cut.iterdir() if p.name.startswith(".")) == [LOCK_FILE]  # no leftovers


@pytest.mark.parametrize(("spec", "where"), POINTS, ids=[s for s, _ in POINTS])
def test_a_run_killed_at_a_point_resumes_to_the_same_run(runs, spec, where):
    _, whole, cuts = runs
    assert cuts["whole"][1] == [0]
    cut, codes = cuts[spec]
    assert codes == [-9, 0], f"killed at {spec} ({where}): exit statuses {codes}"
    assert_same_run(whole, cut)


def test_a_run_killed_many_times_in_a_row_ends_as_if_never_killed(runs, tmp_path):
    """KILLS kills at seeded random points, each followed by ``--resume`` (killed again), then a
    last resume to the end. Each kill spec names a random point and a step to die at anyway, so
    that every run is killed."""
    cfg, whole, _ = runs
    rng = random.Random(15)
    points = [p for p in KILL_POINTS if p != "step"]
    specs = [f"{rng.choice(points)}:{rng.randint(1, 3)},step:{rng.randint(1, 3)}" for _ in range(KILLS)]
    cut = tmp_path / "loop"
    codes = _drive(cfg, {str(cut): [*specs, None]}, tmp_path)[str(cut)]
    assert codes == [-9] * KILLS + [0], list(zip(specs, codes, strict=False))
    assert_same_run(whole, cut)
