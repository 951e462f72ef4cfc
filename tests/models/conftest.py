import json
import string

import pytest
import torch


def save_tiny_hf_clip(folder, image_size=32, patch=8, proj=16, max_pos=40):
    """A random tiny CLIPModel + a character-level BPE CLIPTokenizer + Pillow image processor,
    written the way a user's ViT-B/32 folder is."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    chars = list(string.ascii_lowercase + string.digits + ".,'")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = ["r e", "re d</w>"]
    vocab["re"] = len(vocab)
    vocab["red</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])
    tok.save_pretrained(str(folder))
    torch.manual_seed(0)
    tc = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=max_pos, projection_dim=proj,
                        bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          image_size=image_size, patch_size=patch, projection_dim=proj)
    cfg = CLIPConfig(text_config=tc.to_dict(), vision_config=vc.to_dict(), projection_dim=proj)
    CLIPModel(cfg).save_pretrained(str(folder))
    CLIPImageProcessorPil(size={"shortest_edge": image_size},
                          crop_size={"height": image_size, "width": image_size}).save_pretrained(str(folder))
    return folder


WORDS = ["a", "red", "blue", "green", "cube", "circle", "very", "long", "caption", "small", "on", "the", "left"]
TEXT_POSITIONS = 16


def _tokenizer(kind: str):
    """SigLIP: a word-level fast tokenizer in T5's style (text then </s>, pads on the right).
    SigLIP 2: transformers' own Siglip2Tokenizer (Gemma's pipeline, lower-cased, pads on the left)
    over a vocabulary of single characters, which is what a folder's ``AutoTokenizer`` gives back."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, Siglip2Tokenizer

    if kind == "siglip2":
        chars = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *string.ascii_lowercase, "\u2581"]
        return Siglip2Tokenizer(vocab={t: i for i, t in enumerate(chars)}, merges=[])
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>"] + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def save_tiny_siglip(folder, kind: str, logit_scale: float = 2.3, logit_bias: float = -9.0, image_size: int = 32,
                     patch_size: int = 8):
    """A random tiny SiglipModel (32 x 32 images, 8 x 8 patches) or Siglip2Model (NaFlex, a 4 x 4
    grid of 8 x 8 patches), its tokenizer and image processor, as save_pretrained writes them.
    ``image_size`` and ``patch_size`` change SigLIP's (``patch_size`` also SigLIP 2's patches)."""
    from transformers import (Siglip2Config, Siglip2Model, Siglip2TextConfig, Siglip2VisionConfig, SiglipConfig,
                              SiglipModel, SiglipTextConfig, SiglipVisionConfig)
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    tok = _tokenizer(kind)
    tok.save_pretrained(str(folder))
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=TEXT_POSITIONS, pad_token_id=0, bos_token_id=None, eos_token_id=1,
                projection_size=24)
    vision = dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  patch_size=patch_size)
    torch.manual_seed(0 if kind == "siglip" else 1)
    if kind == "siglip":
        cfg = SiglipConfig(text_config=SiglipTextConfig(**text).to_dict(),
                           vision_config=SiglipVisionConfig(**vision, image_size=image_size).to_dict())
        model = SiglipModel(cfg)
        SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(str(folder))
    else:
        cfg = Siglip2Config(text_config=Siglip2TextConfig(**text).to_dict(),
                            vision_config=Siglip2VisionConfig(**vision, num_patches=16).to_dict())
        model = Siglip2Model(cfg)
        Siglip2ImageProcessorPil(patch_size=patch_size, max_num_patches=16).save_pretrained(str(folder))
    with torch.no_grad():  # SigLIP's published starting point, not the random init
        model.logit_scale.fill_(logit_scale)
        model.logit_bias.fill_(logit_bias)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def hf_clip_folder(tmp_path_factory):
    return save_tiny_hf_clip(tmp_path_factory.mktemp("clip"))
