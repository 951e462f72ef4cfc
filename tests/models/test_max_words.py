"""Caption length (data.max_words, evaluate --max-words) reaches the tokenizer of both backbones."""

import pytest
import yaml

from tokenflow.data import RetrievalSplit
from tokenflow.models import TinyCLIP, TinyConfig, WordTokenizer, load_backbone
from tokenflow.train.config import ConfigError, load_config
from tokenflow.train.trainer import build_model

from .conftest import save_tiny_hf_clip

LONG = " ".join(["red"] * 100)


@pytest.fixture(scope="module")
def clip77(tmp_path_factory):
    """A random tiny CLIP with OpenAI CLIP's 77 text positions."""
    return save_tiny_hf_clip(tmp_path_factory.mktemp("clip77"), max_pos=77)


def config(tmp_path, backbone, **data):
    (tmp_path / "data").mkdir(exist_ok=True)
    return load_config(None, data={"data": {"dataset": "flickr30k", "root": str(tmp_path / "data"), **data},
                                   "model": {"backbone": str(backbone), "aligner": None},
                                   "run": {"out": str(tmp_path / "run")}})


def split():
    return RetrievalSplit("toy", "image", ["a"], [None], [LONG], [0])


def test_clip_takes_max_words_up_to_77_and_refuses_78(clip77):
    clip = load_backbone(clip77)
    clip.set_max_text_len(64)
    assert clip.tokenize([LONG])[0].shape == (1, 64)
    clip.set_max_text_len(77)
    assert clip.tokenize([LONG])[0].shape == (1, 77)
    with pytest.raises(ValueError, match="77 positions"):
        clip.set_max_text_len(78)
    assert clip.max_text_len == 77


def test_build_model_gives_clip_the_configured_length_not_32(clip77, tmp_path):
    model = build_model(config(tmp_path, clip77, max_words=64), split())
    assert model.backbone.max_text_len == 64
    assert model.backbone.tokenize([LONG])[0].shape == (1, 64)
    with pytest.raises(ConfigError, match=r"data.max_words: .*77"):
        build_model(config(tmp_path, clip77, max_words=78), split())


def test_tiny_max_words_reaches_its_tokenizer_and_positional_table(tmp_path):
    model = build_model(config(tmp_path, "tiny", max_words=12), split())
    assert model.backbone.tok.max_len == 12 and model.backbone.tpos.shape[0] == 12
    assert model.backbone.tokenize([LONG])[0].shape == (1, 12)
    tiny = TinyCLIP(TinyConfig(max_text_len=16), WordTokenizer(["red"]))
    tiny.set_max_text_len(8)
    assert tiny.tokenize([LONG])[0].shape == (1, 8)
    with pytest.raises(ValueError, match="16 positional embeddings"):
        tiny.set_max_text_len(17)


def test_old_model_max_text_len_maps_onto_data_max_words(tmp_path):
    (tmp_path / "data").mkdir()
    base = {"data": {"dataset": "flickr30k", "root": str(tmp_path / "data")}, "model": {"backbone": "tiny"},
            "run": {"out": str(tmp_path / "run")}}
    cfg = load_config(None, ["model.max_text_len=48"], data=base)
    assert cfg.data.max_words == 48 and cfg.model.tiny.max_text_len == 48 and cfg.model.max_text_len is None
    again = load_config(None, data=yaml.safe_load(cfg.to_yaml()))  # the resolved form reads back the same
    assert again.model_dump() == cfg.model_dump()
    assert load_config(None, ["model.max_text_len=32", "data.max_words=32"], data=base).data.max_words == 32
    with pytest.raises(ConfigError, match="old name of data.max_words"):
        load_config(None, ["model.max_text_len=48", "data.max_words=64"], data=base)
    assert load_config(None, data=base).data.max_words == 32


def test_shipped_configs_set_max_words():
    from pathlib import Path

    root = Path(__file__).parents[2] / "configs"
    words = {p.stem: yaml.safe_load(p.read_text())["data"].get("max_words") for p in root.glob("*.yaml")}
    assert words["activitynet"] == 64 and words["msrvtt"] == 32
    assert all("max_text_len" not in yaml.safe_load(p.read_text())["model"] for p in root.glob("*.yaml"))


def test_evaluate_cli_max_words(clip77, tmp_path):
    from tokenflow.cli.common import with_max_words
    from tokenflow.errors import UserError

    clip = load_backbone(clip77)
    assert with_max_words(clip, 70).max_text_len == 70
    assert with_max_words(clip, None).max_text_len == 70
    with pytest.raises(UserError, match="--max-words: max_words 78"):
        with_max_words(clip, 78)


def test_a_bare_value_error_of_a_backbone_is_not_made_a_max_words_error():
    from tokenflow.cli.common import with_max_words
    from tokenflow.errors import UserError

    class Broken:
        def set_max_text_len(self, n: int) -> None:
            raise ValueError("shapes [3, 4] and [5, 4] differ")

    with pytest.raises(ValueError, match="shapes") as err:
        with_max_words(Broken(), 12)
    assert not isinstance(err.value, UserError)
