"""CUDA twins of CPU tests that had none (issue 30): a training step and a short run, evaluation and
explain give on the GPU what they give on the CPU. The plans' and set heads' twins are in
tests/align (test_cuda_matches_cpu). All skip without CUDA; ``TOKENFLOW_TWIN_DEVICE=cpu`` runs
them against a second copy on the CPU instead, which checks the tests themselves on any machine."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from tests.train.helpers import _batch, _config, _log, _model, grad_setup

DEVICE = os.environ.get("TOKENFLOW_TWIN_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                                   reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def no_tf32():
    """fp32 on the GPU as on the CPU: no TF32 in convolutions (cuDNN's default) or matrix products."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _on(batch, device):
    return type(batch)(*(None if getattr(batch, f) is None else getattr(batch, f).to(device)
                         for f in ("pixels", "frame_mask", "ids", "text_mask", "item_ids")))


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["tokenflow float64", "mpa + CS float32"])
def test_cuda_training_step_matches_cpu(kind):
    """Loss and every gradient of one objective step (tokenflow in float64; the set heads of mpa
    with their losses and the CS term in float32), CPU against the device."""
    from tokenflow.train import Objective

    if kind.startswith("tokenflow"):
        model = _model("tokenflow")
        objective, batch, tol = Objective(model), _batch(model, [0, 1, 2, 3, 4, 0]), {"rtol": 1e-9, "atol": 1e-11}
    else:
        model, objective, batch = grad_setup("mpa-cs")
        tol = {"rtol": 1e-4, "atol": 1e-5}
    other = copy.deepcopy(model).to(DEVICE)
    cpu = objective(batch)
    cpu.loss.backward()
    dev = type(objective)(other, cs=objective.cs)(_on(batch, DEVICE))
    dev.loss.backward()
    torch.testing.assert_close(dev.loss.detach().cpu(), cpu.loss.detach(), **tol)
    got, want = _grads(other), _grads(model)
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], **tol, msg=lambda m, name=name: f"{name}: {m}")


def test_cuda_training_run_matches_cpu(tmp_path, synth):
    """Two optimizer steps of `tokenflow train` (tiny backbone, distillation) on the device equal the
    CPU's in fp32; with bf16 autocast (amp auto on CUDA) the losses stay finite and close."""
    from tokenflow.train import load_config, train

    def run(out: str, device: str, amp: str) -> list[float]:
        cfg = load_config(_config(tmp_path, synth / "images", out), [
            f"run.device={device}", f"optim.amp={amp}", "run.deterministic=false", "run.max_steps=2"])
        train(cfg)
        return [r["loss"] for r in _log(tmp_path / out) if r.get("kind") == "train"]

    cpu = run("cpu", "cpu", "none")
    dev = run("dev", DEVICE, "none")
    assert len(cpu) == 2 and dev == pytest.approx(cpu, rel=1e-4)
    low = run("bf16", DEVICE, "bf16")
    assert all(math.isfinite(x) for x in low) and low == pytest.approx(cpu, rel=5e-2)


def test_cuda_evaluation_matches_cpu(synth, model_dir):
    """Encoding and fused scoring of the test split, CPU against the device; the report runs."""
    from tokenflow import get_aligner
    from tokenflow.data import load_split
    from tokenflow.eval.evaluate import encode_split, evaluate, similarity
    from tokenflow.models import load_backbone

    split = load_split("flickr30k", synth / "images", "test")
    aligner = get_aligner("tokenflow")
    backbone = load_backbone(model_dir)
    enc = encode_split(backbone, split, batch_size=4)
    want = similarity(enc.vis, enc.txt, aligner)
    backbone.to(DEVICE)
    enc_dev = encode_split(backbone, split, batch_size=4)
    got = similarity(enc_dev.vis, enc_dev.txt, aligner, device=DEVICE)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)
    report = evaluate(backbone, split, aligner, batch_size=4, device=DEVICE)
    assert report["evaluated"] == {"items": len(split), "texts": len(split.texts)}


def test_cuda_explain_matches_cpu(synth, model_dir):
    """explain's plan, similarities and scores, CPU against the device."""
    from tokenflow import get_aligner
    from tokenflow.data import load_split
    from tokenflow.models import load_backbone
    from tokenflow.models.retrieval import RetrievalModel
    from tokenflow.viz.explain import explain

    test = load_split("flickr30k", synth / "images", "test")
    model = RetrievalModel(load_backbone(model_dir), get_aligner("tokenflow"))
    want = explain(model, test.item_paths[0], test.texts[0])
    got = explain(copy.deepcopy(model).to(DEVICE), test.item_paths[0], test.texts[0])
    for field in ("d", "e", "c", "flow"):
        torch.testing.assert_close(getattr(got, field).cpu(), getattr(want, field), rtol=1e-4, atol=1e-5)
    assert got.score == pytest.approx(want.score, rel=1e-4, abs=1e-6)
    assert got.global_score == pytest.approx(want.global_score, rel=1e-4, abs=1e-6)
