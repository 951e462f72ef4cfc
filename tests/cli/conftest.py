"""Fixtures shared by the command-line tests."""

import pytest
import torch


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, synth):
    """A tiny backbone folder (random weights) whose vocabulary covers the synthetic captions."""
    from tokenflow.data import load_split
    from tokenflow.models.tiny import TinyCLIP, TinyConfig, WordTokenizer

    split = load_split("flickr30k", synth / "images", "test")
    torch.manual_seed(0)
    model = TinyCLIP(TinyConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, embed_dim=16),
                     WordTokenizer(sorted({w for t in split.texts for w in t.lower().split()})))
    out = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(out)
    return out
