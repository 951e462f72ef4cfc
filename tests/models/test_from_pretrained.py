"""``RetrievalModel.from_pretrained`` is the one scoring path (``load_scoring`` + ``from_scoring``):
the same plan, learned plan weights, hyperparameters, fusion weights, logit scale and bias, and so
the same scores, for a trained folder; and a saved plan that needs the backbone's size gets it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2, "embed_dim": 16}


@pytest.fixture(scope="module")
def wti_dir(synth, tmp_path_factory) -> Path:
    """``best`` of a tiny wti model trained briefly (sigmoid loss: a logit bias too; a large lr_new
    so the plan weights move; fusion weights 0.5, 2)."""
    from tokenflow.train import load_config, train

    out = tmp_path_factory.mktemp("wti-run")
    cfg = {"data": {"dataset": "flickr30k", "root": str(synth / "images"), "test_split": None},
           "model": {"backbone": "tiny", "aligner": "wti", "tiny": TINY, "w_global": 0.5, "w_fine": 2.0},
           "loss": {"kind": "sigmoid"},
           "optim": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "lr_new": 0.5, "warmup": 0},
           "run": {"out": str(out), "seed": 0, "progress": False, "log_every": 100}}
    train(load_config(None, data=cfg))
    return out / "best"


def _scores(model, split) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenflow.eval.evaluate import encode_split, similarity

    enc = encode_split(model.backbone.eval(), split, batch_size=4)
    return similarity(enc.vis, enc.txt, model.aligner, w_global=model.w_global, w_fine=model.w_fine)


def test_a_trained_wti_folder_gives_the_scoring_paths_model_and_scores(synth, wti_dir):
    from tokenflow.data import load_split
    from tokenflow.models import RetrievalModel
    from tokenflow.models.scoring import load_scoring

    loaded = RetrievalModel.from_pretrained(wti_dir)
    scored = RetrievalModel.from_scoring(load_scoring(wti_dir))
    head = loaded.head_config()
    assert head == scored.head_config()
    assert (head["aligner"], head["w_global"], head["w_fine"], "logit_bias" in head) == ("wti", 0.5, 2.0, True)
    a, b = loaded.state_dict(), scored.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    split = load_split("flickr30k", synth / "images", "val")
    for x, y in zip(_scores(loaded, split), _scores(scored, split), strict=True):
        assert torch.equal(x, y)


def test_a_saved_plan_whose_hparams_leave_out_dim_gets_the_backbones(monkeypatch, model_dir, tmp_path):
    """A plugin plan with learned heads whose ``hparams()`` does not report ``dim``: the scoring
    path builds it for the backbone's embedding size (from_pretrained used to build it without)."""
    from tokenflow.align import registry
    from tokenflow.align.wti import WeightedTokenInteraction
    from tokenflow.models import RetrievalModel, load_backbone
    from tokenflow.models.scoring import load_scoring

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # the plugin leaves with the test

    @registry.register_aligner("test-wti-without-dim")
    class NoDim(WeightedTokenInteraction):
        def hparams(self) -> dict:
            return {"layers": self.layers}

    backbone = load_backbone(model_dir)
    torch.manual_seed(3)
    RetrievalModel(backbone, NoDim(dim=backbone.embed_dim), w_global=0.5, w_fine=2.0).save_pretrained(tmp_path / "m")
    loaded = RetrievalModel.from_pretrained(tmp_path / "m")
    scored = RetrievalModel.from_scoring(load_scoring(tmp_path / "m"))
    assert loaded.aligner.dim == backbone.embed_dim
    a, b = loaded.state_dict(), scored.state_dict()
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
