"""`python -m ella_demo pocket diagnose`: how much the pocket UNet and CLIP depend on shape and colour words.

On single-object training captions, each with its shape-swapped twin in the same wording
(captions.training_example_with_shape_negative) and a copy with its object's colour word changed:
- loss ratios: the UNet's noise-prediction loss given the twin, the colour-changed caption or the
  empty prompt, over its loss given the true caption, per timestep (same latents, noise and timesteps);
- padding shifts: the mean distance between the CLIP's states after the caption (the padding, where a
  causal text tower's summary of the caption lands) for the true caption and for each variant;
- attention shares: the part of the UNet's cross-attention (mean over heads, pixels and resolutions,
  with the true caption) on the shape word, the colour word and the padding after the caption.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ella_demo.core.models import LoadedModels
from ella_demo.core.tracing import CrossAttentionRecorder
from ella_demo.pocket.captions import PocketPrompt, training_example_with_shape_negative
from ella_demo.pocket.stages import PassThrough, clip_input_ids, pictures_of
from ella_demo.pocket.vocabulary import COLOURS
from ella_demo.train.objective import LossInputs, LossOptions, diffusion_loss, noise_scheduler_for

VARIANTS = ("shape", "colour", "empty")
DIAGNOSED_TIMESTEPS = (100, 300, 500, 700, 900)


@dataclass(frozen=True)
class CaptionVariants:
    """prompts[i]: a single-object training caption; texts[name][i] its variant ("true", "shape", "colour")."""

    prompts: list[PocketPrompt]
    texts: dict[str, list[str]]


def single_object_variants(count: int, seed: int) -> CaptionVariants:
    """`count` single-object training captions with their shape-swapped and colour-changed variants."""
    rng, pairs = np.random.default_rng([seed, 7]), []
    while len(pairs) < count:
        prompt, twin = training_example_with_shape_negative(rng)
        if len(prompt.scene.entities) == 1 and prompt.scene.entities[0].count == 1:
            pairs.append((prompt, twin))
    prompts = [prompt for prompt, _ in pairs]
    return CaptionVariants(prompts, {"true": [prompt.text for prompt in prompts],
                                     "shape": [twin.text for _, twin in pairs],
                                     "colour": [_colour_changed(prompt) for prompt in prompts]})  # fmt: skip


def _colour_changed(prompt: PocketPrompt) -> str:
    """The caption with its object's colour word replaced by the next colour (backgrounds use other words)."""
    names = list(COLOURS)
    colour = prompt.scene.entities[0].colour
    return re.sub(rf"\b{colour}\b", names[(names.index(colour) + 1) % len(names)], prompt.text, count=1)


@torch.no_grad()
def _clip_states(models: LoadedModels, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 77, D) float32 last hidden states of the pocket CLIP, and (B, 77) token ids."""
    ids = clip_input_ids(models.pipe.tokenizer, texts).to(models.pipe.text_encoder.device)
    return models.pipe.text_encoder(ids).last_hidden_state.float(), ids


@torch.no_grad()
def loss_ratios(models: LoadedModels, variants: CaptionVariants, timesteps=DIAGNOSED_TIMESTEPS,
                seed: int = 0) -> dict[int, dict[str, float]]:  # fmt: skip
    """timestep -> variant -> (mean training loss given the variant) / (given the true caption).

    The loss is the UNet stage's own (`diffusion_loss`, no caption dropout) at one timestep, with the same
    noise for every variant."""
    pipe = models.pipe
    images = pictures_of(variants.prompts).to(pipe.vae.device, pipe.vae.dtype)
    latents = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor
    texts = variants.texts | {"empty": [""] * len(variants.prompts)}
    states = {name: _clip_states(models, texts[name])[0] for name in ("true", *VARIANTS)}
    noise_scheduler = noise_scheduler_for(pipe.scheduler.config)
    ratios = {}
    for timestep in timesteps:
        options = LossOptions(caption_dropout=0.0, timesteps=(timestep, timestep + 1))
        loss = {name: float(diffusion_loss(pipe.unet, PassThrough(), noise_scheduler,
                                           LossInputs(latents, state, None, states["empty"][:1], None), options,
                                           torch.Generator().manual_seed(seed + timestep)))
                for name, state in states.items()}  # fmt: skip
        ratios[timestep] = {name: loss[name] / loss["true"] for name in VARIANTS}
    return ratios


def padding_shifts(models: LoadedModels, variants: CaptionVariants) -> dict[str, float]:
    """variant -> mean distance between the true caption's and the variant's padding states; "norm": their size."""
    true, ids = _clip_states(models, variants.texts["true"])
    padding = _padding_mask(models, ids)
    shifts = {name: float((true - _clip_states(models, variants.texts[name])[0]).norm(dim=-1)[padding].mean())
              for name in ("shape", "colour")}  # fmt: skip
    return shifts | {"norm": float(true.norm(dim=-1)[padding].mean())}


def _padding_mask(models: LoadedModels, ids: torch.Tensor) -> torch.Tensor:
    """(B, 77) True after each caption's end token (the pocket CLIP pads with its end token)."""
    ends = (ids == models.pipe.tokenizer.eos_token_id).int().argmax(dim=1, keepdim=True)
    return torch.arange(ids.shape[1], device=ids.device)[None] > ends


@torch.no_grad()
def attention_shares(models: LoadedModels, variants: CaptionVariants, timesteps=DIAGNOSED_TIMESTEPS,
                     seed: int = 0) -> dict[str, float]:  # fmt: skip
    """word kind ("shape", "colour", "padding") -> mean share of the UNet's cross-attention on those tokens."""
    pipe, count = models.pipe, len(variants.prompts)
    states, ids = _clip_states(models, variants.texts["true"])
    size = pipe.unet.config.sample_size
    recorder = CrossAttentionRecorder({str(row): (row, ids.shape[1]) for row in range(count)}, (size, size),
                                      len(timesteps), pipe.unet.device)  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    for step, timestep in enumerate(timesteps):
        recorder.step = step
        noise = torch.randn((count, pipe.unet.config.in_channels, size, size), generator=generator)
        pipe.unet(noise.to(pipe.unet.device, pipe.unet.dtype), timestep, states.to(pipe.unet.dtype),
                  cross_attention_kwargs={"recorder": recorder})  # fmt: skip
    # (count, 77): each caption's attention per token, averaged over steps, pixels and resolutions
    per_token = torch.stack([torch.stack([torch.from_numpy(maps).float().mean(dim=(0, 1, 2)) for maps in
                                          recorder.results()[str(row)][0].values()]).mean(dim=0)
                             for row in range(count)])  # fmt: skip
    kinds = {"shape": _word_mask(models, ids, [p.scene.entities[0].shape for p in variants.prompts]),
             "colour": _word_mask(models, ids, [p.scene.entities[0].colour for p in variants.prompts]),
             "padding": _padding_mask(models, ids).cpu()}  # fmt: skip
    return {kind: float((per_token * mask).sum(dim=1).mean()) for kind, mask in kinds.items()}


def _word_mask(models: LoadedModels, ids: torch.Tensor, words: list[str]) -> torch.Tensor:
    """(B, 77) True at the token of words[i] in caption i (the pocket tokenizer keeps caption words whole)."""
    tokens = [models.pipe.tokenizer(word, add_special_tokens=False).input_ids for word in words]
    return torch.stack([ids[row].cpu() == token[0] for row, token in enumerate(tokens)])


def diagnose(models: LoadedModels, count: int = 48, seed: int = 0) -> dict:
    """All three measurements on `count` single-object captions drawn with `seed`."""
    variants = single_object_variants(count, seed)
    return {"captions": count, "seed": seed, "loss_ratios": loss_ratios(models, variants, seed=seed),
            "padding_shifts": padding_shifts(models, variants),
            "attention_shares": attention_shares(models, variants, seed=seed)}  # fmt: skip


def markdown(report: dict) -> str:
    """The report as two small tables and a line."""
    lines = ["| timestep | " + " | ".join(f"{name} / true" for name in VARIANTS) + " |", "| --- |" + " --- |" * 3]
    for timestep, ratios in report["loss_ratios"].items():
        lines.append(f"| {timestep} | " + " | ".join(f"{ratios[name]:.3f}" for name in VARIANTS) + " |")
    shares = report["attention_shares"]
    shifts = report["padding_shifts"]
    lines += ["", "attention shares: " + ", ".join(f"{kind} {100 * share:.1f}%" for kind, share in shares.items()),
              f"padding-state shift: shape {shifts['shape']:.2f}, colour {shifts['colour']:.2f} "
              f"(state norm {shifts['norm']:.2f}); {report['captions']} captions, seed {report['seed']}"]  # fmt: skip
    return "\n".join(lines)
