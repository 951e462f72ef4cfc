"""Training end to end: learning on synthetic data, torchrun equivalence, kill-and-resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.train.helpers import ROOT, _config, _env, _log, _tensors, _torchrun, grad_setup
from tokenflow.cli import main
from tokenflow.data.synthetic import make_synthetic
from tokenflow.train import ConfigError, load_config, save_checkpoint, train
from tokenflow.train.checkpoint import load_checkpoint


# -- learning -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def learn_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("learn")
    make_synthetic(out, images=(400, 40, 60), videos=(0, 0, 0), image_size=32, seed=1)
    return out / "images"


@pytest.mark.slow
@pytest.mark.parametrize("aligner", ["tokenflow", None])
def test_training_learns_and_picks_the_checkpoint_on_validation(tmp_path, learn_data, aligner, capsys):
    cfg = ROOT / "configs" / "synthetic-images.yaml"
    out = tmp_path / "run"
    code = main(["train", "--config", str(cfg), f"data.root={learn_data}", f"run.out={out}", "optim.epochs=20",
                 f"model.aligner={'null' if aligner is None else aligner}", "run.progress=false",
                 *(["model.hparams={}"] if aligner is None else [])])
    assert code == 0
    log = _log(out)
    losses = [r["loss"] for r in log if r["kind"] == "train"]
    assert len(losses) >= 10 and sum(losses[-3:]) / 3 < 0.6 * losses[0]
    vals = [r for r in log if r["kind"] == "val"]
    assert len(vals) == 20  # every epoch on the validation split
    best = max(vals, key=lambda r: r["rsum"])
    test = json.loads((out / "test.json").read_text())
    assert test["checkpoint"]["step"] == best["step"] and test["checkpoint"]["chosen_on"].startswith("val")
    assert test["split"]["name"].endswith("test") and test["evaluated"]["items"] == 60
    chance = 100 / 60
    assert test["metrics"]["t2v"]["R@1"] > 5 * chance and test["metrics"]["v2t"]["R@1"] > 5 * chance
    head = json.loads((out / "best" / "tokenflow.json").read_text())
    assert head["aligner"] == aligner
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["aligner"] == aligner
    # the saved model reads back and scores the test split as the report says
    capsys.readouterr()
    assert main(["evaluate", "--dataset", "flickr30k", "--root", str(learn_data), "--model", str(out / "best"),
                 "--out", str(tmp_path / "again.json"), "--quiet"]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["metrics"] == test["metrics"]


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tmp_path, synth):
    cfg = load_config(_config(tmp_path, synth / "images", "r", run={"max_steps": 1}))
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(cfg, resume=True)
    train(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)
    too_big = load_config(None, [f"run.out={tmp_path / 'big'}", "optim.batch_size=64"],
                          data=yaml.safe_load(cfg.to_yaml()))
    with pytest.raises(ConfigError, match="optim.batch_size"):
        train(too_big)


# -- checkpoints --------------------------------------------------------------------------------
def test_checkpoint_round_trip_and_a_failed_save_keeps_the_previous_one(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model=model, optimizer=opt, state={"step": 1})
    after_save = torch.rand(3)  # the RNG state is part of the checkpoint
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    import safetensors.torch as st

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", broken)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model=model, optimizer=opt, state={"step": 2})
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # no temp file left behind

    fresh = torch.nn.Linear(4, 3)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state = load_checkpoint(path, model=fresh, optimizer=fresh_opt)
    assert state == {"step": 1}
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in weights.items())
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(3), after_save)

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_checkpoint(path, model=fresh, optimizer=fresh_opt)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, synth):
    """SIGKILL a real training process mid-run, resume it, and end bit-identical to a run that
    was never interrupted (deterministic CPU; teacher, queues, optimizer and RNG included)."""
    cfg = _config(tmp_path, synth / "images", "whole", optim={"epochs": 6}, run={"save_every": 1})
    cmd = [sys.executable, "-m", "tokenflow.cli", "train", "--config", str(cfg)]
    subprocess.run(cmd, check=True, env=_env(), capture_output=True)
    whole = tmp_path / "whole"
    n = max(r["step"] for r in _log(whole))

    cut = tmp_path / "cut"
    proc = subprocess.Popen([*cmd, f"run.out={cut}"], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            log = cut / "log.jsonl"
            if log.is_file() and any(r.get("step", 0) >= 8 for r in _log(cut) if r.get("kind") == "train"):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(r["step"] for r in _log(cut))
    assert 8 <= killed_at < n, "the kill came too late to test a resume"
    subprocess.run([*cmd, f"run.out={cut}", "--resume"], check=True, env=_env(), capture_output=True)

    a, b = _tensors(whole / "last.safetensors"), _tensors(cut / "last.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different[:5]}"
    def losses(out):  # the resumed run's log holds each step once, with the same numbers
        return [{k: v for k, v in r.items() if k != "pairs_per_s"} for r in _log(out) if r["kind"] == "train"]

    assert losses(cut) == losses(whole)
    assert _tensors(whole / "best" / "model.safetensors").keys() == _tensors(cut / "best" / "model.safetensors").keys()


# -- torchrun -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tokenflow", "mpa-cs"])
def test_two_processes_give_the_single_process_gradients(tmp_path, kind):
    """Gathering with gradients + DDP averaging = the gradient of the loss over the whole batch
    (the scale matters: Adam would hide a factor of two in the weights). ``mpa-cs`` adds the set
    losses and the CS term, which every process computes on the gathered batch."""
    _torchrun([str(ROOT / "tests" / "train" / "_ddp_grads.py"), str(tmp_path / "g.safetensors"), kind], tmp_path)
    model, objective, batch = grad_setup(kind)
    out = objective(batch)
    out.loss.backward()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "g.safetensors"), "pt") as f:
        grads = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[n], p.grad, rtol=1e-4, atol=1e-6), n


@pytest.mark.slow
@pytest.mark.parametrize("broken", [False, True])
def test_torchrun_two_ranks_equal_one_process_with_the_whole_batch(tmp_path, synth, broken):
    """One `tokenflow train` under torchrun (2 x 4 pairs, or 2 x 2 pairs x 2 accumulation steps,
    gloo) against one process with the whole batch: same logged losses, same weights, teacher and
    queues after 3 steps. ``broken``: an unreadable
    image is skipped, so the two processes hold different numbers of pairs in some steps."""
    root = synth / "images"
    if broken:
        import shutil

        from tokenflow.data import load_split

        root = tmp_path / "data"
        shutil.copytree(synth / "images", root)
        load_split("flickr30k", root, "train").item_paths[0].write_bytes(b"not a jpeg")
    # accumulation over 2 micro-batches exercises DDP's no_sync path too
    cfg = _config(tmp_path, root, "one", run={"max_steps": 3}, data={"on_error": "skip"},
                  optim={"accum": 1 if broken else 2, "batch_size": 8 if broken else 4})
    subprocess.run([sys.executable, "-m", "tokenflow.cli", "train", "--config", str(cfg)], check=True, env=_env(),
                   capture_output=True)
    _torchrun(["-m", "tokenflow.cli", "train", "--config", str(cfg), f"run.out={tmp_path / 'two'}"], tmp_path)
    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    l1 = [r["loss"] for r in one if r["kind"] == "train"]
    l2 = [r["loss"] for r in two if r["kind"] == "train"]
    assert len(l1) == len(l2) == 3 and l1 == pytest.approx(l2, rel=1e-5)
    skipped = [[f["path"] for r in log if r["kind"] == "skipped" for f in r["files"]] for log in (one, two)]
    assert skipped[0] == skipped[1] and bool(skipped[0]) == broken  # every rank's skips are logged
    a, b = _tensors(tmp_path / "one" / "last.safetensors"), _tensors(tmp_path / "two" / "last.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=2e-5), k
        else:
            assert torch.equal(a[k], b[k]) or k.startswith("rng."), k


def test_bf16_autocast_step_matches_fp32(tmp_path, synth):
    losses = {}
    for amp in ("none", "bf16"):
        cfg = load_config(_config(tmp_path, synth / "images", amp, optim={"amp": amp}, run={"max_steps": 2}))
        train(cfg)
        losses[amp] = [r["loss"] for r in _log(tmp_path / amp) if r["kind"] == "train"]
    assert losses["bf16"] == pytest.approx(losses["none"], rel=0.05)


def test_unreadable_training_image_fails_or_is_skipped_and_counted(tmp_path, synth):
    import shutil

    from tokenflow.data import MediaError, load_split

    root = tmp_path / "data"
    shutil.copytree(synth / "images", root)
    bad = load_split("flickr30k", root, "train").item_paths[0]
    bad.write_bytes(b"not a jpeg")
    cfg = load_config(_config(tmp_path, root, "fail", run={"max_steps": 5}, distill={"enabled": False}))
    with pytest.raises(MediaError, match=bad.name):
        train(cfg)
    cfg = load_config(_config(tmp_path, root, "skip", run={"max_steps": 5}, distill={"enabled": False},
                              data={"on_error": "skip"}))
    summary = train(cfg)
    skipped = [f for r in _log(tmp_path / "skip") if r["kind"] == "skipped" for f in r["files"]]
    assert len(skipped) == 5  # one epoch: each of its 5 captions once ...
    assert summary["skipped_files"] == 1  # ... but one file
    assert {f["path"] for f in skipped} == {str(bad)} and "cannot decode" in skipped[0]["reason"]


@pytest.mark.parametrize("aligner", ["mpa", "dive", "omit"])
def test_seed_methods_train_with_the_cs_term_and_unpaired_extras(tmp_path, synth, aligner):
    """A few steps of each seed method with CS-Aligner's terms on; a broken unpaired file is
    counted; the saved model reads back with its learned set heads."""
    import shutil

    from tokenflow.data.synthetic import make_unpaired
    from tokenflow.models.retrieval import RetrievalModel

    extra = make_unpaired(tmp_path, 6, "images", 32, seed=1)
    (extra / "images" / "zz-broken.jpg").write_bytes(b"not a jpeg")
    root = tmp_path / "data"
    shutil.copytree(synth / "images", root)
    cfg = load_config(_config(tmp_path, root, aligner, run={"max_steps": 3}, distill={"enabled": False},
                              model={"aligner": aligner, "hparams": {"heads": 2} if aligner != "omit" else {}},
                              data={"on_error": "skip", "val_split": "val"},
                              cs={"weight": 0.1, "token_weight": 0.05, "unpaired_media": str(extra / "images"),
                                  "unpaired_texts": str(extra / "captions.txt"), "unpaired_batch": 7}))
    summary = train(cfg)
    rows = [r for r in _log(tmp_path / aligner) if r["kind"] == "train"]
    assert len(rows) == 3 and all(r["loss_cs"] > 0 and r["loss_cs_tokens"] > 0 for r in rows)
    if aligner != "omit":
        assert all("loss_set_gd" in r and "loss_set_isd" in r for r in rows)
    skipped = [f for r in _log(tmp_path / aligner) if r["kind"] == "skipped" for f in r["files"]]
    assert len(skipped) == 3 and summary["skipped_files"] == 1 and "zz-broken.jpg" in skipped[0]["path"]
    model = RetrievalModel.from_pretrained(tmp_path / aligner / "best")
    assert model.aligner.name == aligner and model.aligner.hparams() == cfg.model.hparams | model.aligner.hparams()
    if aligner != "omit":
        assert model.aligner.dim == model.backbone.embed_dim
    if aligner == "mpa":  # evaluation with the exact (Hungarian) assignment keeps the learned set heads
        from tokenflow.cli import main
        from tokenflow.data import load_split
        from tokenflow.eval.evaluate import evaluate

        report = tmp_path / "exact.json"
        assert main(["evaluate", "--dataset", "flickr30k", "--root", str(root), "--split", "val", "--model",
                     str(tmp_path / aligner / "best"), "--hp", "exact=true", "--quiet", "--out", str(report)]) == 0
        got = json.loads(report.read_text())
        model.aligner.match.exact = True
        want = evaluate(model.backbone, load_split("flickr30k", root, "val"), model.aligner, w_global=model.w_global,
                        w_fine=model.w_fine)
        assert got["aligner"]["hparams"]["exact"] is True and got["metrics"] == want["metrics"]


def test_training_a_clip_folder_saves_a_model_that_reads_back(tmp_path, synth):
    """The Hugging Face path: fine-tune a (tiny, random) CLIPModel folder, save best/ with its
    tokenizer and image processor, and evaluate it again from the folder."""
    from tests.models.conftest import save_tiny_hf_clip
    from tokenflow.models import load_backbone

    (tmp_path / "clip").mkdir()
    clip = save_tiny_hf_clip(tmp_path / "clip")
    cfg = load_config(_config(tmp_path, synth / "images", "run", run={"max_steps": 2},
                              model={"backbone": str(clip)}, data={"test_split": "test"}))
    train(cfg)
    out = tmp_path / "run"
    assert type(load_backbone(out / "best")).__name__ == "HFCLIP"
    test = json.loads((out / "test.json").read_text())
    assert main(["evaluate", "--dataset", "flickr30k", "--root", str(synth / "images"), "--model",
                 str(out / "best"), "--out", str(tmp_path / "again.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["metrics"] == test["metrics"]
