"""Hugging Face ``SiglipModel`` and ``Siglip2Model`` loaded from a local folder (nothing downloaded).

SigLIP (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023) and SigLIP 2
(Tschannen et al., 2025) have no projection matrix as CLIP has: each tower ends in its own head,
and the heads' outputs share the joint space. Token features follow those heads:

- texts: ``text_model`` (final layer norm included) -> the linear ``head`` on *every* token. The
  head is linear, so it applies per token exactly as to the pooled one. The global feature is the
  head at the last position, as SigLIP pools. The tower runs as SigLIP was trained (big_vision,
  and open_clip's port): ids padded to the full ``max_position_embeddings`` (64) with the pad
  token, on the tokenizer's padding side, and *no* attention mask, so pads are attended and the
  pooled position is usually a pad. The Tokens mask still marks the real tokens for the plan.
- images: ``vision_model`` (its ``post_layernorm`` covers every token) -> the attention-pooling
  head (MAP: a learned probe attends over the patches, then a residual MLP) gives the global
  feature. That head does not apply per token as such; the patch tokens are the same head run
  on **each patch alone**. Attention over a single key gives it all the weight, whatever the
  probe, so a patch's token is the head's value and output projections then its residual MLP,
  the path every patch takes inside the pooled output before their weighted mix. Patch tokens
  thus sit in the pooled feature's space (the raw hidden states do not: they skip the head).

SigLIP 2 NaFlex (``model_type: siglip2``) takes patchified pixels with ``spatial_shapes`` and a
``pixel_attention_mask`` to keep each image's aspect ratio. Here it runs at one fixed resolution:
every image is resized to the square grid of ``vision_config.num_patches`` (16 x 16 patches for
256), so the positional embeddings are used at their native size, all patches are real and every
image has the same token grid (batched Tokens, heat maps). SigLIP 2 checkpoints at a fixed
resolution are published as ``model_type: siglip`` and load as SigLIP.

The folder is what ``save_pretrained`` of the model, its tokenizer and its image processor write.
The tokenizer is read as a fast tokenizer (``tokenizer.json``; SigLIP 2's Gemma tokenizer ships
one). A SigLIP folder with only ``spiece.model`` needs ``sentencepiece`` once, to write
``tokenizer.json``: ``AutoTokenizer.from_pretrained(folder).save_pretrained(folder)``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .._extras import require
from ..errors import FileError, InputError
from ..utils import write_text_atomic
from ._hf import check_folder, checked_text_len, load_weights
from .base import DualEncoder

__all__ = ["HFSiglip"]

MAX_TEXT_LEN = 32  # tokens kept per caption (SigLIP's own 64 positions are always filled with pads)
MODEL_TYPES = ("siglip", "siglip2")


class HFSiglip(DualEncoder):
    """Adapter around ``transformers.SiglipModel`` / ``Siglip2Model`` + tokenizer + image settings."""

    def __init__(self, model, tokenizer, processor, max_text_len: int = MAX_TEXT_LEN, source: str = "",
                 processor_settings: dict | None = None):
        super().__init__()
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.source = source
        #: the folder's own preprocessor_config.json, written back as it was by save_pretrained
        self.processor_settings = processor_settings
        cfg = model.config
        self.model_type = str(cfg.model_type)
        if self.model_type not in MODEL_TYPES:
            raise InputError(f"HFSiglip takes a SigLIP or SigLIP 2 model, got model_type {self.model_type!r}")
        vc, tc = cfg.vision_config, cfg.text_config
        if not vc.vision_use_head:
            raise FileError(f"{source or 'model'}: vision_config.vision_use_head is false: this vision tower has "
                             "no pooling head, so no global image feature in the joint space")
        if int(tc.projection_size) != int(vc.hidden_size):
            raise FileError(f"{source or 'model'}: text_config.projection_size {tc.projection_size} differs from "
                             f"vision_config.hidden_size {vc.hidden_size}: the towers do not share a joint space")
        self.grid, self.image_size = _input_geometry(vc, self.model_type, source)
        self.embed_dim = int(vc.hidden_size)
        if tokenizer.pad_token_id is None:
            raise FileError(f"{source or 'model'}: the tokenizer has no pad token; SigLIP pads every text to "
                             f"{tc.max_position_embeddings} tokens")
        self.max_text_len = min(int(max_text_len), self.text_position_limit)
        # The retrieval model owns the logit scale and bias; these only give their starting values.
        self.initial_logit_scale = float(model.logit_scale.detach().exp())
        self.initial_logit_bias = float(model.logit_bias.detach())
        model.logit_scale.requires_grad_(False)
        model.logit_bias.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, folder: str | Path, max_text_len: int = MAX_TEXT_LEN) -> HFSiglip:
        """Load model, tokenizer and image settings from ``folder`` (``local_files_only``)."""
        folder = check_folder(folder, "SigLIP", "save_pretrained of a SiglipModel or Siglip2Model plus its tokenizer "
                              "and image processor")
        if not (folder / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{folder}: missing tokenizer.json (a fast tokenizer). A folder with only "
                                    "spiece.model: run AutoTokenizer.from_pretrained(folder).save_pretrained(folder) "
                                    "once where sentencepiece is installed")
        require("transformers", "clip", "loading a SigLIP folder")
        from transformers import AutoTokenizer, Siglip2Model, SiglipModel
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        if model_type not in MODEL_TYPES:
            raise FileError(f"{folder / 'config.json'}: model_type {model_type!r} is not 'siglip' or 'siglip2'")
        model_cls = SiglipModel if model_type == "siglip" else Siglip2Model
        model = load_weights(model_cls, folder, model_type)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:
            raise FileError(f"{folder}: cannot read the tokenizer ({type(e).__name__}: {e})") from None
        try:
            settings = json.loads((folder / "preprocessor_config.json").read_text())
        except json.JSONDecodeError as e:
            raise FileError(f"{folder / 'preprocessor_config.json'}: not valid JSON ({e})") from None
        processor = _square_processor(SiglipImageProcessorPil, settings, model, model_type, str(folder))
        return cls(model, tokenizer, processor, max_text_len=max_text_len, source=str(folder),
                   processor_settings=settings)

    @property
    def text_position_limit(self) -> int:
        """Positions of the text tower (``max_position_embeddings``, 64 for the published models)."""
        return int(self.model.config.text_config.max_position_embeddings)

    def set_max_text_len(self, n: int) -> None:
        """Keep at most ``n`` tokens per caption (special tokens included), up to
        :attr:`text_position_limit`; beyond it an ``InputError`` naming the limit."""
        self.max_text_len = checked_text_len(n, self.text_position_limit, "SigLIP")

    # -- images -----------------------------------------------------------------------------------
    def _patchify(self, pixels: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, rows * cols, p * p * 3], the order of Siglip2's image processor
        (patches row-major, each patch as rows x columns x channels)."""
        b, c, h, w = pixels.shape
        p = int(self.model.config.vision_config.patch_size)
        x = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def _vision_hidden(self, pixels: Tensor) -> Tensor:
        """Last hidden states of every patch, ``post_layernorm`` included: [B, P, D]."""
        vm = self.model.vision_model
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"images must be {self.image_size} x {self.image_size} (preprocess gives that), "
                             f"got {tuple(pixels.shape[-2:])}")
        pixels = pixels.to(self.model.dtype)
        if self.model_type == "siglip":
            return vm(pixel_values=pixels).last_hidden_state
        patches = self._patchify(pixels)
        b, n = patches.shape[:2]
        shapes = torch.tensor([[self.grid, self.grid]], device=pixels.device).expand(b, 2)
        mask = torch.ones(b, n, dtype=torch.long, device=pixels.device)
        return vm(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes).last_hidden_state

    def image_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self._vision_hidden(pixels)
        head = self.model.vision_model.head
        pooled = head(hidden)
        b, n, d = hidden.shape
        tokens = head(hidden.reshape(b * n, 1, d)).reshape(b, n, -1)  # each patch pooled alone
        return tokens, pooled

    # -- texts ------------------------------------------------------------------------------------
    def text_features(self, ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        full = self.text_position_limit
        length = ids.shape[1]
        if length > full:
            raise ValueError(f"texts are limited to {full} tokens, got {length}")
        pad = full - length
        left = self.tokenizer.padding_side == "left"
        if pad:  # SigLIP reads texts padded to all its positions
            ids = F.pad(ids, (pad, 0) if left else (0, pad), value=int(self.tokenizer.pad_token_id))
        tm = self.model.text_model
        hidden = tm(input_ids=ids).last_hidden_state  # no attention mask: pads are attended, as in training
        tokens = tm.head(hidden)
        keep = tokens[:, pad:] if left else tokens[:, :length]
        return keep, tokens[:, -1]

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of strings, got one string")
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_len,
                             return_attention_mask=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"].bool()

    def preprocess(self, image) -> Tensor:
        return torch.as_tensor(self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0])

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.grid, self.grid

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        toks = self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
        return [t.replace("\u2581", " ").strip() or t for t in toks]

    def config_dict(self) -> dict:
        return {**super().config_dict(), "model_type": self.model_type, "source": self.source}

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write model, tokenizer and image settings so that :meth:`from_pretrained` reads them back.

        Every file is replaced whole: transformers writes into a hidden staging folder inside
        ``folder`` (removed by :func:`~tokenflow.utils.remove_temporaries` if killed), then each
        file moves into place with one ``os.replace``; ``preprocessor_config.json`` is written
        with :func:`~tokenflow.utils.write_text_atomic`. A failed save leaves the files that were
        there before."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".save.", suffix=".tmp", dir=folder))
        try:
            self.model.save_pretrained(str(staging))
            self.tokenizer.save_pretrained(str(staging))
            if self.processor_settings is None:
                self.processor.save_pretrained(str(staging))
            for f in sorted(staging.iterdir()):
                if f.is_dir():  # none today; a folder replaces the old one whole
                    shutil.rmtree(folder / f.name, ignore_errors=True)
                else:
                    with open(f, "rb+") as fh:
                        os.fsync(fh.fileno())
                os.replace(f, folder / f.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if self.processor_settings is not None:
            settings = json.dumps(self.processor_settings, indent=2) + "\n"
            write_text_atomic(folder / "preprocessor_config.json", settings)
        return folder


def _input_geometry(vc, model_type: str, source: str = "") -> tuple[int, int]:
    """``(grid, side)``: patches per row and column, and the square input's side in pixels.

    SigLIP: ``side`` is ``vision_config.image_size``, what transformers' processor resizes to, and
    ``grid`` is ``image_size // patch_size``. The model's patch conv (stride ``patch_size``) drops
    the pixels past ``grid * patch_size`` when ``image_size`` is not a multiple (so400m-patch14-384:
    384 pixels, 27 patches of 14), and its position table has ``grid ** 2`` entries.
    SigLIP 2: the square grid of ``vision_config.num_patches``, ``side = grid * patch_size``."""
    patch = int(vc.patch_size)
    if model_type != "siglip2":
        return int(vc.image_size) // patch, int(vc.image_size)
    grid = math.isqrt(int(vc.num_patches))
    if grid * grid != int(vc.num_patches):
        raise FileError(f"{source or 'model'}: vision_config.num_patches {vc.num_patches} is not a square "
                         "grid; the fixed-resolution use needs one")
    return grid, grid * patch


def _square_processor(cls, settings: dict, model, model_type: str, source: str = ""):
    """A fixed-size Pillow processor: resize to the model's square input (SigLIP's own size, or
    SigLIP 2's ``num_patches`` grid), rescale and normalise with the folder's settings."""
    _, side = _input_geometry(model.config.vision_config, model_type, source)
    keep = {k: settings[k] for k in ("image_mean", "image_std", "rescale_factor", "resample", "do_rescale",
                                     "do_normalize", "do_convert_rgb") if k in settings}
    return cls(**keep, do_resize=True, size={"height": side, "width": side})
