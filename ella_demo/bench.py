"""Benchmark: the engine against diffusers' own pipeline, in one process, as medians of repeats.

Every timing comes from the same models, settings and prompt, after one warm-up run of each
configuration, so ratios between them are meaningful on any machine.
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


def _median_seconds(run: Callable[[], object], repeats: int, synchronize: Callable[[], None]) -> float:
    run()  # warm-up: kernels, allocator, caches
    synchronize()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        synchronize()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


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
    timings = {
        "diffusers_clip_s": _median_seconds(diffusers_clip, repeats, synchronize),
        "clip_s": _median_seconds(engine(sides="clip"), repeats, synchronize),
        "ella_s": _median_seconds(engine(sides="ella"), repeats, synchronize),
        "side_by_side_s": _median_seconds(engine(), repeats, synchronize),
        "sequential_s": _median_seconds(lambda: (engine(sides="clip")(), engine(sides="ella")()), repeats, synchronize),
    }
    traced = _median_seconds(engine(trace=True), repeats, synchronize)
    timings["trace_overhead"] = traced / timings["side_by_side_s"]

    encoder = models.t5_encoder

    def encode_uncached() -> None:
        encoder.cache.clear()
        encoder.encode(BENCH_PROMPT)

    timings["t5_encode_s"] = _median_seconds(encode_uncached, repeats, synchronize)
    timings["t5_cached_s"] = _median_seconds(lambda: encoder.encode(BENCH_PROMPT), repeats, synchronize)
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
