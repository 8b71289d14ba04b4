"""Stable Diffusion 1.5 in its two formats: a diffusers-layout folder (the hub's), or one checkpoint file."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ella_demo.core.devices import Placement
from ella_demo.core.schedulers import scheduler_from_config
from ella_demo.loading.hub import ModelSourceError, Requirement, fetch, missing_files, require_files
from ella_demo.loading.shipped import package_config_dir, read_json
from ella_demo.loading.sources import DEFAULT_SOURCES, HubLocation

SD15_COMPONENT_WEIGHTS = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
}
SD15_CONFIG_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
]
TOKENIZER_PATTERNS = ["tokenizer/*"]
# The CLIP tokenizer's files: its config, and its vocabulary as tokenizer.json or vocab.json (+ merges.txt).
CLIP_TOKENIZER_FILES: list[Requirement] = [
    "tokenizer/tokenizer_config.json",
    ("tokenizer/tokenizer.json", "tokenizer/vocab.json"),
]


def _weight_names(variant: str | None, allow_pickle: bool) -> dict[str, tuple[str, ...]]:
    """Weight files each SD component may have, best first."""
    suffix = f".{variant}" if variant else ""
    names = {}
    for component, stem in SD15_COMPONENT_WEIGHTS.items():
        candidates = [f"{component}/{stem}{suffix}.safetensors"]
        if allow_pickle:
            candidates.append(f"{component}/{'pytorch_model' if stem == 'model' else stem}{suffix}.bin")
        names[component] = tuple(candidates)
    return names


def _sd_requirements(variant: str | None, allow_pickle: bool) -> list[Requirement]:
    """What a diffusers-layout SD folder must hold: configs, tokenizer, one weight file per component."""
    return [*SD15_CONFIG_FILES, *CLIP_TOKENIZER_FILES, *_weight_names(variant, allow_pickle).values()]


def _choose_variant(folder: Path | None, placement: Placement) -> str | None:
    """fp16 weight files when running in fp16 (half the download), if the folder has them."""
    if placement.dtype != torch.float16:
        return None
    if folder is None:
        return "fp16"
    return "fp16" if (folder / "unet/diffusion_pytorch_model.fp16.safetensors").is_file() else None


def resolve_sd_folder(
    source: Path | HubLocation, placement: Placement, allow_pickle: bool, cache_dir: str | Path | None
) -> Path:
    """A local diffusers-layout folder or single file for the SD side, fetched if on the hub."""
    if isinstance(source, Path):
        return source
    # The weights decide whether a cached copy is enough: a download interrupted after the configs,
    # or fp32 files cached when this run wants the fp16 ones, is completed from the hub.
    variant = _choose_variant(None, placement)
    wanted = [name for names in _weight_names(variant, allow_pickle).values() for name in names]
    required = _sd_requirements(variant, allow_pickle)
    return fetch(
        source,
        SD15_CONFIG_FILES + TOKENIZER_PATTERNS + wanted,
        "Stable Diffusion 1.5 weights",
        cache_dir,
        lambda folder: missing_files(folder, required),
    )


def load_diffusers_sd(folder: Path, placement: Placement, allow_pickle: bool) -> dict:
    """UNet, VAE, CLIP and scheduler from a diffusers-layout folder."""
    variant = _choose_variant(folder, placement)
    require_files(folder, [*SD15_CONFIG_FILES, *CLIP_TOKENIZER_FILES], "Stable Diffusion")
    for component, candidates in _weight_names(variant, allow_pickle).items():
        if not any((folder / name).is_file() for name in candidates):
            raise ModelSourceError(
                f"The Stable Diffusion folder {folder} has no {component} weights: expected {' or '.join(candidates)}"
                + ("" if allow_pickle else " (pickle .bin files are only read with --allow-pickle)")
                + "."
            )
    common = {"variant": variant, "use_safetensors": use_safetensors(allow_pickle)}
    return {
        "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=placement.dtype, **common),
        "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=placement.dtype, **common),
        "text_encoder": CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", dtype=placement.dtype, **common
        ),
        "tokenizer": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        "scheduler": _read_scheduler(folder),
    }


def load_single_file_sd(
    path: Path,
    config_dir: str | Path | None,
    placement: Placement,
    allow_pickle: bool,
    cache_dir: str | Path | None,
) -> dict:
    """An SD1.5-derived community checkpoint in one file, read offline with shipped configs."""
    if path.suffix != ".safetensors" and not allow_pickle:
        raise ModelSourceError(
            f"{path.name} is not a .safetensors file. Pickle checkpoints (.ckpt, .bin) can run code when "
            "loaded; convert it to safetensors, or pass --allow-pickle if you trust its source."
        )
    config_dir = Path(config_dir) if config_dir else package_config_dir("sd15")
    require_files(config_dir, SD15_CONFIG_FILES, "single-file config")
    if (config_dir / "tokenizer").is_dir():
        tokenizer_folder = config_dir
    else:
        tokenizer_folder = fetch(
            DEFAULT_SOURCES["sd15"],
            TOKENIZER_PATTERNS,
            "CLIP tokenizer files",
            cache_dir,
            lambda folder: missing_files(folder, CLIP_TOKENIZER_FILES),
        )
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder, subfolder="tokenizer")
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config_dir),
            tokenizer=tokenizer,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=True,
            torch_dtype=placement.dtype,
        )
    except Exception as error:
        raise ModelSourceError(
            f"Could not read {path} as a Stable Diffusion 1.5 checkpoint ({type(error).__name__}: {error}). "
            "Single files must be SD1.5-family checkpoints in the original (LDM) layout."
        ) from error
    return {
        "unet": pipe.unet,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "tokenizer": tokenizer,
        "scheduler": _read_scheduler(config_dir),
    }


def use_safetensors(allow_pickle: bool) -> bool | None:
    """diffusers/transformers `use_safetensors`: True reads safetensors only; None prefers them and
    falls back to pickle files (False would read pickle files only, missing safetensors-only folders)."""
    return None if allow_pickle else True


def _read_scheduler(folder: Path):
    """The scheduler of a diffusers-layout folder, as its config file describes it (SD1.5: PNDM)."""
    try:
        return scheduler_from_config(read_json(folder / "scheduler" / "scheduler_config.json"))
    except ValueError as error:
        raise ModelSourceError(f"{folder / 'scheduler'}: {error}.") from error
