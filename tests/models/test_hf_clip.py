import json

import pytest
import torch
from PIL import Image

from tokenflow import get_aligner
from tokenflow.models import load_backbone
from tokenflow.models.hf_clip import HFCLIP


@pytest.fixture(scope="module")
def clip(hf_clip_folder):
    return load_backbone(hf_clip_folder)


def test_loads_offline_through_the_user_path(clip, hf_clip_folder, monkeypatch):
    assert isinstance(clip, HFCLIP)
    assert clip.embed_dim == 16 and clip.image_size == 32 and clip.max_text_len == 32
    # nothing may be fetched: loading works with the hub forced offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert isinstance(HFCLIP.from_pretrained(hf_clip_folder), HFCLIP)


def test_image_tokens_match_clip_and_are_normalised(clip):
    px = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        vis = clip.encode_images(px)
        ref = clip.model.get_image_features(pixel_values=px)
    ref = ref.pooler_output if hasattr(ref, "pooler_output") else ref
    assert vis.feats.shape == (3, 16, 16) and vis.mask.all()
    torch.testing.assert_close(vis.pooled, torch.nn.functional.normalize(ref, dim=-1))
    torch.testing.assert_close(vis.feats.norm(dim=-1), torch.ones(3, 16))
    # patch tokens went through post_layernorm: recompute one by hand
    with torch.no_grad():
        h = clip.model.vision_model(pixel_values=px).last_hidden_state
        p = clip.model.visual_projection(clip.model.vision_model.post_layernorm(h[:, 5]))
    torch.testing.assert_close(vis.feats[:, 4], torch.nn.functional.normalize(p, dim=-1))


def test_text_tokens_masks_and_eos(clip):
    texts = ["a red cube", "red", "a very long caption " * 10]
    ids, mask = clip.tokenize(texts)
    assert ids.shape[1] == 32 and mask.dtype == torch.bool
    assert mask.sum(1).tolist()[2] == 32  # truncated at 32 tokens
    assert ids[0, 0] == 0 and ids[0, mask[0].sum() - 1] == 1  # <bos> ... <eos>
    with torch.no_grad():
        txt = clip.encode_texts(ids, mask)
        ref = clip.model.get_text_features(input_ids=ids, attention_mask=mask.long())
    ref = ref.pooler_output if hasattr(ref, "pooler_output") else ref
    torch.testing.assert_close(txt.pooled, torch.nn.functional.normalize(ref, dim=-1))
    assert txt.mask.tolist() == mask.tolist()
    # padding does not change the real tokens (attention is masked)
    with torch.no_grad():
        alone = clip.encode_texts(*clip.tokenize(texts[:1]))
    n = int(mask[0].sum())
    torch.testing.assert_close(alone.feats[0, :n], txt.feats[0, :n], atol=1e-5, rtol=1e-5)


def test_preprocess_resizes_crops_normalises(clip):
    img = Image.new("RGB", (64, 48), (255, 0, 0))
    x = clip.preprocess(img)
    assert x.shape == (3, 32, 32)
    mean, std = clip.processor.image_mean, clip.processor.image_std
    torch.testing.assert_close(x[0, 10, 10], torch.tensor((1 - mean[0]) / std[0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(x[1, 10, 10], torch.tensor((0 - mean[1]) / std[1]), atol=1e-3, rtol=0)


def test_tokens_feed_an_aligner(clip):
    with torch.no_grad():
        vis = clip.encode_images(torch.randn(2, 3, 32, 32))
        txt = clip.encode_text_strings(["red", "a red cube"])
    s = get_aligner("tokenflow").pairwise(vis, txt)
    assert s.v2t.shape == (2, 2) and torch.isfinite(s.v2t).all()


def test_missing_files_are_named(tmp_path, hf_clip_folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFCLIP.from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        HFCLIP.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_backbone(tmp_path / "empty")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' is not supported"):
        load_backbone(tmp_path)


def test_evaluate_cli_with_a_clip_folder(hf_clip_folder, synth, tmp_path, capsys):
    from tokenflow.cli import main

    out = tmp_path / "r.json"
    assert main(["evaluate", "--dataset", "flickr30k", "--root", str(synth / "images"), "--model",
                 str(hf_clip_folder), "--aligner", "scan", "--out", str(out), "--quiet"]) == 0
    rep = json.loads(out.read_text())
    assert rep["backbone"]["model_type"] == "clip" and rep["evaluated"] == {"items": 6, "texts": 30}
    assert 0 <= rep["metrics"]["t2v"]["R@1"] <= 100
    assert "visual->text" in capsys.readouterr().out
