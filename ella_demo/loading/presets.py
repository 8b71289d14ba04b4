"""Weightless models: real diffusers/transformers classes built from configs with seeded random weights.

`tiny` is a toy-sized set that runs in seconds on a CPU; `random-sd15` is the exact published
architecture set (SD1.5 UNet and VAE, CLIP ViT-L/14 text model, FLAN-T5-XL encoder, ELLA defaults)
with the same shapes and cost as the real thing. Neither has learned anything: their images are
noise, and the UI says so. Configs are passed in as dicts (shipped.py reads them from the package),
so this module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

from ella_demo.core.connector import ELLA, EllaConfig
from ella_demo.core.devices import Placement
from ella_demo.core.schedulers import scheduler_from_config
from ella_demo.loading.toy_tokenizers import build_clip_tokenizer, build_t5_tokenizer

# Standard deviation for the connector's AdaLayerNorm projections. The release initialises them to
# zero before training; a weightless model keeps them random so that, as in the trained model,
# every block's normalisation depends on the timestep.
ADALN_RANDOM_STD = 0.02


@dataclass(frozen=True)
class WeightlessConfigs:
    """Config dicts for every component of a weightless preset."""

    unet: dict
    vae: dict
    text_encoder: dict
    scheduler: dict
    t5: dict
    ella: dict


@dataclass
class Components:
    """Everything `load_models` assembles, before it is wrapped for use."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: SchedulerMixin
    t5: T5EncoderModel
    t5_tokenizer: T5Tokenizer
    ella: ELLA


def build_weightless_components(configs: WeightlessConfigs, placement: Placement, seed: int = 0) -> Components:
    """Build all components with weights drawn from `seed`, without touching the global RNG."""
    tokenizer = build_clip_tokenizer()
    t5_tokenizer = build_t5_tokenizer()
    # The special-token ids must be the in-process tokenizer's, whatever the published config says.
    token_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    clip_config = CLIPTextConfig(**{**configs.text_encoder, **token_ids})
    t5_config = T5Config(**configs.t5)
    for name, config, size in (("CLIP", clip_config, len(tokenizer)), ("T5", t5_config, len(t5_tokenizer))):
        if config.vocab_size < size:
            raise ValueError(f"{name} vocab_size {config.vocab_size} is smaller than its tokenizer ({size} tokens)")

    devices = [placement.device] if placement.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), placement.device:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(configs.unet)
        vae = AutoencoderKL.from_config(configs.vae)
        text_encoder = CLIPTextModel(clip_config)
        t5 = T5EncoderModel(t5_config)
        ella = ELLA(EllaConfig(**configs.ella))
        for name, parameter in ella.named_parameters():
            if ".ln_" in name and ".linear." in name:
                torch.nn.init.normal_(parameter, std=ADALN_RANDOM_STD)
    # Built in float32; cast only when another dtype was asked for.
    return Components(
        unet=_cast(unet, placement.dtype),
        vae=_cast(vae, placement.dtype),
        text_encoder=_cast(text_encoder, placement.dtype),
        tokenizer=tokenizer,
        scheduler=scheduler_from_config(configs.scheduler),
        t5=_cast(t5, placement.t5_dtype),
        t5_tokenizer=t5_tokenizer,
        ella=_cast(ella, placement.dtype),
    )


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return module if dtype == torch.float32 else module.to(dtype=dtype)
