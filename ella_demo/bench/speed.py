"""Benchmark: the engine against diffusers' own pipeline, in one process, as medians of repeats.

Every timing comes from the same models, settings and prompt, after one warm-up run of each
configuration, measured in rotation, so ratios between them are meaningful on any machine.
Each side (CLIP only, ELLA only) and both sides in one loop are timed twice: COLD, with the T5
and CLIP caches and the cached unconditional connector outputs cleared before every timed run
(so text encoding is part of the time, as for a new prompt), and WARM, with the caches kept (a
prompt the app has seen before). The caches' miss counters are read around every timed run, so
the report shows that cold runs really encoded and warm runs did not.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline

from ella_demo.bench import BENCH_PROMPT, GUIDANCE
from ella_demo.core.engine import generate
from ella_demo.core.models import LoadedModels
from ella_demo.core.schedulers import make_scheduler
from ella_demo.inspect.outputs import package_versions

# The configurations timed cold and warm, as (report name, engine `sides`).
SIDES_TIMED = (("clip", "clip"), ("ella", "ella"), ("side_by_side", "both"))
CACHES = ("t5", "clip", "connector")


@dataclass
class TimedRun:
    """One configuration: `work` is timed; `setup` (untimed) runs before every run of it."""

    work: Callable[[], object]
    setup: Callable[[], None] | None = None


Runs = dict[str, Callable[[], object] | TimedRun]


def interleaved_medians(runs: Runs, repeats: int, synchronize: Callable[[], None]) -> dict[str, float]:
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


class _MissCounter:
    """Cache misses of every run of each configuration, warm-up first (reading counters costs microseconds)."""

    def __init__(self, models: LoadedModels):
        self.models = models
        self.misses: dict[str, list[dict[str, int]]] = {}

    def counted(self, name: str, work: Callable[[], object]) -> Callable[[], None]:
        """`work`, recording the cache misses of each of its runs under `name`."""

        def run() -> None:
            before = cache_misses(self.models)
            work()
            after = cache_misses(self.models)
            self.misses.setdefault(name, []).append({cache: after[cache] - before[cache] for cache in CACHES})

        return run

    def timed(self) -> dict[str, dict[str, int]]:
        """configuration -> cache -> misses summed over its timed runs (the warm-up left out)."""
        return {
            name: {cache: sum(run[cache] for run in per_run[1:]) for cache in CACHES}
            for name, per_run in self.misses.items()
        }


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def _diffusers_run(models: LoadedModels, common: dict) -> Callable[[], None]:
    """One CLIP generation by diffusers' own pipeline on the same modules (it encodes the prompt every call)."""
    pipe = models.pipe
    reference = StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=make_scheduler(common["scheduler"], pipe.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)

    def diffusers_clip() -> None:
        reference(
            BENCH_PROMPT,
            num_inference_steps=common["num_inference_steps"],
            height=common["height"],
            width=common["width"],
            guidance_scale=GUIDANCE,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="np",
        )

    return diffusers_clip


def _engine_runs(models: LoadedModels, common: dict, counter: _MissCounter) -> Runs:
    """The engine's configurations, each counting its cache misses."""

    def engine(**options) -> Callable[[], object]:
        return lambda: generate(models, BENCH_PROMPT, guidance_scale=GUIDANCE, **common, **options)

    # Order matters for the warm runs: each warm run follows the cold run of the same configuration,
    # which filled exactly the cache entries it needs, and the runs after side_by_side_warm need no
    # entry it did not fill. The report's cache misses show it: zero for every warm run.
    runs: Runs = {}
    for name, sides in SIDES_TIMED:
        cold = counter.counted(f"{name}_cold", engine(sides=sides))
        runs[f"{name}_cold_s"] = TimedRun(cold, lambda: clear_caches(models))
        runs[f"{name}_warm_s"] = TimedRun(counter.counted(f"{name}_warm", engine(sides=sides)))
    runs["sequential_s"] = counter.counted("sequential", lambda: (engine(sides="clip")(), engine(sides="ella")()))
    runs["traced_side_by_side_s"] = counter.counted("traced_side_by_side", engine(trace=True))
    return runs


def _t5_runs(models: LoadedModels) -> Runs:
    """T5 encoding of the benchmark prompt, with its cache cleared before each run and kept."""
    encoder = models.t5_encoder
    return {
        "t5_encode_s": TimedRun(lambda: encoder.encode(BENCH_PROMPT), encoder.cache.clear),
        "t5_cached_s": lambda: encoder.encode(BENCH_PROMPT),
    }


def _ratios(timings: dict[str, float]) -> dict[str, float]:
    """The report's ratios between configurations."""
    return {
        "ella_over_clip_cold": timings["ella_cold_s"] / timings["clip_cold_s"],
        "ella_over_clip_warm": timings["ella_warm_s"] / timings["clip_warm_s"],
        "side_by_side_over_sequential": timings["side_by_side_warm_s"] / timings["sequential_s"],
        "clip_cold_over_diffusers": timings["clip_cold_s"] / timings["diffusers_clip_s"],
        "trace_overhead": timings["traced_side_by_side_s"] / timings["side_by_side_warm_s"],
    }


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
    counter = _MissCounter(models)
    runs: Runs = {"diffusers_clip_s": _diffusers_run(models, common), **_engine_runs(models, common, counter)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timings = interleaved_medians(runs, repeats, synchronize)
    timings.update(interleaved_medians(_t5_runs(models), repeats, synchronize))
    timings["peak_memory_mb"] = _peak_memory_mb(device)
    return {
        **timings,
        "ratios": _ratios(timings),
        "cache_misses": counter.timed(),
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
