"""SigLIP and SigLIP 2 folders: random tiny models with a word-level fast tokenizer made in
conftest.py (nothing downloaded); tokens against direct calls of the transformers models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tokenflow import get_aligner
from tokenflow.models import load_backbone
from tokenflow.models.hf_siglip import HFSiglip

from .conftest import TEXT_POSITIONS, save_tiny_siglip

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["siglip", "siglip2"])
def siglip_folder(request, tmp_path_factory):
    return save_tiny_siglip(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def siglip(siglip_folder):
    return load_backbone(siglip_folder)


def _image(seed: int, size: int = 32) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy())


def _hf_pixels(siglip, images):
    """What the folder's own transformers image processor feeds the model (NaFlex for SigLIP 2)."""
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(siglip.source, local_files_only=True)
    return proc(images=images, return_tensors="pt")


def test_chosen_by_config_and_loaded_offline(siglip, siglip_folder, monkeypatch):
    kind = json.loads((siglip_folder / "config.json").read_text())["model_type"]
    assert isinstance(siglip, HFSiglip) and siglip.model_type == kind
    assert siglip.embed_dim == 24 and siglip.image_size == 32 and siglip.patch_grid == (4, 4)
    assert siglip.max_text_len == TEXT_POSITIONS  # at most the tower's positions
    assert siglip.config_dict()["model_type"] == kind
    # the sigmoid loss starts from the folder's own temperature and bias
    assert siglip.initial_logit_scale == pytest.approx(torch.tensor(2.3).exp().item(), rel=1e-6)
    assert siglip.initial_logit_bias == pytest.approx(-9.0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert isinstance(HFSiglip.from_pretrained(siglip_folder), HFSiglip)


def test_image_tokens_equal_the_transformers_model(siglip):
    images = [_image(0), _image(1), _image(2)]
    px = torch.stack([siglip.preprocess(im) for im in images])
    assert px.shape == (3, 3, 32, 32)
    hf = _hf_pixels(siglip, images)
    with torch.no_grad():
        vis = siglip.encode_images(px)
        out = siglip.model.get_image_features(**hf)
        head = siglip.model.vision_model.head
        # each patch alone through the pooling head, called directly on the model's hidden states
        per_patch = torch.stack([head(out.last_hidden_state[:, s : s + 1]) for s in range(16)], dim=1)
    assert vis.feats.shape == (3, 16, 24) and vis.mask.all()
    torch.testing.assert_close(vis.pooled, F.normalize(out.pooler_output, dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vis.feats, F.normalize(per_patch, dim=-1), atol=1e-5, rtol=1e-5)
    # a patch's token is not the raw hidden state: the head moved it into the joint space
    assert not torch.allclose(vis.feats, F.normalize(out.last_hidden_state, dim=-1), atol=1e-2)


def test_image_size_not_a_multiple_of_the_patch(tmp_path):
    """SigLIP with image_size 30 and 14-pixel patches (as so400m-patch14-384: 384 = 27 * 14 + 6):
    the processor resizes to 30, as transformers' does, and the model's stride-14 patch conv
    reads the first 2 x 2 patches and drops the rest, so the features are the transformers
    model's on the same pixels."""
    siglip = load_backbone(save_tiny_siglip(tmp_path, "siglip", image_size=30, patch_size=14))
    assert siglip.image_size == 30 and siglip.patch_grid == (2, 2)
    images = [_image(0, 40), _image(1, 40)]
    px = torch.stack([siglip.preprocess(im) for im in images])
    hf = _hf_pixels(siglip, images)
    torch.testing.assert_close(px, hf["pixel_values"])
    with torch.no_grad():
        vis = siglip.encode_images(px)
        out = siglip.model.get_image_features(**hf)
    assert vis.feats.shape == (2, 4, 24) and vis.mask.all()
    torch.testing.assert_close(vis.pooled, F.normalize(out.pooler_output, dim=-1), atol=1e-5, rtol=1e-5)


def test_one_patch_alone_is_the_heads_value_path(siglip):
    """Why the per-patch head is well defined: with one key the probe's attention weight is 1."""
    head = siglip.model.vision_model.head
    h = torch.randn(5, 1, 24)
    with torch.no_grad():
        got = head(h)
        att = head.attention
        v = F.linear(h[:, 0], att.in_proj_weight[48:], att.in_proj_bias[48:])
        y = att.out_proj(v)
        want = y + head.mlp(head.layernorm(y))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_text_tokens_equal_the_transformers_model(siglip):
    texts = ["a red cube", "blue", "a very long caption on the left " * 3]
    ids, mask = siglip.tokenize(texts)
    assert mask.dtype == torch.bool and mask.sum(1).tolist()[2] == TEXT_POSITIONS  # truncated
    tok = siglip.tokenizer
    # SigLIP's own usage: padded to every position, no attention mask
    full = tok(texts, padding="max_length", max_length=TEXT_POSITIONS, truncation=True, return_tensors="pt")
    with torch.no_grad():
        txt = siglip.encode_texts(ids, mask)
        out = siglip.model.get_text_features(input_ids=full["input_ids"])
        per_token = siglip.model.text_model.head(out.last_hidden_state)
    torch.testing.assert_close(txt.pooled, F.normalize(out.pooler_output, dim=-1), atol=1e-5, rtol=1e-5)
    real = full["attention_mask"].bool()
    assert txt.mask.sum().item() == real.sum().item()
    for i in range(len(texts)):
        torch.testing.assert_close(txt.feats[i][txt.mask[i]], F.normalize(per_token[i][real[i]], dim=-1),
                                   atol=1e-5, rtol=1e-5)
    # a batch's padding does not change a text's tokens (every text is padded to all positions)
    with torch.no_grad():
        alone = siglip.encode_texts(*siglip.tokenize(texts[1:2]))
    torch.testing.assert_close(alone.feats[0][alone.mask[0]], txt.feats[1][txt.mask[1]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.pooled[0], txt.pooled[1], atol=1e-5, rtol=1e-5)


def test_padding_side_follows_the_tokenizer(siglip):
    ids, mask = siglip.tokenize(["red", "a red cube"])
    side = "left" if siglip.model_type == "siglip2" else "right"
    assert siglip.tokenizer.padding_side == side
    assert bool(mask[0, -1]) == (side == "left") and bool(mask[0, 0]) == (side == "right")
    words = siglip.decode_tokens(ids[1][mask[1]])
    if side == "right":
        assert words == ["a", "red", "cube", "</s>"]
    else:
        assert "".join(words) == "a\u2581red\u2581cube"


def test_preprocess_resizes_and_normalises(siglip):
    x = siglip.preprocess(Image.new("RGB", (64, 48), (255, 0, 0)))
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x[0, 10, 10], torch.tensor(1.0), atol=1e-3, rtol=0)  # (1 - 0.5) / 0.5
    torch.testing.assert_close(x[1, 10, 10], torch.tensor(-1.0), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="images must be 32 x 32"):
        siglip.encode_images(torch.zeros(1, 3, 24, 24))


def test_max_words_limit(siglip):
    siglip.set_max_text_len(5)
    try:
        ids, mask = siglip.tokenize(["a very long caption on the left"])
        assert ids.shape[1] == 5
    finally:
        siglip.set_max_text_len(TEXT_POSITIONS)
    with pytest.raises(ValueError, match=f"{TEXT_POSITIONS} positions"):
        siglip.set_max_text_len(TEXT_POSITIONS + 1)


def test_tokens_feed_an_aligner_and_videos(siglip):
    with torch.no_grad():
        vis = siglip.encode_images(torch.randn(2, 3, 32, 32))
        txt = siglip.encode_text_strings(["red", "a red cube"])
        video = siglip.encode_videos(torch.randn(2, 3, 3, 32, 32), tokens="patches")
    s = get_aligner("tokenflow").pairwise(vis, txt)
    assert s.v2t.shape == (2, 2) and torch.isfinite(s.v2t).all()
    assert video.feats.shape == (2, 48, 24)


def test_save_and_load_round_trip(siglip, tmp_path):
    out = siglip.save_pretrained(tmp_path / "copy")
    again = load_backbone(out)
    assert type(again) is HFSiglip and again.model_type == siglip.model_type
    px = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_images(px).feats, siglip.encode_images(px).feats)
    assert json.loads((out / "preprocessor_config.json").read_text()) == siglip.processor_settings


def test_a_failed_save_leaves_the_files_as_they_were(siglip, tmp_path, monkeypatch):
    import tokenflow.models.hf_siglip as mod

    out = siglip.save_pretrained(tmp_path / "copy")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(path, *args, **kwargs):  # a writer killed half way through tokenizer.json
        (Path(path) / "tokenizer.json").write_text('{"half')
        raise OSError("disk full")

    monkeypatch.setattr(siglip.tokenizer, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        siglip.save_pretrained(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing half-written, no staging folder
    monkeypatch.undo()
    written = []
    monkeypatch.setattr(mod, "write_text_atomic", lambda path, text: _atomic(path, text, written))
    siglip.save_pretrained(out)
    assert written == (["preprocessor_config.json"] if siglip.processor_settings is not None else [])
    assert load_backbone(out).model_type == siglip.model_type


def _atomic(path, text, written):
    from tokenflow.utils import write_text_atomic

    written.append(Path(path).name)
    write_text_atomic(path, text)


def test_missing_or_unfit_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFSiglip.from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        HFSiglip.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_backbone(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip3"}))
    with pytest.raises(ValueError, match="'siglip3' is not supported.*'siglip', 'siglip2'"):
        load_backbone(tmp_path)


def test_models_without_a_joint_space_are_refused(siglip):
    from tokenflow.errors import FileError

    model, tok, proc = siglip.model, siglip.tokenizer, siglip.processor
    model.config.vision_config.vision_use_head = False
    try:
        with pytest.raises(FileError, match="my-folder: vision_config.vision_use_head is false"):
            HFSiglip(model, tok, proc, source="my-folder")
    finally:
        model.config.vision_config.vision_use_head = True
    model.config.text_config.projection_size = 7
    try:
        with pytest.raises(FileError, match="projection_size 7 differs from vision_config.hidden_size 24"):
            HFSiglip(model, tok, proc, source="my-folder")
    finally:
        model.config.text_config.projection_size = 24


def test_corrupt_weights_name_the_folder(siglip_folder, tmp_path):
    import shutil

    from tokenflow.errors import FileError

    copy = shutil.copytree(siglip_folder, tmp_path / "broken")
    (copy / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FileError, match=r"broken: cannot read the siglip2? weights"):
        load_backbone(copy)
