"""A small indexed collection for the web page: synthetic images (and videos, and texts) encoded by
the tiny model saved as a folder, fp32 stores (so explanations can be compared exactly)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("faiss")


@dataclass
class Collection:
    root: Path
    model_dir: Path
    model: object
    split: object  # the image split that was indexed
    index: Path  # images
    video_split: object
    video_frames_index: Path  # one token per frame
    video_patches_index: Path  # every frame's patches
    text_index: Path  # the split's captions as a text collection


def _encode(model, model_dir, source, folder, **kw):
    from tokenflow.index import Indexer, backbone_fingerprint, encode_store

    info = backbone_fingerprint(model, name=str(model_dir))
    encode_store(model, source, folder, backbone_info=info, dtype="fp32", batch_size=8, **kw)
    return Indexer("flat").index(folder)


@pytest.fixture(scope="session")
def collection(tmp_path_factory) -> Collection:
    from tokenflow.data import load_split
    from tokenflow.data.synthetic import make_synthetic
    from tokenflow.models import TinyCLIP, TinyConfig, WordTokenizer

    root = tmp_path_factory.mktemp("serve")
    make_synthetic(root / "data", images=(2, 2, 16), videos=(2, 2, 4), image_size=64, frames=12, seed=5,
                   image_format="png")
    split = load_split("flickr30k", root / "data" / "images", "test")
    videos = load_split("msrvtt", root / "data" / "videos", "test")
    torch.manual_seed(0)
    model = TinyCLIP(TinyConfig(layers=1), WordTokenizer.build(split.texts + videos.texts)).eval()
    model_dir = model.save_pretrained(root / "model")
    index = _encode(model, model_dir, split, root / "store")
    frames = _encode(model, model_dir, videos, root / "videos-frames", num_frames=12, video_tokens="frames")
    patches = _encode(model, model_dir, videos, root / "videos-patches", num_frames=12, video_tokens="patches")
    texts = sorted(set(split.texts))
    text_index = _encode(model, model_dir, texts, root / "texts", ids=texts)
    return Collection(root, model_dir, model, split, index, videos, frames, patches, text_index)


@pytest.fixture(scope="session")
def client(collection):
    from fastapi.testclient import TestClient

    from tokenflow.serve import create_app

    app = create_app(collection.index, collection.model_dir)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c
