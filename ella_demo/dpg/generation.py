"""Generating DPG-Bench image grids: 4 images per prompt, tiled 2x2, resumable and shardable.

Seed policy (the paper does not state one): every prompt uses the same base seed, and its 4 images
are the 4 latents drawn from that seed in one batch; CLIP and ELLA share them, as everywhere in
this project. Files are written atomically, so a killed run leaves no half-written grid, and a
rerun skips grids that already exist and open at the right size. Under `accelerate launch`,
process i of n takes every n-th prompt starting at i.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from PIL import Image

from ella_demo.core.engine import generate, with_native_size
from ella_demo.core.models import LoadedModels
from ella_demo.core.settings import GenerationSettings
from ella_demo.core.t5_memory import release_t5
from ella_demo.inspect.outputs import package_versions
from ella_demo.loading.additions import keep_t5_features

MODEL_NAMES = ("clip", "ella")
T5_FEATURES_FOLDER = "t5-features"  # under the results folder, unless --t5-cache names another
PROMPTS_FILE = "prompts.json"  # the prompts a results folder was generated from, for browsing
SEED_POLICY = "every prompt: seed S; its 4 tiles are the 4 latents drawn from S in one batch, shared by CLIP and ELLA"


def shard(items: list[str], rank: int, world: int) -> list[str]:
    """The items process `rank` of `world` handles: disjoint, and together all of them."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be from 0 to {world - 1}, got {rank}")
    return items[rank::world]


def grid_is_valid(path: Path, resolution: int) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            return image.size == (2 * resolution, 2 * resolution)
    except (OSError, ValueError):
        return False


def missing_grids(folder: Path, items: list[str], resolution: int) -> list[str]:
    """The items whose grid in `folder` is absent or unreadable (what a run, or a resumed one, still makes)."""
    return [item for item in items if not grid_is_valid(folder / f"{item}.png", resolution)]


def make_grid(images: list[Image.Image]) -> Image.Image:
    """4 equal images -> one 2x2 grid, row-major."""
    width, height = images[0].size
    grid = Image.new("RGB", (2 * width, 2 * height))
    for index, image in enumerate(images):
        grid.paste(image, ((index % 2) * width, (index // 2) * height))
    return grid


def save_atomically(image: Image.Image, path: Path) -> None:
    temporary = path.with_suffix(".png.partial")
    image.save(temporary, format="PNG")
    os.replace(temporary, path)


def generate_grids(
    models: LoadedModels,
    prompts: dict[str, str],
    out_dir: str | Path,
    settings: GenerationSettings,
    model_names: tuple[str, ...] = MODEL_NAMES,
    shard_of: tuple[int, int] = (0, 1),
    progress: Callable[[str, bool], None] | None = None,
) -> dict[str, int]:
    """Write OUT/<model>/<item_id>.png for this process's share of the prompts.

    `settings`: every grid's generation settings (square, 4 images; each item sets its prompt and
    the sides still missing; a size of None is the model's native size). `shard_of`: (rank, world),
    this process's place among all of them. Returns counts of grids generated and skipped (already valid).
    """
    unknown = [name for name in model_names if name not in MODEL_NAMES]
    if unknown or not model_names:
        raise ValueError(f"--models must list clip and/or ella, got {','.join(model_names) or 'nothing'}")
    settings = with_native_size(models, settings)
    if settings.num_images != 4 or settings.height != settings.width:
        raise ValueError(
            f"DPG grids are 2x2 of square images: got {settings.num_images} of {settings.width}x{settings.height}"
        )
    out = Path(out_dir)
    rank, world = shard_of
    for name in model_names:  # every process, before writing: none may wait for the first one
        (out / name).mkdir(parents=True, exist_ok=True)
    if rank == 0:
        _write_folder_records(models, prompts, out, settings, model_names)
    counts = {"generated": 0, "skipped": 0}
    for item in shard(sorted(prompts), rank, world):
        pending = [name for name in model_names if missing_grids(out / name, [item], settings.height)]
        if pending:
            sides = "both" if len(pending) == 2 else pending[0]
            result = generate(models, **replace(settings, prompt=prompts[item], sides=sides).to_dict())
            for name in pending:
                images = result.clip_images if name == "clip" else result.ella_images
                save_atomically(make_grid(images), out / name / f"{item}.png")
        counts["generated" if pending else "skipped"] += 1
        if progress:
            progress(item, bool(pending))
    return counts


def encode_then_release_t5(
    models: LoadedModels, prompts: list[str], settings: GenerationSettings, store: str | Path
) -> tuple[int, int]:
    """Encode every prompt (and the negative prompt) with T5 into a features store, then free T5's memory.

    The store (`--t5-cache`, or `store`) keeps the features across runs and processes, so a prompt is
    encoded once ever; the grids then run on the UNet, VAE, CLIP and the connector alone (core/t5_memory.py).
    Returns (prompts T5 itself encoded, prompts needed in all, the negative prompt included).
    """
    encoder = models.t5_encoder
    if encoder.store is None:
        keep_t5_features(models, store)
    needed = list(dict.fromkeys([settings.negative_prompt, *prompts]))
    encoded = 0
    for prompt in needed:
        encoded += not encoder.store.path(prompt, settings.t5_length, encoder.dtype, encoder.device).is_file()
        encoder.encode(prompt, settings.t5_length)
    release_t5(models)
    return encoded, len(needed)


def _write_folder_records(
    models: LoadedModels, prompts: dict[str, str], out: Path, settings: GenerationSettings, model_names: tuple[str, ...]
) -> None:
    """Each model folder's meta.json (how its grids were made), and the prompts they were made from."""
    provenance = models.provenance()
    record = {
        "resolution": settings.height, "seed": settings.seed, "num_inference_steps": settings.num_inference_steps,
        "guidance_scale": settings.guidance_scale, "scheduler": settings.scheduler, "num_images": 4,
        "mode": settings.mode, "t5_length": settings.t5_length, "seed_policy": SEED_POLICY,
        "preset": provenance.preset, "random_weights": provenance.random_weights, "sources": provenance.sources,
        "additions": list(provenance.additions), "versions": package_versions(),
    }  # fmt: skip
    for name in model_names:
        (out / name / "meta.json").write_text(json.dumps({**record, "model": name}, indent=2))
    known = json.loads((out / PROMPTS_FILE).read_text()) if (out / PROMPTS_FILE).is_file() else {}
    (out / PROMPTS_FILE).write_text(json.dumps({**known, **prompts}, indent=1, sort_keys=True))
