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
from pathlib import Path

from PIL import Image

from ella_demo.core.engine import generate
from ella_demo.core.models import LoadedModels
from ella_demo.inspect.outputs import package_versions

MODEL_NAMES = ("clip", "ella")
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
    model_names: tuple[str, ...] = MODEL_NAMES,
    resolution: int = 512,
    seed: int = 0,
    steps: int = 25,
    guidance_scale: float = 10.0,
    scheduler: str = "dpm++",
    rank: int = 0,
    world: int = 1,
    progress: Callable[[str, bool], None] | None = None,
) -> dict[str, int]:
    """Write OUT/<model>/<item_id>.png for this process's share of the prompts.

    Returns counts of grids generated and skipped (already valid).
    """
    unknown = [name for name in model_names if name not in MODEL_NAMES]
    if unknown or not model_names:
        raise ValueError(f"--models must list clip and/or ella, got {','.join(model_names) or 'nothing'}")
    out = Path(out_dir)
    settings = {
        "resolution": resolution, "seed": seed, "num_inference_steps": steps, "guidance_scale": guidance_scale,
        "scheduler": scheduler, "num_images": 4, "mode": "ella", "t5_length": "flexible",
        "seed_policy": SEED_POLICY,
        "preset": models.preset, "random_weights": models.random_weights, "sources": models.sources,
        "versions": package_versions(),
    }  # fmt: skip
    for name in model_names:
        (out / name).mkdir(parents=True, exist_ok=True)
        if rank == 0:
            (out / name / "meta.json").write_text(json.dumps({**settings, "model": name}, indent=2))
    if rank == 0:
        known = json.loads((out / PROMPTS_FILE).read_text()) if (out / PROMPTS_FILE).is_file() else {}
        (out / PROMPTS_FILE).write_text(json.dumps({**known, **prompts}, indent=1, sort_keys=True))
    counts = {"generated": 0, "skipped": 0}
    for item in shard(sorted(prompts), rank, world):
        pending = [name for name in model_names if not grid_is_valid(out / name / f"{item}.png", resolution)]
        if not pending:
            counts["skipped"] += 1
            if progress:
                progress(item, False)
            continue
        sides = "both" if len(pending) == 2 else pending[0]
        result = generate(
            models, prompts[item], seed=seed, num_inference_steps=steps, guidance_scale=guidance_scale,
            height=resolution, width=resolution, scheduler=scheduler, num_images=4, sides=sides,
        )  # fmt: skip
        for name in pending:
            save_atomically(
                make_grid(result.clip_images if name == "clip" else result.ella_images), out / name / f"{item}.png"
            )
        counts["generated"] += 1
        if progress:
            progress(item, True)
    return counts
