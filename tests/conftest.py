"""Fixtures shared by the test folders: the synthetic benchmark, a tiny backbone folder, and its
features exported and imported as feature stores."""

import pytest
import torch

from tokenflow.data.synthetic import make_synthetic

from tests.helpers import STORE_PLANS, export_features


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """A small synthetic benchmark in the real formats (shared, read-only)."""
    out = tmp_path_factory.mktemp("synth")
    make_synthetic(out, images=(8, 4, 6), videos=(4, 2, 4), image_size=32, frames=10, seed=3)
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, synth):
    """A tiny backbone folder (random weights) whose vocabulary covers the synthetic captions
    (shared, read-only)."""
    from tokenflow.data import load_split
    from tokenflow.models.tiny import TinyCLIP, TinyConfig, WordTokenizer

    split = load_split("flickr30k", synth / "images", "test")
    torch.manual_seed(0)
    model = TinyCLIP(TinyConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, embed_dim=16),
                     WordTokenizer(sorted({w for t in split.texts for w in t.lower().split()})))
    out = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def direct(model_dir, synth):
    """The test split, ``model_dir``'s own features of it, and the model evaluated directly with each
    of :data:`~tests.helpers.STORE_PLANS` (name -> report); shared, read-only."""
    from tokenflow import get_aligner
    from tokenflow.data import load_split
    from tokenflow.eval.evaluate import encode_split, evaluate
    from tokenflow.models import load_backbone

    split = load_split("flickr30k", synth / "images", "test")
    model = load_backbone(model_dir)
    enc = encode_split(model, split, batch_size=4)
    reports = {name: evaluate(model, split, get_aligner(name), encoded=enc) for name in STORE_PLANS}
    return split, enc, reports


@pytest.fixture(scope="session")
def imported(tmp_path_factory, direct):
    """``(visual store, text store)``: the direct features exported half to .npz, half to
    .safetensors, then imported (fp32) by ``tokenflow import-features``. Shared: tests may add an
    ``index`` folder to a store (``tokenflow index``), which reading the store ignores, and nothing
    else."""
    pytest.importorskip("safetensors.numpy")
    from tokenflow.cli import main
    from tokenflow.index.offline import caption_ids

    split, enc, _ = direct
    tmp = tmp_path_factory.mktemp("imported")
    vids, tids = split.item_ids, caption_ids(split)
    h, t = len(vids) // 2, len(tids) // 2
    vfiles = [export_features(enc.vis[:h], vids[:h], {}, tmp / "vis0.npz", "npz"),
              export_features(enc.vis[h:], vids[h:], {"paths": [str(p) for p in split.item_paths[h:]]},
                              tmp / "vis1.safetensors", "st")]
    tfiles = [export_features(enc.txt[:t], tids[:t], {"texts": split.texts[:t]}, tmp / "txt0.safetensors", "st"),
              export_features(enc.txt[t:], tids[t:], {"texts": split.texts[t:]}, tmp / "txt1.npz", "npz")]
    for files, kind, out in ((vfiles, "visual", "V"), (tfiles, "text", "T")):
        assert main(["import-features", *map(str, files), "--out", str(tmp / out), "--kind", kind, "--model-name",
                     "tiny (exported)", "--dtype", "fp32", "--shard-size", "8"]) == 0
    return tmp / "V", tmp / "T"
