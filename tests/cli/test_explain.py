"""``tokenflow explain`` goes through the one scoring path and, as evaluate and search do, says
what it overrode of the trained folder."""

from __future__ import annotations

import pytest

from tokenflow.cli import main

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth):
    """A saved RetrievalModel trained (here: saved) with the tokenflow plan, w_global 0.5, w_fine 2."""
    from tests.helpers import save_tiny_model
    from tokenflow.data import load_split
    from tokenflow.models import TinyConfig

    texts = load_split("flickr30k", synth / "images", "test").texts
    folder = tmp_path_factory.mktemp("trained") / "best"
    cfg = TinyConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, embed_dim=16)
    return save_tiny_model(folder, texts, seed=0, w_global=0.5, w_fine=2.0, config=cfg)


def _explain(trained, synth, tmp_path, *extra: str) -> int:
    from tokenflow.data import load_split

    split = load_split("flickr30k", synth / "images", "test")
    return main(["explain", "--model", str(trained), "--media", str(split.item_paths[0]), "--caption",
                 split.texts[0], "--out", str(tmp_path / "e.png"), *extra])


def test_explain_names_what_it_overrode(trained, synth, tmp_path, capsys):
    assert _explain(trained, synth, tmp_path, "--aligner", "max-avg") == 0
    out, err = capsys.readouterr()
    assert "tokenflow explain: note: overrides the trained model's aligner 'tokenflow' -> 'max-avg'" in err
    assert "max-avg t2v" in out and "(w_global 0.5, w_fine 2)" in out


def test_explain_with_the_trained_plan_has_nothing_to_note(trained, synth, tmp_path, capsys):
    assert _explain(trained, synth, tmp_path) == 0
    out, err = capsys.readouterr()
    assert "note:" not in err and "tokenflow t2v" in out


def test_explain_from_stores_with_a_global_only_model_says_there_is_no_plan(model_dir, direct, imported, tmp_path,
                                                                          capsys):
    from tokenflow.index.offline import caption_ids
    from tokenflow.models import RetrievalModel, load_backbone

    folder = RetrievalModel(load_backbone(model_dir), None).save_pretrained(tmp_path / "global-only")
    split, _, _ = direct
    assert main(["explain", "--visual-store", str(imported[0]), "--text-store", str(imported[1]), "--item",
                 split.item_ids[0], "--text-id", caption_ids(split)[0], "--model", str(folder),
                 "--out", str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err
    assert err == f"tokenflow explain: --model {folder}: has no fine-grained plan (global only); pass --aligner\n"


def test_a_bug_in_explaining_stored_features_is_not_made_a_user_error(direct, imported, tmp_path, capsys,
                                                                     monkeypatch):
    import importlib

    from tokenflow.index.offline import caption_ids

    viz = importlib.import_module("tokenflow.viz.explain")  # the module (tokenflow.viz.explain is also a function)

    def broken(*args, **kwargs):
        raise ValueError("shapes [3, 4] and [5, 4] differ")

    monkeypatch.setattr(viz, "explain_tokens", broken)
    split, _, _ = direct
    assert main(["explain", "--visual-store", str(imported[0]), "--text-store", str(imported[1]), "--item",
                 split.item_ids[0], "--text-id", caption_ids(split)[0], "--out", str(tmp_path / "e.png")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: shapes [3, 4] and [5, 4] differ" in err and "internal error" in err


def test_explain_scores_with_the_model_the_viz_path_loads(model_dir, synth, tmp_path, monkeypatch):
    """One folder, one model: the CLI's and viz's load_model keep the logit scale and bias too."""
    import importlib

    from tokenflow import get_aligner
    from tokenflow.models import RetrievalModel, load_backbone

    viz = importlib.import_module("tokenflow.viz.explain")
    folder = RetrievalModel(load_backbone(model_dir), get_aligner("tokenflow"), w_global=0.5, w_fine=2.0,
                            logit_scale=10.0, max_logit_scale=50.0, logit_bias=-3.0).save_pretrained(tmp_path / "m")
    seen = []
    original = viz.explain

    def spy(model, *args, **kwargs):
        seen.append(model)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(viz, "explain", spy)
    assert _explain(folder, synth, tmp_path) == 0
    via_viz = viz.load_model(folder)
    (via_cli,) = seen
    for model in (via_cli, via_viz):
        assert float(model.scale().detach()) == pytest.approx(10.0) and model.max_logit_scale == 50.0
        assert float(model.logit_bias.detach()) == pytest.approx(-3.0)
        assert (model.w_global, model.w_fine) == (0.5, 2.0)
