"""Hugging Face ``CLIPModel`` loaded from a local folder (nothing is ever downloaded).

Token features follow CLIP's own path to the joint space:

- images: ``vision_model`` -> ``post_layernorm`` -> ``visual_projection`` on *every* token.
  The vision tower applies ``post_layernorm`` only to its pooled (class) output, so it is
  applied to the patch tokens here; the class token gives the global feature, the patches the
  tokens.
- texts: ``text_model`` (its final layer norm included) -> ``text_projection`` on every
  token; the global feature is the token at the EOS position, which CLIP places right before
  the padding. Reading that position from the attention mask (not from ``eos_token_id``)
  keeps a mis-configured tokenizer from silently pooling position 0.

The folder is what ``CLIPModel.save_pretrained`` plus the tokenizer and image processor write
(``config.json``, weights, ``vocab.json``/``merges.txt`` or ``tokenizer.json``,
``preprocessor_config.json``), e.g. a local copy of openai/clip-vit-base-patch32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from .._extras import require
from ._hf import check_folder, checked_text_len, load_weights
from .base import DualEncoder, eos_positions

__all__ = ["HFCLIP"]

MAX_TEXT_LEN = 32  # the paper's maximum caption length


class HFCLIP(DualEncoder):
    """Adapter around ``transformers.CLIPModel`` + its tokenizer and Pillow image processor."""

    def __init__(self, model, tokenizer, processor, max_text_len: int = MAX_TEXT_LEN, source: str = ""):
        super().__init__()
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.source = source
        cfg = model.config
        self.embed_dim = int(cfg.projection_dim)
        crop = getattr(processor, "crop_size", None) or {}
        self.image_size = int(crop.get("height", cfg.vision_config.image_size)) if isinstance(crop, dict) else int(
            cfg.vision_config.image_size
        )
        self.max_text_len = min(int(max_text_len), self.text_position_limit)
        # The retrieval model owns the logit scale; CLIP's own only gives its starting value.
        self.initial_logit_scale = float(model.logit_scale.detach().exp())
        model.logit_scale.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, folder: str | Path, max_text_len: int = MAX_TEXT_LEN) -> HFCLIP:
        """Load model, tokenizer and image processor from ``folder`` (``local_files_only``)."""
        folder = check_folder(folder, "CLIP", "CLIPModel.save_pretrained plus its tokenizer and image processor")
        if not any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json")):
            raise FileNotFoundError(f"{folder}: missing the tokenizer (tokenizer.json, or vocab.json + merges.txt)")
        require("transformers", "clip", "loading a CLIP folder")
        from transformers import CLIPModel, CLIPTokenizer
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        model = load_weights(CLIPModel, folder, "CLIP")
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        processor = CLIPImageProcessorPil.from_pretrained(str(folder), local_files_only=True)
        return cls(model, tokenizer, processor, max_text_len=max_text_len, source=str(folder))

    @property
    def text_position_limit(self) -> int:
        """Positions of CLIP's text encoder (``max_position_embeddings``, 77 for OpenAI's CLIP)."""
        return int(self.model.config.text_config.max_position_embeddings)

    def set_max_text_len(self, n: int) -> None:
        """Cut captions at ``n`` tokens (``<|startoftext|>`` and ``<|endoftext|>`` included), up to
        :attr:`text_position_limit`; beyond it an ``InputError`` naming the limit."""
        self.max_text_len = checked_text_len(n, self.text_position_limit, "CLIP")

    def image_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        vm = self.model.vision_model
        hidden = vm(pixel_values=pixels.to(self.model.dtype)).last_hidden_state
        tokens = self.model.visual_projection(vm.post_layernorm(hidden))
        return tokens[:, 1:], tokens[:, 0]

    def text_features(self, ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        if ids.shape[1] > self.text_position_limit:
            raise ValueError(f"texts are limited to {self.text_position_limit} tokens, got {ids.shape[1]}")
        hidden = self.model.text_model(input_ids=ids, attention_mask=attention_mask.long()).last_hidden_state
        tokens = self.model.text_projection(hidden)
        eos = eos_positions(attention_mask)
        return tokens, tokens[torch.arange(tokens.shape[0], device=tokens.device), eos]

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of strings, got one string")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_len,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

    def preprocess(self, image) -> Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    @property
    def patch_grid(self) -> tuple[int, int]:
        n = self.image_size // int(self.model.config.vision_config.patch_size)
        return n, n

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        toks = self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
        return [t.removesuffix("</w>") for t in toks]

    def config_dict(self) -> dict:
        return {**super().config_dict(), "model_type": "clip", "source": self.source}

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write model, tokenizer and image processor so that :meth:`from_pretrained` reads them back."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))
        self.processor.save_pretrained(str(folder))
        return folder
