"""What one training run is asked to do: `TrainConfig`, its defaults (the paper's recipe) and its checks.

Defaults follow ELLA's paper (arXiv 2403.05135, sections 3.2 and 5.1) where it says something:
noise-prediction MSE at uniformly sampled timesteps, AdamW with a constant learning rate of 1e-4
and weight decay 0.01, gradient clipping at 1.0, T5 features of 128 tokens, everything but the
connector frozen. Where the paper is silent the default is our choice and says so below.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ella_demo.core.errors import InputError
from ella_demo.core.settings import MODES

# Prompts for the validation pairs when the user gives none: dense, with attributes and relations,
# in the style ELLA was built for.
DEFAULT_VALIDATION_PROMPTS = (
    "a red cube to the left of a small blue ball on a wooden table",
    "two yellow birds sitting above a green door, watercolor",
)
LATEST = "latest"


@dataclass(frozen=True)
class TrainConfig:
    """Every choice of a training run; `python -m ella_demo train` fills it from its flags.

    Models are chosen as for `generate` (`preset`, `sd15`, `t5`, or `text_encoder` for any
    transformers encoder). `ella` is a connector checkpoint to start from; None starts from scratch
    (the released model's initialisation).
    """

    train_data: str
    out: Path
    # models
    preset: str = "sd15"
    sd15: str | None = None
    ella: str | None = None
    t5: str | None = None
    text_encoder: str | None = None
    device: str = "auto"
    dtype: str | None = None  # the frozen models' dtype: default fp16 on a GPU, fp32 on a CPU
    t5_dtype: str | None = None
    allow_pickle: bool = False
    cache_dir: Path | None = None
    # data
    image_column: str = "image"
    caption_column: str = "text"
    resolution: int = 512
    num_workers: int = 0
    feature_cache: Path | None = None
    # the paper's recipe
    batch_size: int = 8  # per process; the paper does not give its batch size (our choice)
    max_steps: int = 1000
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    t5_length: int = 128
    # our choices where the paper is silent
    caption_dropout: float = 0.1
    min_snr_gamma: float | None = None
    ema_decay: float | None = None
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    mode: str = "ella"
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    resume: str | None = None
    validate_every: int = 500
    validation_prompts: tuple[str, ...] = field(default=DEFAULT_VALIDATION_PROMPTS)
    validation_steps: int = 25
    progress: bool = True

    def to_dict(self) -> dict:
        """JSON-ready: paths as strings."""
        return json.loads(json.dumps(asdict(self), default=str))

    def recipe(self) -> dict:
        """The settings a resumed run must share with the run it continues (not paths or bookkeeping)."""
        keys = ("preset", "sd15", "ella", "t5", "text_encoder", "train_data", "image_column", "caption_column",
                "resolution", "batch_size", "learning_rate", "weight_decay", "max_grad_norm", "t5_length",
                "caption_dropout", "min_snr_gamma", "ema_decay", "gradient_accumulation", "mode", "seed")  # fmt: skip
        values = self.to_dict()
        return {key: values[key] for key in keys}


def validate(config: TrainConfig) -> None:
    """Raise an InputError naming the first setting that cannot work, before any model is loaded."""
    positive_ints = ("resolution", "batch_size", "max_steps", "t5_length", "gradient_accumulation",
                     "checkpoint_every", "keep_checkpoints", "validate_every", "validation_steps")  # fmt: skip
    for name in positive_ints:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(name, f"must be a whole number of at least 1, got {value!r}.")
    if config.resolution % 8:
        raise InputError("resolution", f"must be a multiple of 8 (the VAE's downsampling), got {config.resolution}.")
    if config.num_workers < 0:
        raise InputError("num_workers", f"must be 0 or more, got {config.num_workers}.")
    for name in ("learning_rate", "max_grad_norm"):
        _check_positive(name, getattr(config, name))
    if not (math.isfinite(config.weight_decay) and config.weight_decay >= 0):
        raise InputError("weight_decay", f"must be 0 or more, got {config.weight_decay}.")
    if not 0 <= config.caption_dropout < 1:
        raise InputError("caption_dropout", f"must be in [0, 1), got {config.caption_dropout}.")
    if config.min_snr_gamma is not None:
        _check_positive("min_snr_gamma", config.min_snr_gamma)
    if config.ema_decay is not None and not 0 < config.ema_decay < 1:
        raise InputError("ema_decay", f"must be in (0, 1), such as 0.9999, got {config.ema_decay}.")
    if config.mode not in MODES:
        raise InputError("mode", f"must be one of {', '.join(MODES)}, got {config.mode!r}.")
    if config.t5 and config.text_encoder:
        raise InputError("text_encoder", "replaces T5: give either it or t5, not both.")
    if not str(config.train_data).strip():
        raise InputError("train_data", "is empty: give an image folder with metadata.jsonl or a dataset id.")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InputError(name, f"must be a positive number, got {value!r}.")
