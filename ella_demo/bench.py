"""Benchmark: the engine against diffusers' own pipeline, in one process, as medians of repeats.

Every timing comes from the same models, settings and prompt, after one warm-up run of each
configuration, measured in rotation, so ratios between them are meaningful on any machine.
Each side (CLIP only, ELLA only) and both sides in one loop are timed twice: COLD, with the T5
and CLIP caches and the cached unconditional connector outputs cleared before every timed run
(so text encoding is part of the time, as for a new prompt), and WARM, with the caches kept (a
prompt the app has seen before). The caches' miss counters are read around every timed run, so
the report shows that cold runs really encoded and warm runs did not.

`measure_trace_size` answers a different question: how many bytes a trace of SD1.5 at 512x512
holds. It runs the real engine on a UNet with SD1.5's exact layout but toy channel widths, since a
trace's shapes depend only on the layout (see its docstring).
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from ella_demo.core.connector import EllaConfig
from ella_demo.core.devices import choose_placement
from ella_demo.core.engine import generate
from ella_demo.core.models import LoadedModels
from ella_demo.core.schedulers import make_scheduler
from ella_demo.core.text_encoding import FLEXIBLE
from ella_demo.inspect.outputs import package_versions, trace_arrays, write_run
from ella_demo.loading.models import assemble_models
from ella_demo.loading.presets import WeightlessConfigs, build_weightless_components
from ella_demo.loading.shipped import package_config_dir, read_json

BENCH_PROMPT = (
    "A red fox sitting beside a blue wooden boat on a snowy beach at sunset, "
    "three white birds flying above, watercolor style"
)
GUIDANCE = 10.0
# The configurations timed cold and warm, as (report name, engine `sides`).
SIDES_TIMED = (("clip", "clip"), ("ella", "ella"), ("side_by_side", "both"))
CACHES = ("t5", "clip", "connector")


@dataclass
class TimedRun:
    """One configuration: `work` is timed; `setup` (untimed) runs before every run of it."""

    work: Callable[[], object]
    setup: Callable[[], None] | None = None


def interleaved_medians(
    runs: dict[str, Callable[[], object] | TimedRun], repeats: int, synchronize: Callable[[], None]
) -> dict[str, float]:
    """Median seconds of each run, measured in rotation (A, B, C, A, B, C, ...).

    Interleaving spreads slow drifts of the machine (heat, other processes) over every
    configuration alike, so the ratios between them stay meaningful. Each run is warmed up once.
    A `TimedRun`'s setup runs before each of its runs, outside the timed span.
    """
    plans = {name: run if isinstance(run, TimedRun) else TimedRun(run) for name, run in runs.items()}

    def once(plan: TimedRun) -> float:
        if plan.setup is not None:
            plan.setup()
            synchronize()
        started = time.perf_counter()
        plan.work()
        synchronize()
        return time.perf_counter() - started

    for plan in plans.values():
        once(plan)
    samples: dict[str, list[float]] = {name: [] for name in plans}
    for _ in range(repeats):
        for name, plan in plans.items():
            samples[name].append(once(plan))
    return {name: statistics.median(values) for name, values in samples.items()}


def clear_caches(models: LoadedModels) -> None:
    """Forget every cached encoding: T5 and CLIP prompt features, unconditional connector outputs."""
    models.t5_encoder.cache.clear()
    models.clip_encoder.cache.clear()
    models.condition_cache.clear()


def cache_misses(models: LoadedModels) -> dict[str, int]:
    """The caches' miss counters (reset to 0 by `clear_caches`)."""
    caches = {"t5": models.t5_encoder.cache, "clip": models.clip_encoder.cache, "connector": models.condition_cache}
    return {name: cache.misses for name, cache in caches.items()}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def run_benchmark(
    models: LoadedModels, steps: int, height: int, width: int, repeats: int, scheduler: str = "dpm++"
) -> dict:
    """Medians in seconds for each configuration, the derived ratios, cache misses, and the environment.

    Keys: `{clip,ella,side_by_side}_{cold,warm}_s`, `diffusers_clip_s` (diffusers' pipeline, which
    encodes the prompt on every call), `sequential_s` (CLIP run then ELLA run, warm),
    `traced_side_by_side_s` (warm), `t5_encode_s` / `t5_cached_s`, `peak_memory_mb`; `ratios`;
    `cache_misses`: configuration -> cache -> misses summed over its timed runs.
    """
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
            guidance_scale=GUIDANCE,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="np",
        )

    def engine(**options) -> Callable[[], object]:
        return lambda: generate(models, BENCH_PROMPT, guidance_scale=GUIDANCE, **common, **options)

    # Cache misses of every run of a configuration, warm-up first (reading counters costs microseconds).
    misses: dict[str, list[dict[str, int]]] = {}

    def counted(name: str, work: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            before = cache_misses(models)
            work()
            after = cache_misses(models)
            misses.setdefault(name, []).append({cache: after[cache] - before[cache] for cache in CACHES})

        return run

    # Order matters for the warm runs: each warm run follows the cold run of the same configuration,
    # which filled exactly the cache entries it needs, and the runs after side_by_side_warm need no
    # entry it did not fill. The report's cache misses show it: zero for every warm run.
    runs: dict[str, Callable[[], object] | TimedRun] = {"diffusers_clip_s": diffusers_clip}
    for name, sides in SIDES_TIMED:
        runs[f"{name}_cold_s"] = TimedRun(counted(f"{name}_cold", engine(sides=sides)), lambda: clear_caches(models))
        runs[f"{name}_warm_s"] = TimedRun(counted(f"{name}_warm", engine(sides=sides)))
    runs["sequential_s"] = counted("sequential", lambda: (engine(sides="clip")(), engine(sides="ella")()))
    runs["traced_side_by_side_s"] = counted("traced_side_by_side", engine(trace=True))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timings = interleaved_medians(runs, repeats, synchronize)
    timed_misses = {
        name: {cache: sum(run[cache] for run in per_run[1:]) for cache in CACHES} for name, per_run in misses.items()
    }

    encoder = models.t5_encoder
    timings.update(
        interleaved_medians(
            {
                "t5_encode_s": TimedRun(lambda: encoder.encode(BENCH_PROMPT), encoder.cache.clear),
                "t5_cached_s": lambda: encoder.encode(BENCH_PROMPT),
            },
            repeats,
            synchronize,
        )
    )
    timings["peak_memory_mb"] = _peak_memory_mb(device)
    ratios = {
        "ella_over_clip_cold": timings["ella_cold_s"] / timings["clip_cold_s"],
        "ella_over_clip_warm": timings["ella_warm_s"] / timings["clip_warm_s"],
        "side_by_side_over_sequential": timings["side_by_side_warm_s"] / timings["sequential_s"],
        "clip_cold_over_diffusers": timings["clip_cold_s"] / timings["diffusers_clip_s"],
        "trace_overhead": timings["traced_side_by_side_s"] / timings["side_by_side_warm_s"],
    }
    return {
        **timings,
        "ratios": ratios,
        "cache_misses": timed_misses,
        "settings": {**common, "repeats": repeats, "prompt": BENCH_PROMPT, "guidance_scale": GUIDANCE},
        "preset": models.preset,
        "device": models.placement.describe(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "versions": package_versions(),
    }


def format_table(report: dict) -> str:
    """The report as plain text: a cold/warm table, the other timings, the ratios, the cache check."""
    settings = report["settings"]
    lines = [
        f"preset {report['preset']} on {report['device']}; {report['machine']}",
        f"{settings['num_inference_steps']} {settings['scheduler']} steps, {settings['height']}x{settings['width']}, "
        f"guidance {settings['guidance_scale']}; medians of {settings['repeats']} timed run(s) after a warm-up, "
        "in rotation",
        f"prompt: {settings['prompt']}",
        "",
        "cold = T5, CLIP and connector caches cleared before each run (encoding timed); warm = caches kept",
        "(JSON keys {clip,ella,side_by_side}_{cold,warm}_s; ratios ella_over_clip_{cold,warm})",
        f"{'seconds':<24}{'cold':>10}{'warm':>10}",
    ]
    for name, _ in SIDES_TIMED:
        lines.append(f"{name:<24}{report[f'{name}_cold_s']:>10.4f}{report[f'{name}_warm_s']:>10.4f}")
    ratios = report["ratios"]
    lines.append(f"{'ella / clip':<24}{ratios['ella_over_clip_cold']:>10.3f}{ratios['ella_over_clip_warm']:>10.3f}")

    others = {
        "diffusers_clip_s": "diffusers' pipeline, CLIP only (encodes every call)",
        "sequential_s": "CLIP run, then ELLA run (warm)",
        "traced_side_by_side_s": "side by side with tracing (warm)",
        "t5_encode_s": "T5 encoding of the prompt, uncached",
        "t5_cached_s": "T5 encoding of the prompt, cached",
        "peak_memory_mb": "peak memory (MB)",
    }
    width = max(len(name) for name in [*others, *ratios])
    lines += ["", "other figures"]
    lines += [f"{name:<{width}}  {report[name]:>12.4f}  {meaning}" for name, meaning in others.items()]
    lines += ["", "ratios"]
    lines += [f"{name:<{width}}  {value:>12.3f}" for name, value in ratios.items()]
    lines += ["", "cache misses over the timed runs (t5 / clip / connector)"]
    for name, counts in report["cache_misses"].items():
        lines.append(f"{name:<{width}}  {' / '.join(str(counts[cache]) for cache in CACHES)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Trace size (the capture budget)

# SD1.5's UNet at 1/40 of its channel widths (320, 640, 1280, 1280); everything else as published.
SLIM_BLOCK_OUT_CHANNELS = [8, 16, 32, 32]
SLIM_NORM_GROUPS = 8
TRACE_GEOMETRY_METHOD = (
    "the engine's traced run on random-weight models with SD1.5's layout: UNet from SD1.5's config "
    f"with block_out_channels {SLIM_BLOCK_OUT_CHANNELS} (1/40 width), ELLA's released connector "
    "architecture, CLIP text model widened to 768 (77 tokens), tiny preset's VAE (8x), T5 and tokenizers"
)


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
        sources={"weights": f"random (seed {seed}), SD1.5 layout at 1/40 width (bench.sd15_trace_geometry)"},
        random_weights=True,
    )


def _array_group(name: str) -> str:
    for prefix in ("tsc_attention", "clip_cross_attention", "ella_cross_attention"):
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
    runs = []
    for t5_length in t5_lengths:
        for count in steps:
            started = time.perf_counter()
            result = generate(
                models,
                prompt,
                num_inference_steps=count,
                guidance_scale=GUIDANCE,
                height=height,
                width=width,
                num_images=num_images,
                t5_length=t5_length,
                trace=True,
            )
            seconds = time.perf_counter() - started
            arrays = trace_arrays(result)
            with tempfile.TemporaryDirectory() as folder:
                write_run(result, models, folder)
                npz_bytes = (Path(folder) / "trace.npz").stat().st_size
                np.savez(Path(folder) / "plain.npz", **arrays)
                plain_bytes = (Path(folder) / "plain.npz").stat().st_size
            groups: dict[str, int] = {}
            for name, array in arrays.items():
                groups[_array_group(name)] = groups.get(_array_group(name), 0) + array.nbytes
            runs.append(
                {
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
            )
    return {
        "prompt": prompt,
        "size": f"{width}x{height}",
        "method": TRACE_GEOMETRY_METHOD,
        "device": models.placement.describe(),
        "runs": runs,
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
        for group in ("tsc_attention", "clip_cross_attention", "ella_cross_attention", "previews", "other"):
            cells.append(mb(groups.get(group, 0)))
        cells += [mb(run["memory_bytes"]), mb(run["npz_bytes"]), mb(run["npz_uncompressed_bytes"])]
        lines.append("  ".join(f"{cell:>{14 if index == 1 else 10}}" for index, cell in enumerate(cells)))
    first = report["runs"][0]["arrays"] if report["runs"] else {}
    lines += ["", "arrays of the first run:"]
    lines += [f"  {name:<36} {tuple(info['shape'])!s:<24} {info['dtype']}" for name, info in first.items()]
    return "\n".join(lines)
