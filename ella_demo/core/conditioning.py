"""From prompts to what the UNet attends to: both encoders, the connector at each step, padding and masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ella_demo.core.models import LoadedModels
from ella_demo.core.settings import GenerationSettings
from ella_demo.core.text_encoding import PromptTokens, TextEncoding
from ella_demo.core.timing import PhaseTimer


@dataclass
class EncodedPrompts:
    """The prompt and negative prompt, encoded by each encoder a run needs (None for one it does not)."""

    clip_cond: TextEncoding | None
    clip_uncond: TextEncoding | None
    t5_cond: TextEncoding | None
    t5_uncond: TextEncoding | None

    def prompt_tokens(self) -> dict[str, PromptTokens]:
        """The prompt as each encoder that read it split it ("t5" first, then "clip")."""
        encodings = (("t5", self.t5_cond), ("clip", self.clip_cond))
        return {name: encoding.prompt_tokens for name, encoding in encodings if encoding is not None}

    def truncation_warnings(self) -> list[str]:
        """One note per prompt an encoder had to cut, prompts first."""
        labelled = (
            ("CLIP", self.clip_cond),
            ("T5", self.t5_cond),
            ("CLIP (negative prompt)", self.clip_uncond),
            ("T5 (negative prompt)", self.t5_uncond),
        )
        return [
            f"{label}: {encoding.truncation_message}"
            for label, encoding in labelled
            if encoding is not None and encoding.truncation_message
        ]


def encode_prompts(
    models: LoadedModels, settings: GenerationSettings, timer: PhaseTimer, prompt: str | None = None
) -> EncodedPrompts:
    """Encode `prompt` (default: settings.prompt) and the negative prompt with CLIP and/or T5 as the sides and
    mode need (cached: a repeated prompt costs nothing)."""
    prompt = settings.prompt if prompt is None else prompt
    needs_clip = settings.runs_clip or (settings.runs_ella and settings.mode == "ella+clip")
    clip_cond = clip_uncond = t5_cond = t5_uncond = None
    if needs_clip:
        with timer.phase("clip"):
            clip_cond = models.clip_encoder.encode(prompt)
            clip_uncond = models.clip_encoder.encode(settings.negative_prompt)
    if settings.runs_ella:
        with timer.phase("t5"):
            t5_cond = models.t5_encoder.encode(prompt, settings.t5_length)
            t5_uncond = models.t5_encoder.encode(settings.negative_prompt, settings.t5_length)
    return EncodedPrompts(clip_cond, clip_uncond, t5_cond, t5_uncond)


def side_conditions(
    models: LoadedModels,
    settings: GenerationSettings,
    prompts: EncodedPrompts,
    side: str,
    timestep: torch.Tensor,
    timer: PhaseTimer,
    with_attention: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """The side's conditionings for this step, each (1, L, D): [uncond, cond] or [cond].

    With `with_attention`, the ELLA side also returns the connector's attention for the prompt
    (1, layers, heads, Q, Q + L); otherwise, and for CLIP, the second item is None. The connector reads
    `timestep`, or settings.connector_timestep at every step when one is set.
    """
    guided = settings.uses_guidance
    if settings.connector_timestep is not None:
        timestep = torch.full_like(timestep, settings.connector_timestep)
    clip = [prompts.clip_uncond, prompts.clip_cond] if guided else [prompts.clip_cond]
    if side == "clip":
        return [encoding.features for encoding in clip], None
    attention = None
    with timer.phase("tsc"):
        features = prompts.t5_cond.features.to(models.device, models.dtype)
        if with_attention:
            cond, attention = models.ella(features, timestep, return_attention=True)
        else:
            cond = models.ella(features, timestep)
        tokens = [_unconditional_tokens(models, settings, prompts.t5_uncond, timestep), cond] if guided else [cond]
    if settings.mode == "ella+clip":
        tokens = [torch.cat([encoding.features, ella], dim=1) for encoding, ella in zip(clip, tokens, strict=True)]
    return tokens, attention


def _unconditional_tokens(
    models: LoadedModels, settings: GenerationSettings, encoding: TextEncoding, timestep: torch.Tensor
) -> torch.Tensor:
    """TSC output for the negative prompt: depends only on (negative prompt, length, timestep), so cached."""
    key = (settings.negative_prompt, settings.t5_length, float(timestep), str(models.device), models.dtype)
    return models.condition_cache.get_or_compute(
        key, lambda: models.ella(encoding.features.to(models.device, models.dtype), timestep)
    )


def pad_and_stack(conditions: list[torch.Tensor], count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each (1, L_i, D) repeated `count` times and zero-padded to the longest L: (B, L, D), mask (B, L).

    The mask is None when every conditioning has the same length (nothing to hide).
    """
    longest = max(condition.shape[1] for condition in conditions)
    if all(condition.shape[1] == longest for condition in conditions):
        return torch.cat([condition.expand(count, -1, -1) for condition in conditions]), None
    padded, masks = [], []
    for condition in conditions:
        length = condition.shape[1]
        padded.append(torch.nn.functional.pad(condition, (0, 0, 0, longest - length)).expand(count, -1, -1))
        mask = torch.zeros(count, longest, device=condition.device, dtype=condition.dtype)
        mask[:, :length] = 1
        masks.append(mask)
    return torch.cat(padded), torch.cat(masks)
