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
