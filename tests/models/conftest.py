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


@pytest.fixture(scope="session")
def hf_clip_folder(tmp_path_factory):
    return save_tiny_hf_clip(tmp_path_factory.mktemp("clip"))
