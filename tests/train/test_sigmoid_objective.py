"""``loss.kind: sigmoid`` in training: the batch loss against a per-pair sum, its starting values,
its config checks, DDP with the ring on two gloo processes, and a short run that saves the bias."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch

from tests.losses.naive import naive_sigmoid
from tests.train.helpers import _batch, _config, _log, _model, _pair_scores
from tokenflow.models.retrieval import RetrievalModel
from tokenflow.train import ConfigError, Objective, load_config, train
from tokenflow.train.objective import initial_logits


@pytest.mark.parametrize("aligner", ["tokenflow", "max-avg", None])
def test_batch_loss_is_the_per_pair_sum(aligner):
    model = _model(aligner, logit_bias=-2.0)
    items = [0, 1, 2, 0, 3]  # pairs 0 and 3 show one item: both are positives of each other
    batch = _batch(model, items)
    out = Objective(model, loss="sigmoid")(batch)
    vis, txt = model.encode_visual(batch.pixels), model.encode_text(batch.ids, batch.text_mask)
    g, fv, ft = _pair_scores(model, vis, txt)
    t, b = float(model.scale().detach()), float(model.logit_bias.detach())
    want_g = naive_sigmoid(g, t, b, items, items)
    assert out.stats["loss_global"] == pytest.approx(want_g, rel=1e-9)
    want = 0.7 * want_g
    if aligner is not None:
        want_f = (naive_sigmoid(fv, t, b, items, items) + naive_sigmoid(ft, t, b, items, items)) / 2
        assert out.stats["loss_fine"] == pytest.approx(want_f, rel=1e-9)
        want += 1.3 * want_f
    else:
        assert "loss_fine" not in out.stats
    assert float(out.loss.detach()) == pytest.approx(want, rel=1e-9)
    out.loss.backward()
    assert model.logit_bias.grad is not None and model.logit_scale.grad is not None


def test_starting_temperature_and_bias():
    tiny = _model("max-avg", logit_bias=-2.0).backbone
    assert initial_logits("infonce", tiny) == (None, None)
    assert initial_logits("infonce", tiny, 50.0) == (50.0, None)
    assert initial_logits("sigmoid", tiny) == (10.0, -10.0)  # the paper's t' = log 10, b = -10
    assert initial_logits("sigmoid", tiny, 20.0, -5.0) == (20.0, -5.0)

    class SoftmaxTrained:  # a CLIP: its softmax temperature does not carry over to the sigmoid loss
        initial_logit_scale = 100.0

    class SigmoidTrained:  # a SigLIP: its own pair
        initial_logit_scale, initial_logit_bias = 117.0, -12.5

    assert initial_logits("sigmoid", SoftmaxTrained()) == (10.0, -10.0)
    assert initial_logits("sigmoid", SigmoidTrained()) == (117.0, -12.5)
    assert initial_logits("sigmoid", SigmoidTrained(), None, 0.0) == (117.0, 0.0)
    model = RetrievalModel(tiny, None, logit_scale=10.0, logit_bias=-10.0)
    assert float(model.scale().detach()) == pytest.approx(10.0) and float(model.logit_bias.detach()) == -10.0
    assert any(p is model.logit_bias for p in model.new_parameters())
    assert "logit_bias" not in RetrievalModel(tiny, None).head_config()


def test_a_siglip_backbone_keeps_its_own_scale_above_the_cap(tmp_path):
    """A SigLIP checkpoint's t = exp(t') is above CLIP's cap of 100: a sigmoid run starts at the
    folder's own (t, b), its cap rises to t (clamping keeps it), and the saved head records it."""
    pytest.importorskip("transformers")
    from tests.models.conftest import save_tiny_siglip
    from tokenflow.train import build_model

    folder = save_tiny_siglip(tmp_path / "siglip", "siglip", logit_scale=math.log(115.0), logit_bias=-12.5)
    base = {"data": {"dataset": "flickr30k", "root": str(tmp_path), "max_words": 16},
            "model": {"backbone": str(folder), "aligner": "max-avg"}, "run": {"out": str(tmp_path / "o")}}
    model = build_model(load_config(None, ["loss.kind=sigmoid"], data=base), None)
    assert float(model.scale().detach()) == pytest.approx(115.0, rel=1e-5)
    assert float(model.logit_bias.detach()) == pytest.approx(-12.5)
    assert model.max_logit_scale == pytest.approx(115.0, rel=1e-5)
    model.clamp_logit_scale()  # what every training step does
    assert float(model.scale().detach()) == pytest.approx(115.0, rel=1e-5)
    model.save_pretrained(tmp_path / "saved")
    head = json.loads((tmp_path / "saved" / "tokenflow.json").read_text())
    assert head["max_logit_scale"] == pytest.approx(115.0, rel=1e-5)
    back = RetrievalModel.from_pretrained(tmp_path / "saved")
    assert float(back.scale().detach()) == pytest.approx(115.0, rel=1e-5)
    # a lower cap given by the user still rises to the starting scale; InfoNCE keeps CLIP's cap
    capped = build_model(load_config(None, ["loss.kind=sigmoid", "model.max_logit_scale=50"], data=base), None)
    assert float(capped.scale().detach()) == pytest.approx(115.0, rel=1e-5)
    clip_like = build_model(load_config(None, [], data=base), None)
    assert float(clip_like.scale().detach()) == pytest.approx(100.0) and clip_like.max_logit_scale == 100.0


def test_objective_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="logit_bias"):
        Objective(RetrievalModel(_model("max-avg", logit_bias=-2.0).backbone, None), loss="sigmoid")
    with pytest.raises(ValueError, match="'infonce' or 'sigmoid'"):
        Objective(_model("max-avg", logit_bias=-2.0), loss="hinge")
    model = _model("max-avg", logit_bias=-2.0)
    with pytest.raises(ValueError, match="no teacher"):
        Objective(model, loss="sigmoid")(_batch(model, [0, 1]), teacher=model)


def test_config_keys(tmp_path):
    base = {"data": {"dataset": "flickr30k", "root": str(tmp_path)}, "model": {"backbone": "tiny"},
            "run": {"out": str(tmp_path / "o")}}
    assert load_config(None, data=base).loss.kind == "infonce"
    cfg = load_config(None, ["loss.kind=sigmoid", "loss.bias=-5"], data=base)
    assert cfg.loss.kind == "sigmoid" and cfg.loss.bias == -5.0
    with pytest.raises(ConfigError, match=r"loss.kind: Input should be 'infonce' or 'sigmoid'"):
        load_config(None, ["loss.kind=hinge"], data=base)
    with pytest.raises(ConfigError, match="distill.enabled must be false"):
        load_config(None, ["loss.kind=sigmoid", "distill.enabled=true"], data=base)
    with pytest.raises(ConfigError, match="loss.bias is the sigmoid loss's"):
        load_config(None, ["loss.bias=-5"], data=base)
    with pytest.raises(ConfigError, match="loss.bias: must be a finite number"):
        load_config(None, ["loss.kind=sigmoid", "loss.bias=.nan"], data=base)
    with pytest.raises(ConfigError, match="loss.margin: unknown key"):
        load_config(None, ["loss.margin=1"], data=base)


# -- DDP on two gloo processes ----------------------------------------------------------------------
ITEMS, SHARES = [0, 1, 2, 3, 4, 0, 1, 2], [3, 5]


def _setup():
    model = _model("max-avg", logit_bias=-2.0).float()
    batch = _batch(model, ITEMS, seed=5)
    batch.pixels = batch.pixels.float()
    return model, Objective(model, loss="sigmoid"), batch


def _ddp_worker(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist
    from torch import nn

    from tokenflow.distributed import DistInfo

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, objective, batch = _setup()
        rows = slice(sum(SHARES[:rank]), sum(SHARES[: rank + 1]))
        mine = type(batch)(batch.pixels[rows], None, batch.ids[rows], batch.text_mask[rows], batch.item_ids[rows])
        ddp = nn.parallel.DistributedDataParallel(objective)  # kept alive: its hooks average the gradients
        out = ddp(mine, DistInfo(rank, 2, rank))
        out.loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"grads": grads, "stats": out.stats}, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_with_the_ring_give_the_single_process_gradients(tmp_path):
    """DDP + the ring (uneven shares 3 + 5, positives on both processes) = the gradient of the
    sigmoid loss of the whole batch on one process, every parameter, the bias included."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "rank0.pt")
    model, objective, batch = _setup()
    out = objective(batch)
    out.loss.backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got["grads"].keys() == want.keys() and "logit_bias" in want
    for n in want:
        torch.testing.assert_close(got["grads"][n], want[n], rtol=1e-4, atol=1e-6, msg=n)
    # every process's logged loss is its share of the global mean
    other = torch.load(tmp_path / "rank1.pt")
    assert (got["stats"]["loss"] + other["stats"]["loss"]) / 2 == pytest.approx(out.stats["loss"], rel=1e-5)


def test_a_short_run_learns_the_bias_and_saves_it(tmp_path, synth):
    cfg = load_config(_config(tmp_path, synth / "images", "sig", distill={"enabled": False},
                              loss={"kind": "sigmoid"}, model={"aligner": "max-avg"}, run={"max_steps": 2}))
    train(cfg)
    log = [r for r in _log(tmp_path / "sig") if r["kind"] == "train"]
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    assert log[0]["logit_bias"] != -10.0  # learned: the first step moved it (lr_new 1e-2)
    head = json.loads((tmp_path / "sig" / "best" / "tokenflow.json").read_text())
    assert head["logit_bias"] == pytest.approx(log[-1]["logit_bias"])
    back = RetrievalModel.from_pretrained(tmp_path / "sig" / "best")
    assert float(back.logit_bias.detach()) == pytest.approx(head["logit_bias"])
