"""`load_models`: a preset (or hub ids and local paths) in, the loaded-models container out.

Weightless presets are built from the shipped configs; real weights are resolved part by part
(connector, text encoder, SD1.5), every missing file named at once, then loaded strictly. The
connector and the text encoder can be replaced in every preset: by a checkpoint or a new untrained
connector (`ella="scratch"`, what connector training starts from), and by any transformers text
encoder (`text_encoder=`) for a connector trained on one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from ella_demo.core.connector import ELLA, EllaConfig
from ella_demo.core.devices import Placement, choose_placement
from ella_demo.core.errors import InputError
from ella_demo.core.models import LoadedModels
from ella_demo.loading.additions import Additions, T5Memory
from ella_demo.loading.checkpoint import load_ella_checkpoint, resolve_ella_file
from ella_demo.loading.hub import OFFLINE_ADVICE, MissingFilesError, ModelSourceError, parse_source
from ella_demo.loading.pocket import pocket_sources
from ella_demo.loading.presets import Components, build_weightless_components
from ella_demo.loading.sd15 import load_diffusers_sd, load_single_file_sd, resolve_sd_folder
from ella_demo.loading.shipped import read_weightless_configs
from ella_demo.loading.sources import DEFAULT_SOURCES, ELLA_SCRATCH, PRESETS, WEIGHTLESS_PRESETS, HubLocation
from ella_demo.loading.t5 import load_t5, resolve_t5_folder
from ella_demo.loading.text_encoders import load_text_encoder, resolve_text_encoder_folder, text_width

# Where a part comes from: a local path, a hub location, or (the connector only) ELLA_SCRATCH.
Source = Path | HubLocation | str


def load_models(
    preset: str = "sd15",
    *,
    sd15: str | None = None,
    ella: str | None = None,
    t5: str | None = None,
    text_encoder: str | None = None,
    sd15_config: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    t5_dtype: str | None = None,
    allow_pickle: bool = False,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    memory: T5Memory | None = None,
    additions: Additions | None = None,
) -> LoadedModels:
    """Load a preset, with any of its parts replaced by a hub id ("org/name[/path/in/repo]") or a local path.

    Args:
        preset: "sd15" (real weights), "pocket" (the trained toy world, loading/pocket.py), "tiny" or
            "random-sd15" (weightless, see presets.py).
        sd15: sd15 preset: a diffusers folder or `.safetensors` file of an SD1.5-derived model; pocket: a world.
        t5: sd15 preset only: a folder with a T5 encoder and its tokenizer.
        ella: any preset. A `.safetensors` file or a folder holding `ella-sd1.5-tsc-t5xl.safetensors` (replacing a
            weightless preset's random connector), or "scratch": a new, untrained connector that fits the UNet and
            the text encoder (`new_connector`; nothing is downloaded), its other sizes the preset's.
        text_encoder: any preset, not with t5: any transformers text encoder with its tokenizer,
            instead of T5. The connector must have been trained with it (or be "scratch").
        sd15_config: diffusers config folder to read a single-file checkpoint with (default: loading/configs/sd15);
            its `tokenizer/` if it has one, else the SD1.5 hub repo's.
        device, dtype, t5_dtype: see `devices.choose_placement`; t5_dtype is text_encoder's too.
        allow_pickle: allow `.bin`/`.ckpt` weights for SD1.5 and the text encoder (pickle can run
            code; off by default). The connector always loads from safetensors.
        cache_dir: hub cache folder (default: huggingface_hub's). seed: weight seed of weightless presets and scratch.
        memory: where T5 runs and what keeps it off the GPU (`T5Memory`); additions: LoRAs and embeddings.

    `random_weights` is True for the weightless presets and a scratch connector: their images are noise.
    Raises:
        InputError: an unknown preset, sd15 or t5 with a weightless preset, t5 with text_encoder.
        ModelSourceError: a part is missing or unreadable, or the parts do not fit together.
    """
    _check_arguments(preset, sd15, t5, text_encoder)
    memory, additions = memory or T5Memory(), additions or Additions()
    placement = choose_placement(device, dtype, t5_dtype, memory.t5_device)
    memory.check(placement)
    weightless = preset in WEIGHTLESS_PRESETS
    given = pocket_sources(sd15, ella, text_encoder) if preset == "pocket" else {"sd15": sd15, "ella": ella, "t5": t5}
    sources = _part_sources(weightless, **({"text_encoder": text_encoder} | given))
    paths = _resolve_parts(sources, placement, allow_pickle, cache_dir)
    components, provenance = _load_components(
        preset, sources, paths, sd15_config, placement, allow_pickle, cache_dir, seed
    )
    random_weights = weightless or sources.get("ella") == ELLA_SCRATCH
    models = assemble_models(
        components, placement, preset, provenance, random_weights, memory.resting_device(placement)
    )
    memory.apply(models)
    additions.apply(models)
    return models


def _load_components(
    preset: str,
    sources: dict[str, Source],
    paths: dict[str, Path],
    sd15_config: str | Path | None,
    placement: Placement,
    allow_pickle: bool,
    cache_dir: str | Path | None,
    seed: int,
) -> tuple[Components, dict[str, str]]:
    """Every part built (weightless presets) or loaded from its resolved path, checked to fit; and their provenance."""
    if preset in WEIGHTLESS_PRESETS:
        configs = read_weightless_configs(preset)
        parts = vars(build_weightless_components(configs, placement, seed))
        connector_config, provenance = configs.ella, {"weights": f"random (seed {seed}), {preset} architecture"}
    else:
        parts = _load_sd(paths["sd15"], sd15_config, placement, allow_pickle, cache_dir)
        connector_config, provenance = {}, {"sd15": str(sources["sd15"])}
    provenance |= _load_text_side(parts, sources, paths, placement, allow_pickle, cache_dir)
    provenance |= _load_connector(parts, sources, paths, connector_config, placement, seed)
    components = Components(**parts)
    _check_compatible(components)
    return components, provenance


def new_connector(base: dict, unet: torch.nn.Module, text_model: torch.nn.Module, seed: int) -> ELLA:
    """An untrained connector that fits `unet` and `text_model`, initialised as the release was before training.

    `ELLA`'s constructor draws the latents as randn * width^-0.5 and zeroes every AdaLayerNorm
    linear; `width` is the UNet's cross-attention width, `input_dim` the text encoder's, the rest
    comes from `base` (EllaConfig keyword arguments; EllaConfig's defaults for what it omits). Built
    in float32 on the CPU from `seed`, so the weights are the same on any machine; the global RNG is
    left as it was.
    """
    config = EllaConfig(**{**base, "width": unet.config.cross_attention_dim, "input_dim": text_width(text_model)})
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        return ELLA(config)


def _check_arguments(preset: str, sd15: str | None, t5: str | None, text_encoder: str | None) -> None:
    """Refuse an unknown preset and combinations of sources that cannot both be used."""
    if preset not in PRESETS:
        raise InputError("preset", f"must be one of {', '.join(PRESETS)}, got {preset!r}.")
    if t5 and text_encoder:
        raise InputError(
            "text_encoder", "cannot be used together with t5 (--t5 on the command line): it replaces T5. Give one."
        )
    if preset == "pocket" and t5:
        raise InputError("t5", "does not fit preset pocket: its connector reads the pocket language model. Drop it.")
    if preset in WEIGHTLESS_PRESETS:
        overrides = [name for name, value in (("sd15", sd15), ("t5", t5)) if value]
        if overrides:
            raise InputError(
                overrides[0],
                f"is for preset sd15 only: preset {preset} builds its own weights. Drop it, or use sd15 "
                "(ella and text_encoder work with every preset).",
            )


def _part_sources(weightless: bool, **given: str | None) -> dict[str, Source]:
    """Where each part that is loaded rather than built comes from, in the order they are resolved.

    `given` holds the sd15, ella, t5 and text_encoder arguments. The sd15 preset loads every part
    (the defaults where none is given); a weightless preset only the parts given.
    """
    chosen: dict[str, str | None] = {"ella": given["ella"]}
    if given["text_encoder"]:
        chosen["text_encoder"] = given["text_encoder"]
    else:
        chosen["t5"] = given["t5"]
    chosen["sd15"] = given["sd15"]
    sources: dict[str, Source] = {}
    for name, spec in chosen.items():
        if spec == ELLA_SCRATCH and name == "ella":
            sources[name] = ELLA_SCRATCH
        elif spec:
            sources[name] = parse_source(spec)
        elif not weightless:
            sources[name] = DEFAULT_SOURCES[name]
    return sources


def _resolve_parts(
    sources: dict[str, Source], placement: Placement, allow_pickle: bool, cache_dir: str | Path | None
) -> dict[str, Path]:
    """The local file or folder of each source, every part resolved before any loads.

    Raises:
        MissingFilesError: one part is missing.
        ModelSourceError: several are; one error names every missing file.
    """
    resolvers = {
        "ella": lambda source: resolve_ella_file(source, cache_dir),
        "t5": lambda source: resolve_t5_folder(source, allow_pickle, cache_dir),
        "text_encoder": lambda source: resolve_text_encoder_folder(source, allow_pickle, cache_dir),
        "sd15": lambda source: resolve_sd_folder(source, placement, allow_pickle, cache_dir),
    }
    paths: dict[str, Path] = {}
    missing: list[MissingFilesError] = []
    for name, source in sources.items():
        if source == ELLA_SCRATCH:
            continue
        try:
            paths[name] = resolvers[name](source)
        except MissingFilesError as error:
            missing.append(error)
    if len(missing) == 1:
        raise missing[0]
    if missing:
        summaries = "\n".join(f"- {error.summary}" for error in missing)
        raise ModelSourceError(f"Could not get:\n{summaries}\n{OFFLINE_ADVICE}\nDetails: {missing[-1].detail}")
    return paths


def _load_sd(
    path: Path, sd15_config: str | Path | None, placement: Placement, allow_pickle: bool, cache_dir: str | Path | None
) -> dict:
    """UNet, VAE, CLIP, tokenizer and scheduler from a diffusers folder or a single checkpoint file."""
    if path.is_file():
        return load_single_file_sd(path, sd15_config, placement, allow_pickle, cache_dir)
    return load_diffusers_sd(path, placement, allow_pickle)


def _load_text_side(
    parts: dict,
    sources: dict[str, Source],
    paths: dict[str, Path],
    placement: Placement,
    allow_pickle: bool,
    cache_dir: str | Path | None,
) -> dict[str, str]:
    """Put the T5 or other text encoder that was asked for into `parts`; return its provenance entries."""
    if "t5" in paths:
        parts["t5"], parts["t5_tokenizer"], tokenizer_source = load_t5(
            paths["t5"], placement.t5_dtype, allow_pickle, cache_dir
        )
        return {"t5": str(sources["t5"]), "t5_tokenizer": tokenizer_source}
    if "text_encoder" in paths:
        parts["t5"], parts["t5_tokenizer"] = load_text_encoder(paths["text_encoder"], placement.t5_dtype, allow_pickle)
        return {"t5": str(sources["text_encoder"]), "t5_tokenizer": str(paths["text_encoder"])}
    return {}


def _load_connector(
    parts: dict, sources: dict[str, Source], paths: dict[str, Path], base: dict, placement: Placement, seed: int
) -> dict[str, str]:
    """Put the connector that was asked for (a checkpoint, or a new one) into `parts`; return its provenance."""
    if sources.get("ella") == ELLA_SCRATCH:
        connector = new_connector(base, parts["unet"], parts["t5"], seed)
        parts["ella"] = connector.to(device=placement.device, dtype=placement.dtype)
        return {"ella": f"new connector (untrained, seed {seed})"}
    if "ella" in paths:
        parts["ella"] = load_ella_checkpoint(paths["ella"], placement.device, placement.dtype)
        return {"ella": str(sources["ella"])}
    return {}


def assemble_models(
    components: Components,
    placement: Placement,
    preset: str,
    sources: dict[str, str],
    random_weights: bool,
    t5_device: torch.device | None = None,
) -> LoadedModels:
    """Put built or loaded components on the device, frozen, inside the container every run uses; T5 on
    `t5_device` if given (the CPU, when it visits the GPU only to encode), else where it runs."""
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
        t5=components.t5.to(t5_device or placement.t5_device),
        t5_tokenizer=components.t5_tokenizer,
        placement=placement,
        preset=preset,
        random_weights=random_weights,
        sources=sources,
    )


def _check_compatible(components: Components) -> None:
    """The parts must agree on widths, or generation would fail deep inside the UNet or the connector."""
    ella_config = components.ella.config
    cross = components.unet.config.cross_attention_dim
    clip_width, encoder_width = components.text_encoder.config.hidden_size, text_width(components.t5)
    problems = []
    if cross != ella_config.width:
        problems.append(f"the UNet reads {cross}-wide tokens but the connector makes {ella_config.width}-wide ones")
    if clip_width != cross:
        problems.append(f"CLIP makes {clip_width}-wide tokens, the UNet reads {cross}")
    if encoder_width != ella_config.input_dim:
        problems.append(
            f"the text encoder makes {encoder_width}-wide features, the connector reads {ella_config.input_dim}"
        )
    if problems:
        advice = (
            " A connector trained with another text encoder needs that encoder: pass it with --text-encoder "
            "(text_encoder= in load_models)."
            if encoder_width != ella_config.input_dim
            else ""
        )
        raise ModelSourceError(
            "These models do not fit together: " + "; ".join(problems) + ". The connector's width must be the "
            "UNet's cross-attention width and its input width the text encoder's (ELLA for SD1.5: an "
            "SD1.5-family UNet, 768, and the FLAN-T5-XL encoder, 2048)." + advice
        )
