"""A small dual encoder that trains from scratch on a CPU: patch ViT + text transformer.

Built for the demo and the tests: the same interface as the CLIP adapter, a word-level
tokenizer built from the training captions, saved as a folder (``config.json``,
``model.safetensors``, ``vocab.json``) that :func:`tokenflow.models.load_backbone` reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .._extras import require
from ..errors import InputError
from ..utils import atomic_path, read_safetensors
from .base import DualEncoder, eos_positions
from .transforms import clip_preprocess

__all__ = ["TinyCLIP", "TinyConfig", "WordTokenizer"]

MODEL_TYPE = "tokenflow-tiny"
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class WordTokenizer:
    """Lower-cased words and punctuation; ids 0-3 are ``<pad> <bos> <eos> <unk>``."""

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
    PAD, BOS, EOS, UNK = range(4)

    def __init__(self, words: Sequence[str], max_len: int = 32):
        if max_len < 3:
            raise InputError(f"max_len must leave room for <bos>, a word and <eos>; got {max_len}")
        self.vocab = list(self.SPECIALS) + [w for w in words if w not in self.SPECIALS]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_len = max_len

    @classmethod
    def build(cls, texts: Iterable[str], max_len: int = 32) -> WordTokenizer:
        words = sorted({w for t in texts for w in cls.split(t)})
        return cls(words, max_len)

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Texts -> (ids [B, L], mask [B, L]); long texts are cut, keeping ``<eos>`` last."""
        if isinstance(texts, str):
            raise TypeError("tokenize takes a list of strings, got one string")
        rows = []
        for t in texts:
            ids = [self.index.get(w, self.UNK) for w in self.split(t)][: self.max_len - 2]
            rows.append([self.BOS, *ids, self.EOS])
        length = max(len(r) for r in rows) if rows else 2
        ids = torch.full((len(rows), length), self.PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids, ids != self.PAD

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"max_len": self.max_len, "vocab": self.vocab}, indent=0))

    @classmethod
    def load(cls, path: Path) -> WordTokenizer:
        d = json.loads(path.read_text())
        vocab = d["vocab"]
        if tuple(vocab[:4]) != cls.SPECIALS:
            raise InputError(f"{path}: vocab must start with {cls.SPECIALS}, got {vocab[:4]}")
        return cls(vocab[4:], d["max_len"])


@dataclass
class TinyConfig:
    image_size: int = 32
    patch_size: int = 8
    width: int = 64
    layers: int = 2
    heads: int = 4
    embed_dim: int = 32
    vocab_size: int = 256
    max_text_len: int = 32
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise InputError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise InputError(f"width {self.width} must be a multiple of heads {self.heads}")


def _encoder(cfg: TinyConfig) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)


class TinyCLIP(DualEncoder):
    """Patch ViT (class token + patches) and a bidirectional text transformer (EOS pooling)."""

    def __init__(self, cfg: TinyConfig, tokenizer: WordTokenizer):
        super().__init__()
        if len(tokenizer) > cfg.vocab_size:
            raise InputError(f"tokenizer has {len(tokenizer)} words but vocab_size is {cfg.vocab_size}")
        self.cfg, self.tok = cfg, tokenizer
        self.embed_dim, self.image_size, self.max_text_len = cfg.embed_dim, cfg.image_size, cfg.max_text_len
        self.tok.max_len = cfg.max_text_len
        w, n_patch = cfg.width, (cfg.image_size // cfg.patch_size) ** 2
        self.patch = nn.Conv2d(3, w, cfg.patch_size, cfg.patch_size, bias=False)
        self.cls = nn.Parameter(torch.randn(w) * 0.02)
        self.vpos = nn.Parameter(torch.randn(n_patch + 1, w) * 0.02)
        self.vis = _encoder(cfg)
        self.vln = nn.LayerNorm(w)
        self.vproj = nn.Linear(w, cfg.embed_dim, bias=False)
        self.word = nn.Embedding(cfg.vocab_size, w)
        self.tpos = nn.Parameter(torch.randn(cfg.max_text_len, w) * 0.02)
        self.txt = _encoder(cfg)
        self.tln = nn.LayerNorm(w)
        self.tproj = nn.Linear(w, cfg.embed_dim, bias=False)

    def set_max_text_len(self, n: int) -> None:
        """Cut captions at ``n`` tokens (``<bos>`` and ``<eos>`` included). The learned positional
        table has ``cfg.max_text_len`` rows, which bounds ``n``; beyond it an ``InputError``."""
        limit = self.tpos.shape[0]
        if not isinstance(n, int) or not 3 <= n <= limit:
            raise InputError(f"max_words {n}: this tiny text encoder has {limit} positional embeddings "
                             f"(model.tiny.max_text_len / data.max_words when it was built), so captions take 3 to "
                             f"{limit} tokens")
        self.max_text_len = self.tok.max_len = n

    def image_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        x = self.patch(pixels).flatten(2).transpose(1, 2)  # [B, P, W]
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.vpos
        x = self.vproj(self.vln(self.vis(x)))
        return x[:, 1:], x[:, 0]

    def text_features(self, ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        if ids.shape[1] > self.max_text_len:
            raise ValueError(f"texts are limited to {self.max_text_len} tokens, got {ids.shape[1]}")
        x = self.word(ids) + self.tpos[: ids.shape[1]]
        x = self.tproj(self.tln(self.txt(x, src_key_padding_mask=~attention_mask)))
        eos = eos_positions(attention_mask)
        return x, x[torch.arange(x.shape[0], device=x.device), eos]

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        return self.tok(texts)

    def preprocess(self, image) -> Tensor:
        return clip_preprocess(image, self.cfg.image_size, self.cfg.image_mean, self.cfg.image_std)

    @property
    def patch_grid(self) -> tuple[int, int]:
        n = self.cfg.image_size // self.cfg.patch_size
        return n, n

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.tok.vocab[int(i)] for i in ids]

    def config_dict(self) -> dict:
        return {**super().config_dict(), "model_type": MODEL_TYPE, **asdict(self.cfg)}

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``vocab.json`` (atomically, each)."""
        require("safetensors", "train", "saving a model")
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(tmp))
        with atomic_path(folder / "vocab.json") as tmp:
            self.tok.save(tmp)
        with atomic_path(folder / "config.json") as tmp:
            tmp.write_text(json.dumps({"model_type": MODEL_TYPE, **asdict(self.cfg)}, indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> TinyCLIP:
        folder = Path(folder)
        cfg_d = json.loads((folder / "config.json").read_text())
        cfg_d.pop("model_type", None)
        try:
            cfg = TinyConfig(**cfg_d)
        except TypeError as e:
            raise InputError(f"{folder / 'config.json'}: {e}") from None
        model = cls(cfg, WordTokenizer.load(folder / "vocab.json"))
        model.load_state_dict(read_safetensors(folder / "model.safetensors", "a tiny model's weights"))
        return model.eval()
