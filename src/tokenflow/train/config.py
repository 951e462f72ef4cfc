"""The training configuration: a YAML file validated on load, overridable from the command line.

Every key is checked: an unknown key, a wrong type or a missing file stops with a
:class:`ConfigError` that names the file and the dotted key (``optim.lr``). Overrides are
``dotted.key=value`` strings whose value is read as YAML (``optim.lr=1e-6``,
``model.hparams={lam: 2}``, ``data.test_split=null``). The resolved configuration is written
next to the checkpoints as ``config.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from ..errors import HParamError, UserError
from ..models.tiny import TinyConfig

__all__ = ["CSConfig", "ConfigError", "DataConfig", "DistillConfig", "LossConfig", "LossKind", "ModelConfig",
           "OptimConfig", "RunConfig", "TrainConfig", "load_config"]

LossKind = Literal["infonce", "sigmoid"]


class ConfigError(UserError, ValueError):
    """A bad configuration: the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    dataset: Literal["flickr30k", "coco", "msrvtt", "msvd", "activitynet"]
    root: Path = Field(description="dataset folder in its standard layout")
    media: Path | None = Field(None, description="image/video folder if not the dataset's default one")
    train_split: str = "train"
    val_split: str = Field("val", description="checkpoints are chosen on this split, never on the test split")
    test_split: str | None = Field("test", description="evaluated once at the end with the best checkpoint; "
                                                      "null to skip")
    num_frames: int = Field(12, ge=1, description="frames sampled uniformly per video")
    video_tokens: Literal["frames", "patches"] = "frames"
    sampling: Literal["caption", "item"] = Field(
        "caption", description="caption: every (item, caption) pair once per epoch; item: every item once per "
                               "epoch with one of its captions drawn at random")
    on_error: Literal["fail", "skip"] = Field("fail", description="unreadable media: stop, or leave the pair "
                                                                  "out of its batch and count it in the log")
    workers: int = Field(0, ge=0, description="data loader processes per training process")
    positives: Path | None = Field(None, description="sidecar of captions true of several items (tokenflow-positives "
                                                     "JSON); validation and test count them all as correct")
    cache: bool = Field(False, description="keep the decoded, preprocessed training media in memory (small "
                                           "datasets: saves decoding them again every epoch)")
    frame_cache: Path | None = Field(None, description="folder of sampled video frames written by tokenflow "
                                     "prepare-frames (same num_frames, size = the backbone's image size); the "
                                     "tensors are those of decoding, videos missing from it are decoded")
    max_words: int = Field(32, ge=3, description="tokens per caption, start and end tokens included (CLIP4Clip's "
                                                 "max_words: 32, 64 for ActivityNet paragraphs); at most the "
                                                 "backbone's positional limit (77 for CLIP)")


class ModelConfig(_Strict):
    backbone: str = Field(description="a local CLIP, SigLIP or SigLIP 2 folder (or a folder saved by tokenflow), "
                                      "or 'tiny' for the built-in encoder trained from scratch")
    tiny: TinyConfig = Field(default_factory=TinyConfig, description="the built-in encoder's shape (backbone: "
                             "tiny); its caption length is data.max_words")
    aligner: str | None = Field("tokenflow", description="plan name (tokenflow list) or null: global only")
    hparams: dict[str, Any] = Field(default_factory=dict, description="the plan's hyperparameters")
    w_global: float = Field(1.0, ge=0, description="weight of the global loss and similarity")
    w_fine: float = Field(1.0, ge=0, description="weight of the fine-grained loss and similarity")
    logit_scale: float | None = Field(None, gt=0, description="initial logit scale; null: the backbone's own (CLIP, "
                                      "SigLIP), or 1/0.07; with loss.kind sigmoid: a SigLIP's own, else 10")
    max_logit_scale: float = Field(100.0, gt=0, description="the logit scale is clamped to this, as in CLIP "
                                     "(sigmoid: at least the starting scale, e.g. a SigLIP's own)")
    max_text_len: int | None = Field(None, ge=3, description="old name of data.max_words, still read: moved "
                                                             "there on load (both set and different: an error)")

    @field_validator("aligner")
    @classmethod
    def _known_aligner(cls, v: str | None) -> str | None:
        from ..align import list_aligners

        if v is not None and v not in list_aligners():
            raise ValueError(f"unknown aligner {v!r}; choose one of {', '.join(list_aligners())} or null")
        return v

    @field_validator("hparams")
    @classmethod
    def _declared_hparams(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # aligner is validated first (it is declared first); absent here when it was invalid.
        from ..align import check_hparams

        if "aligner" not in info.data:
            return v
        aligner = info.data["aligner"]
        if aligner is None and v:  # global only: nothing would read them
            raise HParamError(f"model.hparams: global-only training (model.aligner null) takes no plan "
                              f"hyperparameters, got {', '.join(sorted(v))}; clear them with model.hparams={{}}")
        if aligner is not None:
            check_hparams(aligner, v, source="model.hparams")
        return v


class DistillConfig(_Strict):
    enabled: bool = False
    ema: float = Field(0.95, ge=0, le=1, description="teacher EMA rate (the paper's 0.95)")
    alpha: float = Field(0.4, ge=0, le=1, description="weight of the teacher's soft targets (ALBEF's 0.4)")
    queue: int = Field(16, ge=0, description="queued teacher samples per modality (the paper's 16)")
    disabled_by: str | None = Field(None, description="informational: what turned distillation off for this run "
                                                      "(tokenflow ablate's +sigmoid suffix writes 'sigmoid')")


class CSConfig(_Strict):
    """CS-Aligner ("Distributional Vision-Language Alignment by Cauchy-Schwarz Divergence"): the
    Cauchy-Schwarz divergence between the two modalities' embedding distributions, added to the
    contrastive loss. It needs no pairs, so unpaired images/videos and captions can enter it (they
    enter nothing else)."""

    weight: float = Field(0.0, ge=0, description="weight of D_CS between the global features of the batch's visual "
                                                 "items and texts (plus unpaired extras); 0: off")
    token_weight: float = Field(0.0, ge=0, description="weight of the token-level variant: D_CS between all real "
                                                       "visual tokens and all real text tokens of the local batch")
    sigma: float | None = Field(None, gt=0, description="Gaussian kernel bandwidth; null: the median heuristic, "
                                                        "recomputed for every batch")
    unpaired_media: Path | None = Field(None, description="folder of images (or videos, for a video dataset) "
                                                          "without captions")
    unpaired_texts: Path | None = Field(None, description="text file of captions without images, one per line")
    unpaired_batch: int = Field(32, ge=1, description="unpaired items and captions drawn per step and process")

    @model_validator(mode="after")
    def _used(self) -> CSConfig:
        if (self.unpaired_media or self.unpaired_texts) and not (self.weight or self.token_weight):
            raise ValueError("unpaired data is given but cs.weight and cs.token_weight are 0: it would be unused")
        return self


class LossConfig(_Strict):
    """The contrastive loss of the global and fine-grained scores (both get the same kind)."""

    kind: LossKind = Field("infonce", description="infonce: CLIP's symmetric softmax loss; sigmoid: SigLIP's "
                                                  "pairwise sigmoid loss with a learnable bias (Zhai et al., ICCV "
                                                  "2023)")
    bias: float | None = Field(None, description="sigmoid: initial bias b; null: a SigLIP backbone's own, else -10 "
                                                 "(the paper's)")

    @field_validator("bias")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class OptimConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1, description="global batch: split evenly over the processes")
    accum: int = Field(1, ge=1, description="gradient accumulation steps per optimizer step (each micro-batch "
                                            "uses its own in-batch negatives)")
    lr: float = Field(1e-7, gt=0, description="learning rate of the pretrained backbone")
    lr_new: float = Field(1e-4, gt=0, description="learning rate of new parameters (logit scale, plan weights)")
    weight_decay: float = Field(0.2, ge=0, description="AdamW decay; not applied to gains and biases")
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    warmup: float = Field(0.1, ge=0, description="warm-up: a fraction of all steps if < 1, else a step count")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine floor as a fraction of the peak")
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; null: no clipping")
    amp: Literal["auto", "bf16", "none"] = Field("auto", description="bf16 autocast (auto: on CUDA only)")


class RunConfig(_Strict):
    out: Path = Field(description="folder for config.yaml, log.jsonl, checkpoints and reports")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ... (under torchrun: the local rank's GPU)")
    deterministic: bool = Field(False, description="deterministic kernels (exact resume and DDP checks on CPU)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps in all")
    save_every: int = Field(500, ge=1, description="optimizer steps between resume checkpoints (also saved at "
                                                   "every epoch end)")
    eval_every: int = Field(1, ge=1, description="epochs between validation runs")
    log_every: int = Field(10, ge=1, description="optimizer steps between log lines")
    select: Literal["rsum", "r1", "t2v_r1", "v2t_r1"] = Field(
        "rsum", description="validation metric that picks the best checkpoint (rsum: R@1+R@5+R@10, both ways)")
    eval_batch_size: int = Field(64, ge=1)
    progress: bool = True


class TrainConfig(_Strict):
    data: DataConfig
    model: ModelConfig
    distill: DistillConfig = DistillConfig()
    cs: CSConfig = CSConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.model.aligner is None and self.model.w_global == 0:
            raise ValueError("model.w_global is 0 and model.aligner is null: nothing to train")
        if self.loss.kind == "sigmoid" and self.distill.enabled:
            raise ValueError("loss.kind sigmoid: distill.enabled must be false (momentum distillation's soft "
                             "targets are softmax distributions, for loss.kind infonce)")
        if self.loss.kind == "infonce" and self.loss.bias is not None:
            raise ValueError("loss.bias is the sigmoid loss's starting bias; set loss.kind: sigmoid or drop it")
        if self.model.max_text_len is not None:  # the old key: one resolved form, data.max_words
            if "max_words" in self.data.model_fields_set and self.data.max_words != self.model.max_text_len:
                raise ValueError(f"model.max_text_len ({self.model.max_text_len}) is the old name of data.max_words "
                                 f"({self.data.max_words}); set data.max_words only")
            self.data.max_words, self.model.max_text_len = self.model.max_text_len, None
        if self.model.tiny.max_text_len != self.data.max_words:
            if self.model.tiny.max_text_len != TinyConfig.max_text_len:
                raise ValueError("model.tiny.max_text_len: set data.max_words instead (it serves every backbone)")
            self.model.tiny = replace(self.model.tiny, max_text_len=self.data.max_words)
        return self

    def check_paths(self, source: str = "config") -> None:
        """Files the run needs must exist before any work starts."""
        if not self.data.root.is_dir():
            raise ConfigError(f"{source}: data.root: folder {self.data.root} does not exist")
        if self.data.positives is not None and not self.data.positives.is_file():
            raise ConfigError(f"{source}: data.positives: file {self.data.positives} does not exist")
        if self.data.media is not None and not self.data.media.is_dir():
            raise ConfigError(f"{source}: data.media: folder {self.data.media} does not exist")
        if self.cs.unpaired_media is not None and not self.cs.unpaired_media.is_dir():
            raise ConfigError(f"{source}: cs.unpaired_media: folder {self.cs.unpaired_media} does not exist")
        if self.cs.unpaired_texts is not None and not self.cs.unpaired_texts.is_file():
            raise ConfigError(f"{source}: cs.unpaired_texts: file {self.cs.unpaired_texts} does not exist")
        if self.model.backbone != "tiny" and not Path(self.model.backbone).is_dir():
            raise ConfigError(f"{source}: model.backbone: folder {self.model.backbone} does not exist "
                              "(a local CLIP or SigLIP folder, or 'tiny')")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_dotted(d: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: override {key}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def _format_errors(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ").removeprefix(f"{key}: ")  # the key is said once
        if err["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {key}: {msg}" + (f" (got {err['input']!r})" if err["type"] not in
                                          ("missing", "extra_forbidden", "unexpected_keyword_argument")
                                          and "input" in err
                                          and not isinstance(err["input"], dict) else ""))
    return f"{source}: invalid configuration\n" + "\n".join(lines)


def load_config(path: str | Path | None, overrides: Sequence[str] = (), *, data: dict | None = None,
                check_paths: bool = True) -> TrainConfig:
    """Read ``path`` (YAML), apply ``key=value`` overrides, validate; ``ConfigError`` if bad.

    ``data`` may replace the file (a dict in the same shape), e.g. from Python code.
    """
    source = str(path) if path is not None else "config"
    if data is None:
        if path is None:
            raise ConfigError("no configuration given")
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data, model, ...), got {type(data).__name__}")
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {key}: value {text!r} is not valid YAML ({e})") from None
        _set_dotted(data, key.strip(), value, source)
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None
    if check_paths:
        cfg.check_paths(source)
    return cfg
