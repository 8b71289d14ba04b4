"""Benchmark: how many bytes a trace of SD1.5 at 512x512 holds (the capture budget).

It runs the real engine on a UNet with SD1.5's exact layout but toy channel widths, since a
trace's shapes depend only on the layout (see `sd15_trace_geometry`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ella_demo.bench import BENCH_PROMPT, GUIDANCE
from ella_demo.core.connector import EllaConfig
from ella_demo.core.devices import choose_placement
from ella_demo.core.engine import generate
from ella_demo.core.models import LoadedModels
from ella_demo.core.results import GenerationResult
from ella_demo.core.text_encoding import FLEXIBLE
from ella_demo.inspect.outputs import trace_arrays, write_run
from ella_demo.loading.models import assemble_models
from ella_demo.loading.presets import WeightlessConfigs, build_weightless_components
from ella_demo.loading.shipped import package_config_dir, read_json

# SD1.5's UNet at 1/40 of its channel widths (320, 640, 1280, 1280); everything else as published.
SLIM_BLOCK_OUT_CHANNELS = [8, 16, 32, 32]
SLIM_NORM_GROUPS = 8
TRACE_GEOMETRY_METHOD = (
    "the engine's traced run on random-weight models with SD1.5's layout: UNet from SD1.5's config "
    f"with block_out_channels {SLIM_BLOCK_OUT_CHANNELS} (1/40 width), ELLA's released connector "
    "architecture, CLIP text model widened to 768 (77 tokens), tiny preset's VAE (8x), T5 and tokenizers"
)
# The groups a trace's arrays are summed in, by name prefix; previews and the rest come after.
_PREFIX_GROUPS = ("tsc_attention", "clip_cross_attention", "ella_cross_attention")


def sd15_trace_geometry(device: str | None = "cpu", dtype: str | None = None, seed: int = 0) -> LoadedModels:
    """Random-weight models whose traces have exactly SD1.5's shapes, but which run in seconds on a CPU.

    A trace's shapes depend only on: the latent size (the VAE's 8x downsampling), which UNet levels
    hold cross-attention and how many layers each has (16 attn2 layers at 64x64, 32x32, 16x16 and
    8x8 latent resolution for a 512x512 image), the number of keys (CLIP's 77 tokens, ELLA's 64
    queries), the connector's blocks, heads and queries (6 x 8 x 64), the T5 prompt length, the
    steps and the images. So: the UNet is built from SD1.5's published config (same block types,
    layers per block, 8 heads per attention, cross_attention_dim 768, sample_size 64) with
    channel widths divided by 40; the connector is ELLA's released architecture (only its input
    width follows the toy T5); CLIP is the toy text model widened to 768 (it pads to 77 tokens
    like the real one); the VAE, T5 and tokenizers are the tiny preset's. The toy T5 tokenizer
    splits English into whole words, so prompt lengths are close to, but not exactly, FLAN-T5's.
    """
    tiny, sd15 = package_config_dir("tiny"), package_config_dir("sd15")

    t5_config = read_json(tiny / "t5" / "config.json")
    configs = WeightlessConfigs(
        unet={
            **read_json(sd15 / "unet" / "config.json"),
            "block_out_channels": SLIM_BLOCK_OUT_CHANNELS,
            "norm_num_groups": SLIM_NORM_GROUPS,
        },
        vae=read_json(tiny / "vae" / "config.json"),
        text_encoder={**read_json(tiny / "text_encoder" / "config.json"), "hidden_size": 768, "projection_dim": 768},
        scheduler=read_json(sd15 / "scheduler" / "scheduler_config.json"),
        t5=t5_config,
        ella={**EllaConfig().to_dict(), "input_dim": t5_config["d_model"]},
    )
    placement = choose_placement(device, dtype)
    return assemble_models(
        build_weightless_components(configs, placement, seed),
        placement,
        preset="sd15-trace-geometry",
        sources={"weights": f"random (seed {seed}), SD1.5 layout at 1/40 width (bench.trace_size.sd15_trace_geometry)"},
        random_weights=True,
    )


def _array_group(name: str) -> str:
    for prefix in _PREFIX_GROUPS:
        if name.startswith(prefix):
            return prefix
    return "previews" if name.endswith("_previews") else "other"


def measure_trace_size(
    steps: Sequence[int] = (25, 50),
    t5_lengths: Sequence[int | str] = (FLEXIBLE,),
    prompt: str = BENCH_PROMPT,
    height: int = 512,
    width: int = 512,
    num_images: int = 1,
    device: str | None = "cpu",
    dtype: str | None = None,
) -> dict:
    """Bytes of a side-by-side trace of SD1.5 (see `sd15_trace_geometry`), for each steps x T5 length.

    Each run is the engine's own traced generation (DPM-Solver++, guidance 10, mode "ella"); sizes
    are those of the CPU arrays `outputs.trace_arrays` returns (float16 maps as stored) and of the
    trace.npz that `outputs.write_run` writes (compressed; the uncompressed size is given too, as
    an upper bound: random weights make the values, hence the compression, unlike real ones).
    """
    models = sd15_trace_geometry(device, dtype)
    size = {"height": height, "width": width, "num_images": num_images}
    runs = []
    for t5_length in t5_lengths:
        for count in steps:
            started = time.perf_counter()
            result = generate(
                models,
                prompt,
                num_inference_steps=count,
                guidance_scale=GUIDANCE,
                t5_length=t5_length,
                trace=True,
                **size,
            )
            runs.append(_run_sizes(result, t5_length, num_images, time.perf_counter() - started))
    return {
        "prompt": prompt,
        "size": f"{width}x{height}",
        "method": TRACE_GEOMETRY_METHOD,
        "device": models.placement.describe(),
        "runs": runs,
    }


def _run_sizes(result: GenerationResult, t5_length: int | str, num_images: int, seconds: float) -> dict:
    """One traced run's sizes: in memory (in total, per group, per array) and as trace.npz."""
    arrays = trace_arrays(result)
    with tempfile.TemporaryDirectory() as folder:
        write_run(result, folder)
        npz_bytes = (Path(folder) / "trace.npz").stat().st_size
        np.savez(Path(folder) / "plain.npz", **arrays)
        plain_bytes = (Path(folder) / "plain.npz").stat().st_size
    groups: dict[str, int] = {}
    for name, array in arrays.items():
        groups[_array_group(name)] = groups.get(_array_group(name), 0) + array.nbytes
    return {
        "steps": len(result.timesteps),
        "images": num_images,
        "t5_length_setting": t5_length,
        "t5_tokens": len(result.trace.t5_tokens),
        "memory_bytes": sum(array.nbytes for array in arrays.values()),
        "npz_bytes": npz_bytes,
        "npz_uncompressed_bytes": plain_bytes,
        "group_bytes": groups,
        "arrays": {
            name: {"shape": list(array.shape), "dtype": str(array.dtype), "bytes": array.nbytes}
            for name, array in arrays.items()
        },
        "seconds": seconds,
    }


def format_trace_sizes(report: dict) -> str:
    """The trace-size report as plain text, one row per run, sizes in MB (10^6 bytes)."""

    def mb(value: int) -> str:
        return f"{value / 1e6:.2f}"

    columns = ["steps", "T5 tokens", "tsc", "clip maps", "ella maps", "previews", "other", "in memory"]
    columns += ["npz", "npz raw"]
    lines = [
        f"trace size, SD1.5 geometry at {report['size']}, side by side, on {report['device']}; MB = 10^6 bytes",
        f"prompt: {report['prompt']}",
        "",
        "  ".join(f"{column:>{14 if index == 1 else 10}}" for index, column in enumerate(columns)),
    ]
    for run in report["runs"]:
        groups = run["group_bytes"]
        setting = run["t5_length_setting"]
        cells = [str(run["steps"]), f"{run['t5_tokens']} ({'fixed' if setting != FLEXIBLE else setting})"]
        for group in (*_PREFIX_GROUPS, "previews", "other"):
            cells.append(mb(groups.get(group, 0)))
        cells += [mb(run["memory_bytes"]), mb(run["npz_bytes"]), mb(run["npz_uncompressed_bytes"])]
        lines.append("  ".join(f"{cell:>{14 if index == 1 else 10}}" for index, cell in enumerate(cells)))
    first = report["runs"][0]["arrays"] if report["runs"] else {}
    lines += ["", "arrays of the first run:"]
    lines += [f"  {name:<36} {tuple(info['shape'])!s:<24} {info['dtype']}" for name, info in first.items()]
    return "\n".join(lines)
