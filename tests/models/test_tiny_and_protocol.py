import pytest
import torch
from PIL import Image

from tokenflow.models import TinyCLIP, TinyConfig, WordTokenizer, load_backbone


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = WordTokenizer.build(["a small red circle left of a large blue square", "two shapes"])
    return TinyCLIP(TinyConfig(), tok).eval()


def test_tokenizer_specials_truncation_and_unknown():
    tok = WordTokenizer.build(["a red circle"], max_len=5)
    ids, mask = tok(["a red circle", "red", "a red circle a red circle", "green"])
    assert ids.shape == (4, 5)
    assert ids[0].tolist() == [1, tok.index["a"], tok.index["red"], tok.index["circle"], 2]
    assert mask[1].tolist() == [True, True, True, False, False]
    assert ids[2, -1] == WordTokenizer.EOS  # cut, <eos> kept last
    assert ids[3, 1] == WordTokenizer.UNK
    with pytest.raises(TypeError, match="list of strings"):
        tok("a red circle")


def test_image_and_text_tokens(tiny):
    vis = tiny.encode_images(torch.randn(2, 3, 32, 32))
    assert vis.feats.shape == (2, 16, 32) and vis.pooled.shape == (2, 32)
    torch.testing.assert_close(vis.feats.norm(dim=-1), torch.ones(2, 16))
    txt = tiny.encode_text_strings(["a small red circle", "two"])
    assert txt.mask.sum(1).tolist() == [6, 3]
    torch.testing.assert_close(txt.pooled.norm(dim=-1), torch.ones(2))
    # the global text feature is the feature at <eos>, and padding does not change it
    alone = tiny.encode_text_strings(["two"])
    torch.testing.assert_close(alone.pooled[0], txt.pooled[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt.pooled[1], txt.feats[1, 2])


def test_video_tokens_frames_and_patches(tiny):
    frames = torch.randn(2, 4, 3, 32, 32)
    fmask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    v = tiny.encode_videos(frames, fmask)
    assert v.feats.shape == (2, 4, 32) and v.mask.tolist() == fmask.tolist()
    one = tiny.encode_images(frames[1, :2])
    want = torch.nn.functional.normalize(one.pooled.mean(0), dim=-1)
    torch.testing.assert_close(v.pooled[1], want, atol=1e-5, rtol=1e-5)
    # padded frames do not leak into the global feature
    frames2 = frames.clone()
    frames2[1, 2:] = 100.0
    torch.testing.assert_close(tiny.encode_videos(frames2, fmask).pooled, v.pooled)
    p = tiny.encode_videos(frames, fmask, tokens="patches")
    assert p.feats.shape == (2, 4 * 16, 32)
    assert p.mask[1].sum() == 2 * 16 and not p.mask[1, 32:].any()
    torch.testing.assert_close(p.pooled, v.pooled)


def test_save_load_roundtrip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    back = load_backbone(tmp_path / "m")
    assert isinstance(back, TinyCLIP) and back.tok.vocab == tiny.tok.vocab
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(back.encode_images(x).pooled, tiny.encode_images(x).pooled)
    assert not list(tmp_path.glob("m/.*.tmp"))


def test_preprocess(tiny):
    x = tiny.preprocess(Image.new("RGB", (40, 80), (255, 255, 255)))
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25


@pytest.mark.parametrize(
    "call,msg",
    [
        (lambda m: m.encode_images(torch.randn(2, 1, 32, 32)), r"\[B, 3, H, W\]"),
        (lambda m: m.encode_videos(torch.randn(2, 3, 32, 32)), r"\[B, F, 3, H, W\]"),
        (lambda m: m.encode_videos(torch.randn(1, 2, 3, 32, 32), torch.zeros(1, 2, dtype=torch.bool)), "real frame"),
        (lambda m: m.encode_videos(torch.randn(1, 2, 3, 32, 32), tokens="words"), "'frames' or 'patches'"),
        (lambda m: m.encode_texts(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3)), "real token"),
        (lambda m: m.encode_texts(torch.ones(2, 40, dtype=torch.long), torch.ones(2, 40)), "limited to 32"),
    ],
)
def test_bad_input(tiny, call, msg):
    with pytest.raises(ValueError, match=msg):
        call(tiny)


def test_config_checks():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        TinyConfig(image_size=30)
    with pytest.raises(ValueError, match="vocab_size"):
        TinyCLIP(TinyConfig(vocab_size=5), WordTokenizer(["a", "b"]))
