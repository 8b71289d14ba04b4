"""The training objective: the standard diffusion noise-prediction loss, with the connector in the path.

For a batch of VAE latents x0 and caption features, draw a timestep t uniformly from the scheduler's
training range and noise e; the frozen UNet sees x_t = sqrt(a_t) x0 + sqrt(1 - a_t) e and the
connector's tokens for (caption, t), and the loss is the MSE to the target the scheduler's
`prediction_type` names (e for SD1.5, the velocity for v-models, x0 for sample-prediction models).
Only the connector gets gradients; they flow back to it through the UNet's cross-attention.

Every random draw comes from the generator passed in, in a fixed order, so a step's loss is a pure
function of (weights, batch, generator seed): resuming and cached features reproduce it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr

from ella_demo.core.connector import ELLA


@dataclass(frozen=True)
class LossOptions:
    """caption_dropout: share of captions replaced by the empty prompt (for classifier-free guidance).
    min_snr_gamma: Min-SNR weighting (Hang et al. 2023) when set. with_clip: `ella+clip` mode, where
    the UNet reads CLIP's tokens followed by the connector's. timesteps: (low, high) draws training
    timesteps uniformly from [low, high) instead of the whole schedule."""

    caption_dropout: float = 0.1
    min_snr_gamma: float | None = None
    with_clip: bool = False
    timesteps: tuple[int, int] | None = None


@dataclass
class LossInputs:
    """One micro-batch, encoded.

    latents: (B, 4, h, w) scaled VAE latents x0. text_features: (B, L, C) text-encoder features.
    clip_features: (B, 77, D) or None. empty_text (1, L, C) and empty_clip (1, 77, D) or None: the
    empty prompt's features, substituted for dropped captions.
    """

    latents: torch.Tensor
    text_features: torch.Tensor
    clip_features: torch.Tensor | None
    empty_text: torch.Tensor
    empty_clip: torch.Tensor | None


def noise_scheduler_for(scheduler_config: dict) -> DDPMScheduler:
    """The training-time forward process of the model's own scheduler config (same betas, same prediction type)."""
    return DDPMScheduler.from_config(scheduler_config)


def diffusion_loss(
    unet: UNet2DConditionModel,
    connector: ELLA | torch.nn.Module,
    noise_scheduler: DDPMScheduler,
    inputs: LossInputs,
    options: LossOptions,
    generator: torch.Generator,
) -> torch.Tensor:
    """The batch's mean loss (a float32 scalar), differentiable with respect to the connector only.

    Random draws, in this order, all from `generator`: noise (B, 4, h, w), timesteps (B,), which
    captions to drop (B,).
    """
    latents = inputs.latents
    batch, device = latents.shape[0], latents.device
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    low, high = options.timesteps or (0, noise_scheduler.config.num_train_timesteps)
    timesteps = torch.randint(low, high, (batch,), generator=generator, device=device)
    dropped = torch.rand(batch, generator=generator, device=device) < options.caption_dropout
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)

    # The connector trains in float32 (autocast lowers its matmuls under mixed precision).
    text = _drop_captions(inputs.text_features, inputs.empty_text, dropped).float()
    tokens = connector(text, timesteps).to(unet.dtype)
    if options.with_clip:
        clip = _drop_captions(inputs.clip_features, inputs.empty_clip, dropped).to(unet.dtype)
        tokens = torch.cat([clip, tokens], dim=1)
    prediction = unet(noisy.to(unet.dtype), timesteps, encoder_hidden_states=tokens).sample.float()

    target = _target(noise_scheduler, latents, noise, timesteps).float()
    per_sample = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    if options.min_snr_gamma is not None:
        per_sample = per_sample * _min_snr_weights(noise_scheduler, timesteps, options.min_snr_gamma)
    return per_sample.mean()


def _drop_captions(features: torch.Tensor, empty: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """(B, L, C) with the rows where `dropped` (B,) is True replaced by the empty prompt's (1, L, C)."""
    return torch.where(dropped[:, None, None], empty.to(features.dtype), features)


def _target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(f"the scheduler's prediction_type {prediction_type!r} is not one a UNet is trained for")


def _min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B,) loss weights min(SNR, gamma) / SNR, or / (SNR + 1) for v-prediction (Min-SNR, section 3.4)."""
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if scheduler.config.prediction_type == "sample":
        return clipped
    return clipped / snr
