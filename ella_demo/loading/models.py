"""All model hub and disk I/O: presets, sources (hub ids, local folders, single files), checkpoints.

`load_models(preset, ...)` is the one entry point. Every source goes through the same steps:
resolve it to a local folder or file (a local path as given, a hub id through the local cache,
then the hub), check that the files we need are there, then load them strictly. A test that
saves models in the hub layout and loads them back walks exactly the code path a user's
download takes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from huggingface_hub import snapshot_download
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

from ella_demo.core.caching import LRUCache
from ella_demo.core.connector import ELLA, EllaConfig
from ella_demo.core.devices import Placement, choose_placement
from ella_demo.core.errors import ExplorerError, InputError
from ella_demo.core.schedulers import scheduler_from_config
from ella_demo.core.text_encoding import CLIPPromptEncoder, T5PromptEncoder
from ella_demo.loading.presets import Components, WeightlessConfigs, build_weightless_components
from ella_demo.loading.sources import (
    DEFAULT_SOURCES,
    ELLA_CONFIG_METADATA_KEY,
    ELLA_FILENAME,
    PRESETS,
    T5_TOKENIZER_SOURCE,
    WEIGHTLESS_PRESETS,
    HubLocation,
)

# A file a folder must hold, or a tuple of files of which it must hold at least one.
Requirement = str | tuple[str, ...]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+)?$")
CONFIG_DIRS = {"tiny": "tiny", "random-sd15": "sd15"}
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


class ModelSourceError(ExplorerError, RuntimeError):
    """A model could not be found, fetched, or loaded; the message says what to do instead."""


class MissingFilesError(ModelSourceError):
    """Files of a hub repository are neither cached locally nor downloadable."""

    def __init__(self, what: str, location: HubLocation, patterns: list[str], detail: str):
        self.summary = f"the {what} from {location.repo_id} (files {', '.join(patterns)})"
        self.detail = detail
        super().__init__(f"Could not get {self.summary}. {OFFLINE_ADVICE}\nDetails: {detail}")


OFFLINE_ADVICE = (
    "They are neither in the local hub cache nor downloadable right now. Either connect to the hub "
    "once so the files are cached, point at local copies (--sd15 / --ella / --t5 PATH, or the sd15=, "
    "ella=, t5= arguments of load_models), or try the app without weights: --preset tiny."
)


class CheckpointMismatchError(ModelSourceError):
    """A checkpoint's tensors do not match the model it is loaded into."""


@dataclass
class LoadedModels:
    """Everything a generation needs, loaded once and shared read-only between requests.

    `pipe` is a diffusers StableDiffusionPipeline (unet, vae, text_encoder, tokenizer, scheduler);
    `ella` the connector; `t5`/`t5_tokenizer` the FLAN-T5 encoder. `t5_encoder` and
    `clip_encoder` wrap the text models with caches. `random_weights` is True for presets whose
    images are noise. `sources` records where each part came from, for the UI and meta files.
    """

    pipe: StableDiffusionPipeline
    ella: ELLA
    t5: T5EncoderModel
    t5_tokenizer: T5Tokenizer
    placement: Placement
    preset: str
    random_weights: bool
    sources: dict[str, str] = field(default_factory=dict)
    t5_encoder: T5PromptEncoder = field(init=False)
    clip_encoder: CLIPPromptEncoder = field(init=False)
    condition_cache: LRUCache[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.t5_encoder = T5PromptEncoder(self.t5, self.t5_tokenizer)
        self.clip_encoder = CLIPPromptEncoder(self.pipe.text_encoder, self.pipe.tokenizer)
        # Connector outputs for negative prompts, keyed by (prompt, length, timestep, device, dtype):
        # 1024 entries of 64x768 fp16 are about 100 MB.
        self.condition_cache = LRUCache(1024)

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        return self.placement.dtype


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
        components = build_weightless_components(_read_weightless_configs(preset), placement, seed)
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


# ---------------------------------------------------------------------------------------------
# Configs shipped with the package


def package_config_dir(name: str) -> Path:
    """Folder of a config set shipped in ella_demo/loading/configs ("sd15", "tiny", "flan_t5_xl_encoder")."""
    return Path(str(resources.files("ella_demo.loading").joinpath("configs", name)))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_weightless_configs(preset: str) -> WeightlessConfigs:
    base = package_config_dir(CONFIG_DIRS[preset])
    if preset == "tiny":
        t5_config, ella_config = read_json(base / "t5/config.json"), read_json(base / "ella.json")
    else:
        t5_config, ella_config = read_json(package_config_dir("flan_t5_xl_encoder") / "config.json"), {}
    return WeightlessConfigs(
        unet=read_json(base / "unet/config.json"),
        vae=read_json(base / "vae/config.json"),
        text_encoder=read_json(base / "text_encoder/config.json"),
        scheduler=read_json(base / "scheduler/scheduler_config.json"),
        t5=t5_config,
        ella=ella_config,
    )


# ---------------------------------------------------------------------------------------------
# Resolving sources to local files


def parse_source(spec: str | Path) -> Path | HubLocation:
    """A local path if it exists, else a hub location ("org/name[/path/in/repo]").

    Raises:
        ModelSourceError: neither an existing path nor something shaped like a hub id.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    text = str(spec)
    if HUB_ID.match(text) and not text.startswith(("/", ".", "~")):
        repo_owner, repo_name, *rest = text.split("/")
        return HubLocation(f"{repo_owner}/{repo_name}", "/".join(rest))
    raise ModelSourceError(f"{text!r} is neither an existing local path nor a hub id like 'org/name'.")


def fetch(
    location: HubLocation,
    patterns: list[str],
    what: str,
    cache_dir: str | Path | None = None,
    lacks: Callable[[Path], list[str]] | None = None,
) -> Path:
    """Local folder of `location`'s repo holding the files matching `patterns`.

    Tries the local hub cache first (no network), then the hub. A folder counts only if
    `lacks(folder)` names nothing missing (default: any folder counts), so a partly cached
    download (configs without weights, fp32 weights when fp16 ones are wanted) is completed from
    the hub rather than taken. Fails fast with a message naming the files when neither place has them.
    """
    errors = []
    for local_only in (True, False):
        place = "the local hub cache" if local_only else "the hub"
        try:
            folder = Path(
                snapshot_download(
                    location.repo_id,
                    allow_patterns=patterns,
                    cache_dir=cache_dir,
                    local_files_only=local_only,
                    etag_timeout=5,
                )
            )
        except Exception as error:  # noqa: BLE001 - hub errors come in many types; all mean "not here"
            errors.append(f"{place}: {type(error).__name__}: {str(error)[:300]}")
            continue
        missing = lacks(folder) if lacks else []
        if not missing:
            return folder
        errors.append(f"{place}: the copy in {folder} lacks {', '.join(missing)}")
    raise MissingFilesError(what, location, patterns, "; ".join(errors))


def missing_files(folder: Path, required: Iterable[Requirement]) -> list[str]:
    """The entries of `required` that `folder` lacks (a tuple: none of its alternatives is there)."""
    missing = []
    for requirement in required:
        alternatives = (requirement,) if isinstance(requirement, str) else requirement
        if not any((folder / name).is_file() for name in alternatives):
            missing.append(" or ".join(alternatives))
    return missing


def _require_files(folder: Path, required: Iterable[Requirement], what: str) -> None:
    missing = missing_files(folder, required)
    if missing:
        raise ModelSourceError(f"The {what} folder {folder} lacks {', '.join(missing)}.")


# ---------------------------------------------------------------------------------------------
# Real weights


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
        lambda: _resolve_ella_file(ella_source, cache_dir),
        lambda: _resolve_t5_folder(t5_source, allow_pickle, cache_dir),
        lambda: _resolve_sd_folder(sd15_source, placement, allow_pickle, cache_dir),
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
        sd_parts = _load_single_file_sd(sd_path, sd15_config, placement, allow_pickle, cache_dir)
    else:
        sd_parts = _load_diffusers_sd(sd_path, placement, allow_pickle)
    t5_tokenizer, t5_tokenizer_source = _load_t5_tokenizer(t5_folder, cache_dir)
    components = Components(
        **sd_parts,
        t5=T5EncoderModel.from_pretrained(
            t5_folder, dtype=placement.t5_dtype, use_safetensors=_use_safetensors(allow_pickle)
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


def _resolve_sd_folder(
    source: Path | HubLocation, placement: Placement, allow_pickle: bool, cache_dir: str | Path | None
) -> Path:
    """A local diffusers-layout folder or single file for the SD side, fetched if on the hub."""
    if isinstance(source, Path):
        return source
    # The weights decide whether a cached copy is enough: a download interrupted after the configs,
    # or fp32 files cached when this run wants the fp16 ones, is completed from the hub.
    variant = _choose_variant(None, placement)
    wanted = [name for names in _weight_names(variant, allow_pickle).values() for name in names]
    prefix = f"{source.path}/" if source.path else ""
    patterns = [prefix + name for name in SD15_CONFIG_FILES + TOKENIZER_PATTERNS + wanted]
    required = _sd_requirements(variant, allow_pickle)
    folder = fetch(
        source,
        patterns,
        "Stable Diffusion 1.5 weights",
        cache_dir,
        lambda folder: missing_files(folder / source.path, required),
    )
    return folder / source.path


def _load_diffusers_sd(folder: Path, placement: Placement, allow_pickle: bool) -> dict:
    """UNet, VAE, CLIP and scheduler from a diffusers-layout folder."""
    variant = _choose_variant(folder, placement)
    _require_files(folder, [*SD15_CONFIG_FILES, *CLIP_TOKENIZER_FILES], "Stable Diffusion")
    for component, candidates in _weight_names(variant, allow_pickle).items():
        if not any((folder / name).is_file() for name in candidates):
            raise ModelSourceError(
                f"The Stable Diffusion folder {folder} has no {component} weights: expected {' or '.join(candidates)}"
                + ("" if allow_pickle else " (pickle .bin files are only read with --allow-pickle)")
                + "."
            )
    common = {"variant": variant, "use_safetensors": _use_safetensors(allow_pickle)}
    return {
        "unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=placement.dtype, **common),
        "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=placement.dtype, **common),
        "text_encoder": CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", dtype=placement.dtype, **common
        ),
        "tokenizer": CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        "scheduler": _read_scheduler(folder),
    }


def _load_single_file_sd(
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
    _require_files(config_dir, SD15_CONFIG_FILES, "single-file config")
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


def _use_safetensors(allow_pickle: bool) -> bool | None:
    """diffusers/transformers `use_safetensors`: True reads safetensors only; None prefers them and
    falls back to pickle files (False would read pickle files only, missing safetensors-only folders)."""
    return None if allow_pickle else True


def _read_scheduler(folder: Path):
    """The scheduler of a diffusers-layout folder, as its config file describes it (SD1.5: PNDM)."""
    try:
        return scheduler_from_config(read_json(folder / "scheduler" / "scheduler_config.json"))
    except ValueError as error:
        raise ModelSourceError(f"{folder / 'scheduler'}: {error}.") from error


def _resolve_ella_file(source: Path | HubLocation, cache_dir: str | Path | None) -> Path:
    if isinstance(source, HubLocation):
        filename = source.path or ELLA_FILENAME
        folder = fetch(
            HubLocation(source.repo_id),
            [filename],
            "ELLA connector",
            cache_dir,
            lambda folder: missing_files(folder, [filename]),
        )
        return folder / filename
    path = source / ELLA_FILENAME if source.is_dir() else source
    if not path.is_file():
        raise ModelSourceError(f"No ELLA checkpoint at {path}: pass the .safetensors file itself.")
    return path


def _resolve_t5_folder(source: Path | HubLocation, allow_pickle: bool, cache_dir: str | Path | None) -> Path:
    if isinstance(source, HubLocation):
        prefix = f"{source.path}/" if source.path else ""
        patterns = [prefix + pattern for pattern in ("*.json", "*.safetensors", "spiece.model")]
        if allow_pickle:
            patterns.append(prefix + "*.bin")
        folder = fetch(
            source,
            patterns,
            "T5 text encoder",
            cache_dir,
            lambda folder: _missing_t5_files(folder / source.path, allow_pickle),
        )
        folder = folder / source.path
    else:
        folder = source
    missing = _missing_t5_files(folder, allow_pickle)
    if missing:
        raise ModelSourceError(f"The T5 encoder folder {folder} lacks {', '.join(missing)}.")
    return folder


def _missing_t5_files(folder: Path, allow_pickle: bool) -> list[str]:
    """What a T5 encoder folder lacks: its config, and one weights file or every shard its index lists."""
    missing = missing_files(folder, ["config.json"])
    stems = ["model.safetensors"] + (["pytorch_model.bin"] if allow_pickle else [])
    incomplete = []
    for stem in stems:
        if (folder / stem).is_file():
            return missing
        index = folder / f"{stem}.index.json"
        if index.is_file():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            lacking = [name for name in shards if not (folder / name).is_file()]
            if not lacking:
                return missing
            incomplete.extend(lacking)
    return missing + (incomplete or [" or ".join(f"{stem} (or its shards)" for stem in stems)])


def _has_t5_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()


def _load_t5_tokenizer(folder: Path, cache_dir: str | Path | None) -> tuple[T5Tokenizer, str]:
    """The tokenizer saved beside the encoder, else FLAN-T5-XL's own (same vocabulary, a few MB)."""
    if _has_t5_tokenizer(folder):
        return T5Tokenizer.from_pretrained(folder), str(folder)
    fetched = fetch(
        T5_TOKENIZER_SOURCE,
        ["spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"],
        "T5 tokenizer",
        cache_dir,
        lambda fetched: missing_files(fetched, [("tokenizer.json", "spiece.model")]),
    )
    return T5Tokenizer.from_pretrained(fetched), str(T5_TOKENIZER_SOURCE)


# ---------------------------------------------------------------------------------------------
# The connector's checkpoint


def save_ella_checkpoint(model: ELLA, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
    """Write the connector as safetensors (fp16 like the release), its config in the metadata."""
    tensors = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in model.state_dict().items()}
    metadata = {ELLA_CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def load_ella_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ELLA:
    """Build the connector a checkpoint describes and load it strictly.

    The architecture comes from the file's metadata when we wrote it, else it is the released SD1.5
    default. Tensors are cast to `dtype` (the release is stored in fp16).

    Raises:
        ModelSourceError: not a safetensors file.
        CheckpointMismatchError: missing, unexpected or wrongly shaped tensors, all listed.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelSourceError(f"{path.name}: the ELLA connector loads from .safetensors files only.")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state_dict = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:
        raise ModelSourceError(f"{path} is not a readable safetensors file: {error}") from error
    config_json = metadata.get(ELLA_CONFIG_METADATA_KEY)
    config = EllaConfig(**json.loads(config_json)) if config_json else EllaConfig()
    with torch.device("meta"):
        model = ELLA(config)
    check_state_dict(model, state_dict, source=str(path))
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise one error listing every missing, unexpected and wrongly shaped tensor."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in state_dict.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = sorted(
        f"{name} (file {found[name]}, model {expected[name]})"
        for name in set(expected) & set(found)
        if expected[name] != found[name]
    )
    if missing or unexpected or wrong_shape:
        lines = [f"{source} does not match the ELLA connector it is loaded into."]
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if names:
                lines.append(f"{label} ({len(names)}): {', '.join(names)}")
        raise CheckpointMismatchError("\n".join(lines))
