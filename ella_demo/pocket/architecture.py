"""The pocket models' sizes, as shipped in ella_demo/loading/configs/pocket: small enough to train on a laptop CPU.

The world is a diffusers Stable Diffusion folder in miniature (`vae/`, `text_encoder/`, `tokenizer/`,
`unet/`, `scheduler/`, `model_index.json`) plus a connector, so the app loads it as it loads SD1.5.
Pictures are 64x64 RGB; the VAE reduces them 4x to 16x16x4 latents; the UNet cross-attends at 16x16
and 8x8 to 128-wide tokens: the pocket CLIP's 77, or the connector's (the released ELLA's architecture,
EllaConfig's defaults, with width 128 and MiniLM's 384 inputs). Every function returns
a fresh dict, so a caller may change it (the tests shrink the models further).
"""

from __future__ import annotations

from ella_demo.loading.shipped import package_config_dir, read_json

CLIP_MAX_LENGTH = 77


def _shipped(name: str) -> dict:
    return read_json(package_config_dir("pocket") / name)


def vae_config() -> dict:
    """AutoencoderKL keyword arguments: 64 px pictures to 16x16x4 latents."""
    return _shipped("vae/config.json")


def clip_text_config(vocab_size: int) -> dict:
    """CLIPTextConfig keyword arguments for a tokenizer of `vocab_size` tokens."""
    return _shipped("text_encoder/config.json") | {"vocab_size": vocab_size}


def clip_vision_config() -> dict:
    """CLIPVisionConfig keyword arguments: the vision tower used only to train the text tower, then dropped."""
    return _shipped("clip_vision.json")


def unet_config() -> dict:
    """UNet2DConditionModel keyword arguments: 16x16x4 latents, cross-attention at 16x16 and 8x8."""
    return _shipped("unet/config.json")


def scheduler_config() -> dict:
    """DDPM's linear noise schedule (betas 1e-4 to 0.02 over 1,000 steps, noise prediction): alpha-bar 4e-5 at
    t=999, where SD1.5's scaled-linear schedule leaves 0.0047, too little noise for 16x16 latents."""
    return _shipped("scheduler/scheduler_config.json")
