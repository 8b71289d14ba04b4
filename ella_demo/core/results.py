"""What a run returns, and what a per-step callback sees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ella_demo.core.models import ModelProvenance
from ella_demo.core.settings import GenerationSettings
from ella_demo.core.text_encoding import PromptTokens

if TYPE_CHECKING:
    from ella_demo.core.tracing import Trace


@dataclass(frozen=True)
class StepEnd:
    """What `callback_on_step_end` receives after each step.

    step: 0-based index of the step just run, of `num_steps`. timestep: its scheduler timestep.
    tensors: the names the caller asked for, each per side ("clip", "ella") where it has sides:
    latents (N, 4, h, w) after the step; model_inputs (N, 4, h, w) the scheduler-scaled latents
    the UNet saw; noise_predictions (N, 4, h, w) after guidance; connector_attention
    (1, layers, heads, Q, Q + L) the connector's attention for the prompt (ELLA side only).
    """

    step: int
    num_steps: int
    timestep: torch.Tensor
    tensors: dict


StepCallback = Callable[[StepEnd], None]


@dataclass
class GenerationResult:
    """The output of one generation.

    clip_images / ella_images: PIL images (empty for a side that was not run, or output_type="latent").
    clip_pixels / ella_pixels: the same as float32 arrays (N, H, W, 3) in [0, 1], or None.
    latents: side -> (N, 4, h, w) final latents on the CPU, before VAE decoding.
    timesteps: (S,) the timesteps actually run; S can differ from `num_inference_steps` (PNDM
    runs one more). timings: seconds per phase (t5, clip, tsc, unet, vae, total). provenance: which
    models made the run and where they ran. seeding: how the noise was drawn, in words.
    prompt_tokens: "t5" / "clip" -> the prompt as that encoder split it, so writers never re-encode.
    warnings: user-facing notes such as prompt truncation.
    """

    settings: GenerationSettings
    clip_images: list[Image.Image]
    ella_images: list[Image.Image]
    clip_pixels: np.ndarray | None
    ella_pixels: np.ndarray | None
    latents: dict[str, torch.Tensor]
    timesteps: np.ndarray
    timings: dict[str, float]
    provenance: ModelProvenance
    trace: Trace | None = None
    seeding: str = ""
    prompt_tokens: dict[str, PromptTokens] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def random_weights(self) -> bool:
        """True when the images come from a weightless preset: they are noise."""
        return self.provenance.random_weights

    @property
    def tokens(self) -> dict:
        """The prompt's tokens per encoder, and its words as [text, token indices] (what meta.json records)."""
        record = {}
        for name, split in self.prompt_tokens.items():
            record[name] = list(split.tokens)
            record[f"{name}_words"] = [[word.text, list(word.token_indices)] for word in split.words]
        return record
