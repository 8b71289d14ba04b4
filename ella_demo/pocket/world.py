"""Writing the world folder: each stage exports its trained model there, in the diffusers SD layout.

`vae/`, `text_encoder/`, `tokenizer/`, `unet/`, `scheduler/`, `model_index.json` (what diffusers'
StableDiffusionPipeline and the app's SD loader read) and `ella.safetensors` (the connector). Weights
are written in float16 by default: the shipped world must stay small, and the app casts them to its
dtype when it loads them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from ella_demo.pocket.architecture import scheduler_config
from ella_demo.pocket.stages import ClipStage, UNetStage, VaeStage

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _save(module: torch.nn.Module, folder: Path, dtype: torch.dtype) -> None:
    """save_pretrained (safetensors) of a copy in `dtype`: `module` stays as it is, for training to go on."""
    saved = copy.deepcopy(module)
    # torch's own `to`: diffusers' override warns about modules to keep in float32, which these models lack.
    torch.nn.Module.to(saved, dtype)
    saved.save_pretrained(folder, safe_serialization=True)


def export_vae(stage: VaeStage, world: Path, dtype: torch.dtype = torch.float16) -> float:
    """Write `vae/` with the latent scaling factor measured on fresh pictures; returns that factor."""
    scale = stage.latent_scale()
    stage.vae.register_to_config(scaling_factor=scale)
    _save(stage.vae, world / "vae", dtype)
    return scale


def export_clip(stage: ClipStage, world: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write `text_encoder/` (the text tower alone) and `tokenizer/`."""
    _save(stage.text_model(), world / "text_encoder", dtype)
    stage.tokenizer.save_pretrained(world / "tokenizer")


def export_unet(stage: UNetStage, world: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write `unet/`, `scheduler/` and `model_index.json`: after this the world is a complete SD folder."""
    _save(stage.unet, world / "unet", dtype)
    DDPMScheduler.from_config(scheduler_config()).save_pretrained(world / "scheduler")
    (world / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
