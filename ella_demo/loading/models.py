"""`load_models`: a preset (or hub ids and local paths) in, the loaded-models container out.

Weightless presets are built from the shipped configs; real weights are resolved part by part
(connector, T5, SD1.5), every missing file named at once, then loaded strictly.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import StableDiffusionPipeline
from transformers import T5EncoderModel

from ella_demo.core.devices import Placement, choose_placement
from ella_demo.core.errors import InputError
from ella_demo.core.models import LoadedModels
from ella_demo.loading.checkpoint import load_ella_checkpoint, resolve_ella_file
from ella_demo.loading.hub import OFFLINE_ADVICE, MissingFilesError, ModelSourceError, parse_source
from ella_demo.loading.presets import Components, build_weightless_components
from ella_demo.loading.sd15 import load_diffusers_sd, load_single_file_sd, resolve_sd_folder, use_safetensors
from ella_demo.loading.shipped import read_weightless_configs
from ella_demo.loading.sources import DEFAULT_SOURCES, PRESETS, WEIGHTLESS_PRESETS
from ella_demo.loading.t5 import load_t5_tokenizer, resolve_t5_folder


def load_models(
    preset: str = "sd15",
    *,
    sd15: str | None = None,
    ella: str | None = None,
    t5: str | None = None,
    sd15_config: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    t5_dtype: str | None = None,
    allow_pickle: bool = False,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> LoadedModels:
    """Load a preset.

    Args:
        preset: "sd15" (real weights), "tiny" or "random-sd15" (weightless, see presets.py).
        sd15, ella, t5: override a part of the sd15 preset with a hub id ("org/name", optionally
            followed by a path inside the repo) or a local path. sd15 may be a diffusers folder
            or one `.safetensors` file of an SD1.5-derived checkpoint; ella a `.safetensors`
            file or a folder holding `ella-sd1.5-tsc-t5xl.safetensors`; t5 a folder with a
            T5 encoder and its tokenizer.
        sd15_config: diffusers config folder used to read a single-file checkpoint (default:
            the SD1.5 configs shipped in ella_demo/loading/configs/sd15). Its tokenizer comes from the
            folder's `tokenizer/` if present, else from the SD1.5 hub repo.
        device, dtype, t5_dtype: see `devices.choose_placement`.
        allow_pickle: allow `.bin`/`.ckpt` weights for SD1.5 and T5 (pickle can run code; off
            by default). The connector always loads from safetensors.
        cache_dir: hub cache folder (default: the huggingface_hub default).
        seed: weight seed of the weightless presets.
    """
    if preset not in PRESETS:
        raise InputError("preset", f"must be one of {', '.join(PRESETS)}, got {preset!r}.")
    placement = choose_placement(device, dtype, t5_dtype)
    if preset in WEIGHTLESS_PRESETS:
        overrides = [name for name, value in (("sd15", sd15), ("ella", ella), ("t5", t5)) if value]
        if overrides:
            raise InputError(
                overrides[0], f"is for preset sd15 only: preset {preset} builds its own weights. Drop it, or use sd15."
            )
        components = build_weightless_components(read_weightless_configs(preset), placement, seed)
        sources = {"weights": f"random (seed {seed}), {preset} architecture"}
    else:
        components, sources = _load_pretrained(placement, sd15, ella, t5, sd15_config, allow_pickle, cache_dir)
    _check_compatible(components)
    return assemble_models(components, placement, preset, sources, random_weights=preset in WEIGHTLESS_PRESETS)


def assemble_models(
    components: Components, placement: Placement, preset: str, sources: dict[str, str], random_weights: bool
) -> LoadedModels:
    """Put built or loaded components on the device, frozen, inside the container every run uses."""
    pipe = StableDiffusionPipeline(
        vae=components.vae.to(placement.device),
        text_encoder=components.text_encoder.to(placement.device),
        tokenizer=components.tokenizer,
        unet=components.unet.to(placement.device),
        scheduler=components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    # Inference only: no module ever needs gradients, and frozen parameters keep autograd out.
    for module in (components.unet, components.vae, components.text_encoder, components.t5, components.ella):
        module.requires_grad_(False).eval()
    return LoadedModels(
        pipe=pipe,
        ella=components.ella.to(placement.device),
        t5=components.t5.to(placement.device),
        t5_tokenizer=components.t5_tokenizer,
        placement=placement,
        preset=preset,
        random_weights=random_weights,
        sources=sources,
    )


def _check_compatible(components: Components) -> None:
    """The three parts must agree on widths, or generation would fail deep inside the UNet."""
    ella_config = components.ella.config
    cross = components.unet.config.cross_attention_dim
    problems = []
    if cross != ella_config.width:
        problems.append(f"the UNet reads {cross}-wide tokens but the connector makes {ella_config.width}-wide ones")
    if components.text_encoder.config.hidden_size != cross:
        problems.append(f"CLIP makes {components.text_encoder.config.hidden_size}-wide tokens, the UNet reads {cross}")
    if components.t5.config.d_model != ella_config.input_dim:
        problems.append(
            f"T5 makes {components.t5.config.d_model}-wide features, the connector reads {ella_config.input_dim}"
        )
    if problems:
        raise ModelSourceError(
            "These models do not fit together: " + "; ".join(problems) + ". ELLA for SD1.5 needs an "
            "SD1.5-family UNet (cross-attention width 768) and the FLAN-T5-XL encoder (width 2048)."
        )


def _load_pretrained(
    placement: Placement,
    sd15: str | None,
    ella: str | None,
    t5: str | None,
    sd15_config: str | Path | None,
    allow_pickle: bool,
    cache_dir: str | Path | None,
) -> tuple[Components, dict[str, str]]:
    sd15_source = parse_source(sd15) if sd15 else DEFAULT_SOURCES["sd15"]
    ella_source = parse_source(ella) if ella else DEFAULT_SOURCES["ella"]
    t5_source = parse_source(t5) if t5 else DEFAULT_SOURCES["t5"]

    # Resolve every part before loading any, so that one error names everything that is missing.
    missing: list[MissingFilesError] = []
    resolved = []
    for resolve in (
        lambda: resolve_ella_file(ella_source, cache_dir),
        lambda: resolve_t5_folder(t5_source, allow_pickle, cache_dir),
        lambda: resolve_sd_folder(sd15_source, placement, allow_pickle, cache_dir),
    ):
        try:
            resolved.append(resolve())
        except MissingFilesError as error:
            missing.append(error)
    if len(missing) == 1:
        raise missing[0]
    if missing:
        summaries = "\n".join(f"- {error.summary}" for error in missing)
        raise ModelSourceError(f"Could not get:\n{summaries}\n{OFFLINE_ADVICE}\nDetails: {missing[-1].detail}")
    ella_path, t5_folder, sd_path = resolved
    if sd_path.is_file():
        sd_parts = load_single_file_sd(sd_path, sd15_config, placement, allow_pickle, cache_dir)
    else:
        sd_parts = load_diffusers_sd(sd_path, placement, allow_pickle)
    t5_tokenizer, t5_tokenizer_source = load_t5_tokenizer(t5_folder, cache_dir)
    components = Components(
        **sd_parts,
        t5=T5EncoderModel.from_pretrained(
            t5_folder, dtype=placement.t5_dtype, use_safetensors=use_safetensors(allow_pickle)
        ),
        t5_tokenizer=t5_tokenizer,
        ella=load_ella_checkpoint(ella_path, placement.device, placement.dtype),
    )
    sources = {
        "sd15": str(sd15_source),
        "ella": str(ella_source),
        "t5": str(t5_source),
        "t5_tokenizer": t5_tokenizer_source,
    }
    return components, sources
