"""The Trainer's process-wide settings: ``run.deterministic`` holds for the run only."""

from __future__ import annotations

import os

import pytest
import torch

from tests.train.helpers import _config
from tokenflow.train import Trainer, load_config, train


def _settings() -> tuple[bool, bool, str | None]:
    return (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


@pytest.fixture
def restore_settings():
    before = _settings()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    if before[2] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[2]


@pytest.mark.parametrize("before", [(False, False, None), (True, True, ":16:8")])
def test_a_deterministic_run_leaves_the_process_settings_as_they_were(tmp_path, synth, monkeypatch,
                                                                       restore_settings, before):
    """A run with ``run.deterministic=true`` is deterministic while it runs; afterwards (also
    after an error) the process has its earlier settings back, warn_only and cuBLAS's workspace
    included, so later runs in the process (ablations, tests) do not inherit them."""
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    if before[2] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = before[2]
    during = []
    step = Trainer.step

    def spy(self, batches):
        during.append(_settings())
        return step(self, batches)

    monkeypatch.setattr(Trainer, "step", spy)
    cfg = load_config(_config(tmp_path, synth / "images", "ok", run={"max_steps": 2}))
    assert cfg.run.deterministic
    train(cfg)
    assert during == [(True, False, before[2] or ":4096:8")] * 2
    assert _settings() == before

    def boom(self, epoch):
        during.append(_settings())
        raise RuntimeError("validation failed")

    monkeypatch.setattr(Trainer, "validate", boom)
    with pytest.raises(RuntimeError, match="validation failed"):
        train(load_config(_config(tmp_path, synth / "images", "raises", run={"max_steps": 1})))
    assert during[-1] == (True, False, before[2] or ":4096:8")
    assert _settings() == before
