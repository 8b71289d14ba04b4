"""Writing a run to disk: PNGs with their settings embedded, meta.json and trace.npz."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .engine import GenerationResult
from .loading import LoadedModels

SCHEDULER_LABELS = {
    "dpm++": "DPM++ 2M",
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "unipc": "UniPC",
    "pndm": "PLMS",
}
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers")


def package_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in VERSIONED_PACKAGES}


def parameters_text(result: GenerationResult, side: str, models: LoadedModels) -> str:
    """The settings as the `parameters` PNG text chunk other SD tools write and read."""
    settings = result.settings
    model = "SD1.5 + CLIP" if side == "clip" else f"SD1.5 + ELLA ({settings.mode}, T5 {settings.t5_length})"
    if models.random_weights:
        model += f", {models.preset} RANDOM WEIGHTS"
    fields = [
        f"Steps: {settings.num_inference_steps}",
        f"Sampler: {SCHEDULER_LABELS[settings.scheduler]}",
        f"CFG scale: {settings.guidance_scale}",
        f"Seed: {settings.seed}",
        f"Size: {settings.width}x{settings.height}",
        f"Model: {model}",
    ]
    return f"{settings.prompt}\nNegative prompt: {settings.negative_prompt}\n{', '.join(fields)}"


def image_grid(images: list[Image.Image]) -> Image.Image:
    """Images side by side in one row (one image is returned as is)."""
    if len(images) == 1:
        return images[0]
    width, height = images[0].size
    grid = Image.new("RGB", (width * len(images), height))
    for index, image in enumerate(images):
        grid.paste(image, (index * width, 0))
    return grid


def save_png(image: Image.Image, path: Path, parameters: str) -> None:
    info = PngInfo()
    info.add_text("parameters", parameters)
    image.save(path, pnginfo=info)


def run_metadata(result: GenerationResult, models: LoadedModels) -> dict:
    """Everything needed to reproduce and read the run, JSON-serialisable."""
    trace = result.trace
    meta = {
        "settings": result.settings.to_dict(),
        "preset": models.preset,
        "random_weights": models.random_weights,
        "sources": models.sources,
        "device": models.placement.describe(),
        "timesteps": result.timesteps.tolist(),
        "timings_s": result.timings,
        "warnings": result.warnings,
        "versions": package_versions(),
    }
    t5 = models.t5_encoder.encode(result.settings.prompt, result.settings.t5_length)
    clip = models.clip_encoder.encode(result.settings.prompt)
    meta["tokens"] = {
        "t5": list(t5.tokens),
        "t5_words": [[word.text, list(word.token_indices)] for word in t5.words],
        "clip": list(clip.tokens),
        "clip_words": [[word.text, list(word.token_indices)] for word in clip.words],
    }
    if trace is not None:
        meta["trace_arrays"] = sorted(trace_arrays(result).keys())
    return meta


def trace_arrays(result: GenerationResult) -> dict[str, np.ndarray]:
    """Named arrays of a trace; the axes are documented in README.md ("trace.npz")."""
    trace = result.trace
    arrays = {"timesteps": trace.timesteps}
    if trace.tsc_attention is not None:
        arrays["tsc_attention"] = trace.tsc_attention
        arrays["t5_tokens"] = np.array(trace.t5_tokens)
    if trace.clip_tokens:
        arrays["clip_tokens"] = np.array(trace.clip_tokens)
    for side, side_trace in trace.sides.items():
        arrays[f"{side}_previews"] = side_trace.previews
        arrays[f"{side}_keys"] = np.array(side_trace.tokens)
        for resolution, maps in side_trace.cross_attention.items():
            suffix = "_pooled" if resolution in side_trace.pooled else ""
            arrays[f"{side}_cross_attention_{resolution}{suffix}"] = maps
    return arrays


def write_run(result: GenerationResult, models: LoadedModels, out_dir: str | Path) -> list[Path]:
    """Write clip.png / ella.png (a row of images when several), meta.json, and trace.npz if traced."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for side, images in (("clip", result.clip_images), ("ella", result.ella_images)):
        if images:
            path = out / f"{side}.png"
            save_png(image_grid(images), path, parameters_text(result, side, models))
            written.append(path)
    meta_path = out / "meta.json"
    meta_path.write_text(json.dumps(run_metadata(result, models), indent=2))
    written.append(meta_path)
    if result.trace is not None:
        trace_path = out / "trace.npz"
        np.savez_compressed(trace_path, **trace_arrays(result))
        written.append(trace_path)
    return written
