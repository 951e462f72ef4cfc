"""A random-initialised Hugging Face CLIP folder for the GPU check (nothing is downloaded).

    python benchmarks/gpu_clip.py OUT [--size b32|tiny] [--seed 0]

``--size b32``: the configuration of openai/clip-vit-base-patch32 (ViT-B/32 vision tower, 224 px,
32 px patches, 12 x 768; text tower 12 x 512, 77 positions, a 49,408-row embedding; joint
space 512), so that time and memory are those of the real model. ``--size tiny``: the test
suite's tiny shapes, for the CPU smoke run. Both get the tokenizer the tests make
(``tests/models/conftest.py``): a character-level BPE ``CLIPTokenizer`` (every caption becomes
one token per character, so captions fill the 32 tokens of ``data.max_words``), and a Pillow
image processor at the tower's image size. The folder loads through ``tokenflow.models.load_backbone``
like a user's copy of CLIP. Prints one JSON line: folder, parameters, seconds.
"""

from __future__ import annotations

import argparse
import json
import string
import time
from pathlib import Path

#: openai/clip-vit-base-patch32's config.json, the fields that set the shapes.
B32 = {"text": {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                "num_attention_heads": 8, "max_position_embeddings": 77},
       "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "image_size": 224, "patch_size": 32},
       "projection_dim": 512}
#: the tests' tiny CLIP (tests/models/conftest.py::save_tiny_hf_clip)
TINY = {"text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "max_position_embeddings": 40},
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "image_size": 32, "patch_size": 8},
        "projection_dim": 16}
SIZES = {"b32": B32, "tiny": TINY}


def char_vocab() -> tuple[dict[str, int], list[str]]:
    """The tests' character-level BPE vocabulary and merges (every letter, digit and , . ')."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,'":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = ["r e", "re d</w>"]
    vocab["re"] = len(vocab)
    vocab["red</w>"] = len(vocab)
    return vocab, merges


def save_clip(folder: Path, size: str = "b32", seed: int = 0) -> dict:
    """Write the folder; returns what was written (parameters, seconds)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    t0 = time.perf_counter()
    shape = SIZES[size]
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = char_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges]).save_pretrained(str(folder))
    torch.manual_seed(seed)
    text = {"vocab_size": len(vocab), **shape["text"]}  # b32 keeps CLIP's 49,408 rows (most unused)
    tc = CLIPTextConfig(**text, projection_dim=shape["projection_dim"], bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vc = CLIPVisionConfig(**shape["vision"], projection_dim=shape["projection_dim"])
    model = CLIPModel(CLIPConfig(text_config=tc.to_dict(), vision_config=vc.to_dict(),
                                 projection_dim=shape["projection_dim"]))
    model.save_pretrained(str(folder))
    side = shape["vision"]["image_size"]
    CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(
        str(folder))
    return {"folder": str(folder), "size": size, "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write")
    p.add_argument("--size", choices=sorted(SIZES), default="b32", help="b32: ViT-B/32's shapes; tiny: the tests'")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    info = save_clip(args.out, args.size, args.seed)
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    main()
