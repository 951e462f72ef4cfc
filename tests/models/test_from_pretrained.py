"""``RetrievalModel.from_pretrained`` (the one scoring path: ``load_scoring`` + ``from_scoring``) gives
back what a trained folder holds: its plan, learned plan weights, hyperparameters, fusion weights,
logit scale and bias, checked against the folder's own files, and so the scores the run validated
with; and a saved plan that needs the backbone's size gets it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "embed_dim": 16}


@pytest.fixture(scope="module")
def wti_dir(synth, tmp_path_factory) -> Path:
    """``best`` of a tiny wti model trained briefly (sigmoid loss: a logit bias too; a large lr_new
    so the plan weights move; fusion weights 0.5, 2)."""
    from tests.train.helpers import _config
    from tokenflow.train import load_config, train

    tmp = tmp_path_factory.mktemp("wti")
    train(load_config(_config(tmp, synth / "images", "run",
                              model={"aligner": "wti", "tiny": TINY, "w_global": 0.5, "w_fine": 2.0},
                              distill={"enabled": False}, loss={"kind": "sigmoid"},
                              optim={"batch_size": 4, "lr_new": 0.5},
                              run={"seed": 0, "deterministic": False, "log_every": 100})))
    return tmp / "run" / "best"


def _scores(model, split) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenflow.eval.evaluate import encode_split, similarity

    enc = encode_split(model.backbone.eval(), split, batch_size=4)
    return similarity(enc.vis, enc.txt, model.aligner, w_global=model.w_global, w_fine=model.w_fine)


def test_a_trained_wti_folder_loads_as_saved_and_scores_as_the_run_validated(synth, wti_dir):
    """Against what the run wrote: tokenflow.json, the weights in the two safetensors files, and
    val_best.json (the run's own validation of its in-memory best model); the scores against a
    model put together by hand from those files."""
    import json

    from safetensors.torch import load_file

    from tokenflow.align.wti import WeightedTokenInteraction
    from tokenflow.data import load_split
    from tokenflow.eval.evaluate import evaluate
    from tokenflow.models import RetrievalModel, load_backbone

    loaded = RetrievalModel.from_pretrained(wti_dir)
    saved = json.loads((wti_dir / "tokenflow.json").read_text())
    head = loaded.head_config()
    assert head == saved
    assert (head["aligner"], head["w_global"], head["w_fine"], "logit_bias" in head) == ("wti", 0.5, 2.0, True)
    backbone, plan = load_file(str(wti_dir / "model.safetensors")), load_file(str(wti_dir / "aligner.safetensors"))
    want = {**{f"backbone.{k}": v for k, v in backbone.items()}, **{f"aligner.{k}": v for k, v in plan.items()}}
    a = loaded.state_dict()
    assert a.keys() == {*want, "logit_scale", "logit_bias"} and all(torch.equal(a[k], want[k]) for k in want)
    split = load_split("flickr30k", synth / "images", "val")
    report = evaluate(loaded.backbone.eval(), split, loaded.aligner, w_global=loaded.w_global, w_fine=loaded.w_fine)
    assert report["metrics"] == json.loads((wti_dir.parent / "val_best.json").read_text())["metrics"]
    wti = WeightedTokenInteraction(**saved["hparams"])
    wti.load_state_dict(plan)
    by_hand = RetrievalModel(load_backbone(wti_dir), wti, w_global=saved["w_global"], w_fine=saved["w_fine"])
    for x, y in zip(_scores(loaded, split), _scores(by_hand, split), strict=True):
        assert torch.equal(x, y)


def test_a_saved_plan_whose_hparams_leave_out_dim_gets_the_backbones(monkeypatch, model_dir, tmp_path):
    """A plugin plan with learned heads whose ``hparams()`` does not report ``dim``: the scoring
    path builds it for the backbone's embedding size (from_pretrained used to build it without)."""
    from tokenflow.align import registry
    from tokenflow.align.wti import WeightedTokenInteraction
    from tokenflow.models import RetrievalModel, load_backbone

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the plugin leaves with the test

    @registry.register_aligner("test-wti-without-dim")
    class NoDim(WeightedTokenInteraction):
        def hparams(self) -> dict:
            return {"layers": self.layers}

    backbone = load_backbone(model_dir)
    torch.manual_seed(3)
    model = RetrievalModel(backbone, NoDim(dim=backbone.embed_dim), w_global=0.5, w_fine=2.0)
    model.save_pretrained(tmp_path / "m")
    loaded = RetrievalModel.from_pretrained(tmp_path / "m")
    assert loaded.aligner.dim == backbone.embed_dim
    a, b = loaded.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_plan_weights_that_do_not_fit_are_refused_not_reinitialised(wti_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from tokenflow.errors import FileError
    from tokenflow.models import RetrievalModel

    folder = Path(shutil.copytree(wti_dir, tmp_path / "best"))
    state = load_file(str(folder / "aligner.safetensors"))
    save_file({k: torch.cat([v, v]) for k, v in state.items()}, str(folder / "aligner.safetensors"))
    with pytest.raises(FileError, match=r"aligner\.safetensors: the plan weights do not fit plan 'wti'"):
        RetrievalModel.from_pretrained(folder)
