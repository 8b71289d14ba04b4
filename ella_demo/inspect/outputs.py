"""Writing a run to disk: PNGs with their settings embedded, meta.json and trace.npz."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ella_demo.core.results import GenerationResult

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


def one_line(text: str) -> str:
    """Text with every line break (\\n, \\r, and Unicode's separators) turned into a space."""
    return " ".join(text.splitlines())


def parameters_text(result: GenerationResult, side: str) -> str:
    """The settings as the `parameters` PNG text chunk other SD tools write and read.

    That format is line-based (prompt, then "Negative prompt: ...", then the "Steps: ..." line),
    so the prompts are written on one line each: a prompt holding a line break and "Steps:" could
    otherwise pose as the settings line. The exact prompts are in the `ella_explorer` chunk.
    """
    settings, provenance = result.settings, result.provenance
    model = "SD1.5 + CLIP" if side == "clip" else f"SD1.5 + ELLA ({settings.mode}, T5 {settings.t5_length})"
    if provenance.random_weights:
        model += f", {provenance.preset} RANDOM WEIGHTS"
    fields = [
        f"Steps: {settings.num_inference_steps}",
        f"Sampler: {SCHEDULER_LABELS[settings.scheduler]}",
        f"CFG scale: {settings.guidance_scale}",
        f"Seed: {settings.seed}",
        f"Size: {settings.width}x{settings.height}",
        f"Model: {model}",
    ]
    return f"{one_line(settings.prompt)}\nNegative prompt: {one_line(settings.negative_prompt)}\n{', '.join(fields)}"


def image_grid(images: list[Image.Image]) -> Image.Image:
    """Images side by side in one row (one image is returned as is)."""
    if len(images) == 1:
        return images[0]
    width, height = images[0].size
    grid = Image.new("RGB", (width * len(images), height))
    for index, image in enumerate(images):
        grid.paste(image, (index * width, 0))
    return grid


def save_png(image: Image.Image, path: Path, parameters: str, settings: dict) -> None:
    """PNG with the `parameters` text chunk and, as JSON, the exact settings (`ella_explorer`)."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_itxt("ella_explorer", json.dumps(settings, ensure_ascii=False))
    image.save(path, pnginfo=info)


def run_metadata(result: GenerationResult) -> dict:
    """Everything needed to reproduce and read the run, JSON-serialisable."""
    trace = result.trace
    meta = {
        "settings": result.settings.to_dict(),
        **result.provenance.to_dict(),
        "timesteps": result.timesteps.tolist(),
        "timings_s": result.timings,
        "warnings": result.warnings,
        "versions": package_versions(),
    }
    meta["seeding"] = result.seeding
    meta["tokens"] = result.tokens  # as the run encoded them: writing never runs a model
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
    arrays["prompt"] = np.array(trace.prompt)
    for name in ("t5", "clip"):
        offsets = getattr(trace, f"{name}_offsets")
        if offsets:
            arrays[f"{name}_offsets"] = np.array(offsets, dtype=np.int32).reshape(-1, 2)
    for side, side_trace in trace.sides.items():
        arrays[f"{side}_previews"] = side_trace.previews
        arrays[f"{side}_keys"] = np.array(side_trace.tokens)
        for resolution, maps in side_trace.cross_attention.items():
            suffix = "_pooled" if resolution in side_trace.pooled else ""
            arrays[f"{side}_cross_attention_{resolution}{suffix}"] = maps
    return arrays


def write_run(result: GenerationResult, out_dir: str | Path) -> list[Path]:
    """Write clip.png / ella.png (a row of images when several), meta.json, and trace.npz if traced."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for side, images in (("clip", result.clip_images), ("ella", result.ella_images)):
        if images:
            path = out / f"{side}.png"
            save_png(image_grid(images), path, parameters_text(result, side), result.settings.to_dict())
            written.append(path)
    meta_path = out / "meta.json"
    meta_path.write_text(json.dumps(run_metadata(result), indent=2))
    written.append(meta_path)
    if result.trace is not None:
        trace_path = out / "trace.npz"
        np.savez_compressed(trace_path, **trace_arrays(result))
        written.append(trace_path)
    return written
