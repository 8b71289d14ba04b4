"""Benchmark: connector-training throughput and memory, through the training code itself.

Four configurations: text features and latents encoded online at every step, or read from a
feature cache built first; the UNet's gradient checkpointing off or on. Each runs in a freshly
spawned process, as sessions.py spawns the app: a process's peak RSS cannot be reset and loading
the models sets a peak of its own, so a shared process would hide what a training step adds.

In that process: load the models, `train.loop.prepare_run` (timed as setup), warm-up optimizer
steps, then the timed steps, each one `loop._optimizer_step` exactly as `train` runs it. The
feature cache is built once, through `prepare_run` too, in a process of its own before the first
cached configuration (timed and reported apart): encoding full-size pictures peaks higher than a
training step does, so in the training process it would hide the step's peak. Memory on CUDA:
torch's allocated bytes after loading and after setup, and their peak over the timed steps (reset
after the warm-up). Elsewhere: the process's RSS after loading and after setup, and its peak
(ru_maxrss) over the whole process, with the peak reached before the first step kept as well, so
that a peak set by loading shows as such.

The data are synthetic pictures at the benchmark's resolution, as many as the steps read (each
step reads fresh samples), with captions of 20-40 words, encoded at the recipe's 128 T5 tokens.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from ella_demo.bench.speed import _peak_memory_mb
from ella_demo.core.devices import choose_placement
from ella_demo.core.errors import InputError
from ella_demo.core.models import LoadedModels
from ella_demo.inspect.outputs import package_versions
from ella_demo.loading.models import load_models
from ella_demo.loading.sources import ELLA_SCRATCH
from ella_demo.train import loop
from ella_demo.train.config import TrainConfig, validate

# name -> (features from a cache built first, UNet gradient checkpointing)
CONFIGS = {
    "online": (False, False),
    "online_checkpointing": (False, True),
    "cached": (True, False),
    "cached_checkpointing": (True, True),
}
# Pairs compared in the report's ratios, (numerator, denominator): what the cache and checkpointing change.
RATIO_PAIRS = (
    ("online", "cached"),
    ("online_checkpointing", "cached_checkpointing"),
    ("online_checkpointing", "online"),
    ("cached_checkpointing", "cached"),
)
RATIO_METRICS = ("seconds_per_step", "step_memory_mb")
# Default (resolution, batch size): the tiny preset's small pictures, SD1.5's 512 px at the batch a CPU can take.
TINY_SHAPE = (64, 8)
SD15_SHAPE = (512, 1)
POCKET_SHAPE = (64, 32)  # the pocket world's pictures and the batch its connector stage trains with

_COLOURS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "brown", "silver")
_THINGS = ("cube", "ball", "teapot", "bicycle", "cat", "umbrella", "vase", "lantern", "book", "chair")
_WORDS = {
    "colour": _COLOURS,
    "other_colour": _COLOURS,
    "thing": _THINGS,
    "other_thing": _THINGS,
    "size": ("small", "large", "tiny", "tall", "round", "old"),
    "relation": ("to the left of", "behind", "on top of", "next to", "under", "in front of"),
    "count": ("two", "three", "four", "several"),
    "place": ("quiet kitchen", "sunny garden", "busy street", "wooden cabin", "snowy field"),
    "light": ("soft morning light", "a single candle", "neon signs", "the setting sun"),
    "style": ("watercolor painting", "pencil sketch", "studio photograph", "children's book illustration"),
}
_PHRASES = (
    "a {size} {colour} {thing} {relation} a {other_colour} {other_thing}",
    "{count} {other_colour} {other_thing}s in the background",
    "in a {place}",
    "lit by {light}",
    "drawn as a {style}",
)


def default_shape(preset: str) -> tuple[int, int]:
    """(resolution, batch size) the benchmark uses for `preset` unless told otherwise."""
    return {"tiny": TINY_SHAPE, "pocket": POCKET_SHAPE}.get(preset, SD15_SHAPE)


@dataclass(frozen=True)
class TrainingBench:
    """What every configuration shares: the preset and its placement, the picture size, batch and steps."""

    preset: str = "tiny"
    device: str = "auto"
    dtype: str | None = None
    t5_dtype: str | None = None
    cache_dir: Path | None = None  # the hub cache, for the sd15 preset's weights
    resolution: int = TINY_SHAPE[0]
    batch_size: int = TINY_SHAPE[1]
    timed_steps: int = 3
    warmup_steps: int = 1

    @property
    def num_samples(self) -> int:
        """One epoch is exactly the steps' samples: every step reads new ones, and a cache holds only those."""
        return self.batch_size * (self.warmup_steps + self.timed_steps)


def train_config(bench: TrainingBench, name: str, data: Path, workdir: Path) -> TrainConfig:
    """The recipe's TrainConfig for configuration `name`, writing under `workdir` (no validation images)."""
    cached, checkpointing = CONFIGS[name]
    steps = bench.warmup_steps + bench.timed_steps
    return TrainConfig(
        train_data=str(data), out=workdir / name, preset=bench.preset, device=bench.device, dtype=bench.dtype,
        t5_dtype=bench.t5_dtype, resolution=bench.resolution, batch_size=bench.batch_size,
        max_steps=steps, feature_cache=workdir / "features" if cached else None,
        gradient_checkpointing=checkpointing, validation_prompts=(), progress=False,
        # The benchmark loads the models itself (with bench.cache_dir): this serves only `datasets`' copy of the
        # pictures, which goes with the work folder.
        cache_dir=workdir / "datasets_cache",
    )  # fmt: skip


def check_settings(bench: TrainingBench, configs: Sequence[str]) -> None:
    """Raise an ExplorerError for settings the measurement cannot use, before any process starts.

    InputError fields: `timed_steps`, `warmup_steps`, `configs`, or those of the TrainConfig
    (`resolution`, `batch_size`).
    """
    if bench.timed_steps < 1:
        raise InputError("timed_steps", f"must be at least 1, got {bench.timed_steps}.")
    if bench.warmup_steps < 1:
        raise InputError("warmup_steps", f"must be at least 1 (the first step counts FLOPs), got {bench.warmup_steps}.")
    unknown = [name for name in configs if name not in CONFIGS]
    if unknown or not configs:
        raise InputError("configs", f"must be some of {', '.join(CONFIGS)}, got {list(configs)}.")
    for name in configs:
        validate(train_config(bench, name, Path("pictures"), Path("work")))
    choose_placement(bench.device, bench.dtype, bench.t5_dtype)


def write_training_pictures(folder: Path, count: int, resolution: int, seed: int = 0) -> Path:
    """`count` synthetic square pictures (boxes on a gradient) with 20-40-word captions, as an image folder.

    The layout `train` reads: the PNGs and a metadata.jsonl with file_name and text.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        name = f"{index:05d}.png"
        Image.fromarray(_picture(rng, resolution)).save(folder / name)
        lines.append(json.dumps({"file_name": name, "text": _caption(rng)}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def _picture(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8: a vertical colour gradient with three boxes of random colours."""
    top, bottom = rng.integers(0, 256, (2, 3))
    pixels = np.repeat((top + (bottom - top) * np.linspace(0, 1, size)[:, None])[:, None], size, axis=1)
    for _ in range(3):
        side = rng.integers(max(1, size // 8), max(2, size // 3))
        row, column = rng.integers(0, size - side, 2)
        pixels[row : row + side, column : column + side] = rng.integers(0, 256, 3)
    return pixels.astype(np.uint8)


def _caption(rng: np.random.Generator) -> str:
    """A dense caption of 20 to 40 words, from phrases about objects, their relations, place and style."""
    target = int(rng.integers(20, 41))
    words: list[str] = []
    while len(words) < target:
        fields = {key: str(rng.choice(choices)) for key, choices in _WORDS.items()}
        words += str(rng.choice(_PHRASES)).format(**fields).split()
    return " ".join(words[:target])


def _load(config: TrainConfig, cache_dir: Path | None) -> tuple[LoadedModels, float]:
    """The models as `prepare_run` would load them (a new connector), and the seconds loading took."""
    started = time.perf_counter()
    models = load_models(config.preset, ella=ELLA_SCRATCH, device=config.device, dtype=config.dtype,
                         t5_dtype=config.t5_dtype, cache_dir=cache_dir, seed=config.seed)  # fmt: skip
    return models, time.perf_counter() - started


def measure_cache_build(bench: TrainingBench, data: Path, workdir: Path) -> dict:
    """Build the feature cache the cached configurations share, through `prepare_run`; its time, memory and size.

    Run it in a fresh process of its own: encoding full-size pictures sets a memory peak of its own,
    which would hide the training steps' peak in the process that trains.
    """
    config = train_config(bench, "cached", data, workdir)
    models, load_s = _load(config, bench.cache_dir)
    after_load = _memory_now_mb(models.device)
    started = time.perf_counter()
    run = loop.prepare_run(config, models)
    return {
        "seconds": time.perf_counter() - started,
        "load_s": load_s,
        "memory_after_load_mb": after_load,
        "peak_memory_mb": _peak_memory_mb(models.device),
        **_cache_size(run.source.cache),
    }


def measure_configuration(bench: TrainingBench, name: str, data: Path, workdir: Path) -> dict:
    """Load, set up and train configuration `name` as `train` would; its times and memory.

    Run it in a fresh process, after `measure_cache_build` for a cached configuration (its setup then
    finds the cache complete and encodes nothing).
    """
    config = train_config(bench, name, data, workdir)
    models, load_s = _load(config, bench.cache_dir)
    device = models.device
    after_load = _memory_now_mb(device)
    started = time.perf_counter()
    run = loop.prepare_run(config, models)
    setup_s = time.perf_counter() - started
    after_setup, peak_before_steps = _memory_now_mb(device), _peak_memory_mb(device)
    seconds, losses, flops = _steps(run, bench)
    timed = seconds[bench.warmup_steps :]
    peak = _peak_memory_mb(device)
    # ru_maxrss cannot be reset: if loading set the peak, what the steps add is unknown.
    hidden = device.type != "cuda" and peak <= peak_before_steps
    return {
        "cached": config.feature_cache is not None,
        "checkpointing": config.gradient_checkpointing,
        "placement": models.placement.describe(),
        "load_s": load_s,
        "setup_s": setup_s,
        "step_s": timed,
        "warmup_step_s": seconds[: bench.warmup_steps],
        "seconds_per_step": statistics.median(timed),
        "samples_per_s": bench.batch_size / statistics.median(timed),
        "flops_per_sample": flops / bench.batch_size,
        "losses": losses,
        "memory_after_load_mb": after_load,
        "memory_after_setup_mb": after_setup,
        "peak_before_steps_mb": peak_before_steps,
        "peak_memory_mb": peak,
        "step_memory_mb": None if hidden else peak - after_setup,
        "peak_set_before_steps": hidden,
        "memory": _memory_kind(device),
    }


def _steps(run: loop.TrainingRun, bench: TrainingBench) -> tuple[list[float], list[float], int]:
    """Seconds and loss of each optimizer step, warm-up first, and the FLOPs of the first (warm-up) step.

    torch's FlopCounterMode counts the matmuls and convolutions the step dispatches (encoders,
    UNet forward and backward, recomputation under checkpointing, connector); it slows that step,
    which is why it counts an untimed one. On CUDA the peak memory is reset after the warm-up.
    """
    stream, empty = run.source.stream(0), run.source.empty_prompt()
    device = run.models.device
    seconds, losses, flops = [], [], 0
    for step in range(1, bench.warmup_steps + bench.timed_steps + 1):
        if step == bench.warmup_steps + 1 and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        counter = FlopCounterMode(display=False) if step == 1 else contextlib.nullcontext()
        started = time.perf_counter()
        # The step ends with the loss's .item(), which waits for the device: no other synchronisation needed.
        with counter:
            loss, _ = loop._optimizer_step(run, step, stream, empty)
        seconds.append(time.perf_counter() - started)
        losses.append(loss)
        flops = counter.get_total_flops() if step == 1 else flops
    return seconds, losses, flops


def _memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda allocated (MiB); peak over the timed steps"
    return "process RSS (MiB); peak over the whole process"


def _memory_now_mb(device: torch.device) -> float:
    """MiB in use now: torch's allocated bytes on CUDA, else the process's RSS."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def _cache_size(cache) -> dict:
    """Bytes on disk of a feature cache: per sample (its per-sample arrays only) and the whole folder."""
    per_sample = sum((cache.folder / f"{name}.npy").stat().st_size for name in cache.names) / len(cache)
    total = sum(path.stat().st_size for path in cache.folder.iterdir() if path.is_file())
    return {"cache_bytes_per_sample": per_sample, "cache_bytes": total, "cache_samples": len(cache)}


def _in_fresh_process(function, *args):
    """function(*args) in a newly spawned interpreter, so that its peak memory is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def run_training_bench(bench: TrainingBench, configs: Sequence[str] = tuple(CONFIGS), progress: bool = True) -> dict:
    """Each configuration in its own process on the same synthetic data; results, ratios and the environment.

    Keys: `configs` (name -> the figures of `measure_configuration`), `cache_build` (those of
    `measure_cache_build`, when a cached configuration ran), `ratios` (see `RATIO_PAIRS`), `settings`,
    `device`, `machine`, `memory` (what the memory figures are), `versions`, `wall_s`.
    `progress` prints one line to stderr as each process finishes.
    """
    check_settings(bench, configs)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ella-training-bench-") as folder:
        results, cache_build = _measure_all(bench, configs, Path(folder), progress)
    first = next(iter(results.values()))
    return {
        "configs": results,
        **({"cache_build": cache_build} if cache_build else {}),
        "ratios": _ratios(results),
        "settings": json.loads(json.dumps(asdict(bench), default=str))
        | {"t5_length": TrainConfig.t5_length, "num_samples": bench.num_samples},
        "device": first["placement"],
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "memory": first["memory"],
        "versions": package_versions(),
        "wall_s": time.perf_counter() - started,
    }


def _measure_all(
    bench: TrainingBench, configs: Sequence[str], workdir: Path, progress: bool
) -> tuple[dict[str, dict], dict | None]:
    """Write the pictures, then measure each configuration, building the feature cache before the first cached one."""
    data = write_training_pictures(workdir / "pictures", bench.num_samples, bench.resolution)
    results, cache_build = {}, None

    def say(line: str) -> None:
        if progress:
            print(line, file=sys.stderr, flush=True)

    for name in configs:
        if CONFIGS[name][0] and cache_build is None:
            cache_build = _in_fresh_process(measure_cache_build, bench, data, workdir)
            say(f"feature cache: built in {cache_build['seconds']:.1f} s")
        results[name] = _in_fresh_process(measure_configuration, bench, name, data, workdir)
        say(f"{name}: {results[name]['seconds_per_step']:.3f} s/step")
    return results, cache_build


def _ratios(results: dict[str, dict]) -> dict[str, float]:
    """`<a>_over_<b>_<metric>` for each pair of RATIO_PAIRS measured in this run (where both values are known)."""
    return {
        f"{first}_over_{second}_{metric}": results[first][metric] / results[second][metric]
        for first, second in RATIO_PAIRS
        if first in results and second in results
        for metric in RATIO_METRICS
        if results[first][metric] is not None and results[second][metric] is not None
    }


def format_training_table(report: dict) -> str:
    """The report as plain text: one row per configuration, the feature cache's build, then the ratios."""
    settings = report["settings"]
    lines = [
        f"connector training, preset {settings['preset']} at {settings['resolution']}x{settings['resolution']}, "
        f"batch {settings['batch_size']}, T5 length {settings['t5_length']}, on {report['device']}; "
        f"{report['machine']}",
        f"median of {settings['timed_steps']} timed optimizer step(s) after {settings['warmup_steps']} warm-up; "
        f"memory: {report['memory']}; * = the peak was reached before the first step",
        "",
        f"{'config':<22}{'s/step':>9}{'samples/s':>11}{'GFLOP/sample':>14}{'load s':>8}{'setup s':>9}{'after load':>12}"
        f"{'after setup':>13}{'peak':>10}{'step mem':>10}",
    ]
    for name, row in report["configs"].items():
        step_memory = "-" if row["step_memory_mb"] is None else f"{row['step_memory_mb']:.0f}"
        lines.append(
            f"{name:<22}{row['seconds_per_step']:>9.3f}{row['samples_per_s']:>11.3f}"
            f"{row['flops_per_sample'] / 1e9:>14.2f}{row['load_s']:>8.1f}"
            f"{row['setup_s']:>9.1f}{row['memory_after_load_mb']:>12.0f}{row['memory_after_setup_mb']:>13.0f}"
            f"{row['peak_memory_mb']:>9.0f}{'*' if row['peak_set_before_steps'] else ' '}{step_memory:>10}"
        )
    if build := report.get("cache_build"):
        lines += [
            "",
            f"feature cache (own process): {build['cache_samples']} samples encoded in {build['seconds']:.1f} s, "
            f"{build['cache_bytes_per_sample'] / 2**10:.1f} KiB per sample on disk, peak memory "
            f"{build['peak_memory_mb']:.0f} MiB",
        ]
    lines += ["", "ratios (this run)"]
    width = max((len(name) for name in report["ratios"]), default=0)
    lines += [f"  {name:<{width}}  {value:>8.3f}" for name, value in report["ratios"].items()]
    lines.append(f"\nwall time {report['wall_s']:.0f} s")
    return "\n".join(lines)
