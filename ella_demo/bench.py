"""Benchmark: the engine against diffusers' own pipeline, in one process, as medians of repeats.

Every timing comes from the same models, settings and prompt, after one warm-up run of each
configuration, measured in rotation, so ratios between them are meaningful on any machine.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch
from diffusers import StableDiffusionPipeline

from .engine import generate
from .loading import LoadedModels
from .outputs import package_versions
from .schedulers import make_scheduler

BENCH_PROMPT = (
    "A red fox sitting beside a blue wooden boat on a snowy beach at sunset, "
    "three white birds flying above, watercolor style"
)


def interleaved_medians(
    runs: dict[str, Callable[[], object]], repeats: int, synchronize: Callable[[], None]
) -> dict[str, float]:
    """Median seconds of each run, measured in rotation (A, B, C, A, B, C, ...).

    Interleaving spreads slow drifts of the machine (heat, other processes) over every
    configuration alike, so the ratios between them stay meaningful. Each run is warmed up once.
    """
    for run in runs.values():
        run()
    synchronize()
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            synchronize()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def run_benchmark(
    models: LoadedModels, steps: int, height: int, width: int, repeats: int, scheduler: str = "dpm++"
) -> dict:
    """Medians in seconds for each configuration, the derived ratios, and the environment."""
    device = models.device

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    common = {"num_inference_steps": steps, "height": height, "width": width, "scheduler": scheduler}
    pipe = models.pipe
    reference = StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=make_scheduler(scheduler, pipe.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)

    def diffusers_clip() -> None:
        reference(
            BENCH_PROMPT,
            num_inference_steps=steps,
            height=height,
            width=width,
            guidance_scale=10.0,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="np",
        )

    def engine(**options) -> Callable[[], object]:
        return lambda: generate(models, BENCH_PROMPT, **common, **options)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timings = interleaved_medians(
        {
            "diffusers_clip_s": diffusers_clip,
            "clip_s": engine(sides="clip"),
            "ella_s": engine(sides="ella"),
            "side_by_side_s": engine(),
            "sequential_s": lambda: (engine(sides="clip")(), engine(sides="ella")()),
            "traced_side_by_side_s": engine(trace=True),
        },
        repeats,
        synchronize,
    )
    timings["trace_overhead"] = timings["traced_side_by_side_s"] / timings["side_by_side_s"]

    encoder = models.t5_encoder

    def encode_uncached() -> None:
        encoder.cache.clear()
        encoder.encode(BENCH_PROMPT)

    timings.update(
        interleaved_medians(
            {"t5_encode_s": encode_uncached, "t5_cached_s": lambda: encoder.encode(BENCH_PROMPT)}, repeats, synchronize
        )
    )
    timings["peak_memory_mb"] = _peak_memory_mb(device)
    return {
        **timings,
        "ratios": {
            "ella_over_clip": timings["ella_s"] / timings["clip_s"],
            "side_by_side_over_sequential": timings["side_by_side_s"] / timings["sequential_s"],
            "clip_over_diffusers": timings["clip_s"] / timings["diffusers_clip_s"],
            "trace_overhead": timings["trace_overhead"],
        },
        "settings": {**common, "repeats": repeats, "prompt": BENCH_PROMPT, "guidance_scale": 10.0},
        "preset": models.preset,
        "device": models.placement.describe(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "versions": package_versions(),
    }


def format_table(report: dict) -> str:
    """A plain-text table of the report's timings and ratios."""
    rows = [(name, value) for name, value in report.items() if isinstance(value, float)]
    rows += [(f"ratio {name}", value) for name, value in report["ratios"].items()]
    width = max(len(name) for name, _ in rows)
    header = f"preset {report['preset']} on {report['device']}, {report['machine']}; settings {report['settings']}"
    lines = [header, ""] + [f"{name:<{width}}  {value:10.4f}" for name, value in rows]
    return "\n".join(lines)
