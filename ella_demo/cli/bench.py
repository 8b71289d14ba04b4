"""The `bench` command: time the engine, or measure the trace's size, the app's memory over sessions, or
connector training's throughput and memory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ella_demo.cli import arguments
from ella_demo.cli.output_paths import check_out_file
from ella_demo.core.errors import InputError
from ella_demo.core.settings import SCHEDULER_NAMES, GenerationSettings, validate
from ella_demo.core.text_encoding import FLEXIBLE

# The flag of each setting the training benchmark's checks may name.
TRAINING_FLAGS = {"timed_steps": "--train-steps", "configs": "--configs", "resolution": "--resolution",
                  "batch_size": "--batch-size"}  # fmt: skip


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    """The `bench` sub-command's flags: the timing ones, then those of --trace-size, --sessions and --training."""
    bench = commands.add_parser(
        "bench",
        help="time the engine (cold and warm caches) against diffusers' pipeline, or measure trace sizes, serving "
        "memory or connector training",
    )
    arguments.add_model_arguments(bench, default_preset="tiny")
    bench.add_argument("--steps", type=int, default=10)
    bench.add_argument("--height", type=int, default=256)
    bench.add_argument("--width", type=int, default=256)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="dpm++")
    bench.add_argument("--json", type=Path, help="write the report here")
    bench.add_argument(
        "--trace-size",
        action="store_true",
        help="instead of timing, measure the bytes of an SD1.5 512x512 trace on models with SD1.5's layout at "
        "toy width (builds its own models: only --device/--dtype apply)",
    )
    bench.add_argument(
        "--sessions",
        type=int,
        help="instead of timing, serve the app and read its RSS over this many browser sessions, each one traced "
        "generation of --height x --width, --steps (Linux)",
    )
    bench.add_argument(
        "--max-sessions", type=int, default=32, help="with --sessions: the app's --max-sessions (default 32)"
    )
    bench.add_argument(
        "--t5-memory",
        action="store_true",
        help="instead of timing, show each T5 memory option's GPU weights and, on a CUDA GPU, measure its peak over "
        "one generation at --resolution (default 512; tiny: 64), --steps, in --dtype (default fp16)",
    )
    bench.add_argument("--trace-steps", type=int, nargs="+", default=[25, 50], help="with --trace-size")
    bench.add_argument(
        "--trace-t5-length",
        type=arguments.t5_length,
        nargs="+",
        default=[FLEXIBLE],
        help="with --trace-size: flexible or N",
    )
    _add_training_arguments(bench)


def _add_training_arguments(bench: argparse.ArgumentParser) -> None:
    """The flags of --training (bench/training.py)."""
    bench.add_argument(
        "--training",
        action="store_true",
        help="instead of timing generation, measure connector training (samples/s, peak memory) on synthetic "
        "pictures: online encoding or a feature cache, gradient checkpointing off or on, each in a fresh process "
        "(models: --preset/--device/--dtype/--t5-dtype)",
    )
    bench.add_argument("--resolution", type=int, help="with --training: picture side (default 64 for tiny, else 512)")
    bench.add_argument("--batch-size", type=int, help="with --training: default 8 for tiny, else 1")
    bench.add_argument("--train-steps", type=int, default=3, help="with --training: timed steps after 1 warm-up")
    bench.add_argument(
        "--configs",
        nargs="+",
        help="with --training: some of online, online_checkpointing, cached, cached_checkpointing (default all)",
    )


def run_bench(args: argparse.Namespace) -> int:
    """Run the measurement the flags choose, print it as a table, and write it as JSON with --json."""
    if args.json:
        check_out_file(args.json, "--json")
    if args.sessions is not None:
        report = _bench_sessions(args)
    elif args.trace_size:
        report = _bench_trace_size(args)
    elif args.training:
        report = _bench_training(args)
    elif args.t5_memory:
        report = _bench_t5_memory(args)
    else:
        report = _bench_speed(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _bench_speed(args: argparse.Namespace) -> dict:
    """Time the engine against diffusers' pipeline on the chosen models."""
    from ella_demo.bench.speed import format_table, run_benchmark

    bench_settings = GenerationSettings(
        prompt="", num_inference_steps=args.steps, height=args.height, width=args.width, scheduler=args.scheduler
    )
    validate(bench_settings, args.preset)
    if args.repeats < 1:
        raise InputError("--repeats", f"must be at least 1, got {args.repeats}.")
    models = arguments.load_from_args(args)
    report = run_benchmark(models, args.steps, args.height, args.width, args.repeats, args.scheduler)
    print(format_table(report))
    return report


def _bench_trace_size(args: argparse.Namespace) -> dict:
    """Measure trace sizes on models the benchmark builds itself: model choices are refused."""
    from ella_demo.bench.trace_size import format_trace_sizes, measure_trace_size

    overrides = _model_overrides(args)
    if overrides or args.preset != "tiny":
        raise InputError(
            "--trace-size",
            "builds its own models with SD1.5's layout; drop "
            + (", ".join(overrides) or f"--preset {args.preset}")
            + ".",
        )
    report = measure_trace_size(args.trace_steps, args.trace_t5_length, device=args.device, dtype=args.dtype)
    print(format_trace_sizes(report))
    return report


def _bench_sessions(args: argparse.Namespace) -> dict:
    """Serve the app and read its memory over --sessions browser sessions."""
    from ella_demo.app import ServingLimits
    from ella_demo.bench.sessions import format_session_memory, session_memory

    for flag, value in (("--sessions", args.sessions), ("--max-sessions", args.max_sessions)):
        if value < 1:
            raise InputError(flag, f"must be at least 1, got {value}.")
    validate(GenerationSettings(prompt="", num_inference_steps=args.steps, height=args.height, width=args.width),
             args.preset)  # fmt: skip
    limits = ServingLimits(max_sessions=args.max_sessions)
    report = session_memory(args.preset, args.sessions, max(1, args.sessions // 10), args.height, args.steps, limits)
    print(format_session_memory(report))
    return report


def _bench_t5_memory(args: argparse.Namespace) -> dict:
    """Each T5 memory option's GPU weights (counted) and, on CUDA, its peak over one generation (measured)."""
    from ella_demo.bench.t5_memory import ARCHITECTURES, MemoryBench, format_memory_table, run_memory_bench

    if args.preset not in ARCHITECTURES:
        raise InputError("--preset", f"for --t5-memory must be one of {', '.join(ARCHITECTURES)}, got {args.preset}.")
    if overrides := _model_overrides(args):
        raise InputError("--t5-memory", f"measures the preset's own models; drop {', '.join(overrides)}.")
    size = args.resolution or (64 if args.preset == "tiny" else 512)
    bench = MemoryBench(args.preset, args.dtype or "fp16", size, args.steps)
    validate(GenerationSettings(prompt="", num_inference_steps=bench.steps, height=size, width=size), args.preset)
    report = run_memory_bench(bench)
    print(format_memory_table(report))
    return report


def _model_overrides(args: argparse.Namespace) -> list[str]:
    """The model flags given beyond the preset, which the benchmarks that build their own models refuse."""
    flags = (("--sd15", args.sd15), ("--ella", args.ella), ("--t5", args.t5), ("--text-encoder", args.text_encoder))
    return [flag for flag, value in flags if value] + arguments.addition_flags(args)


def _bench_training(args: argparse.Namespace) -> dict:
    """Measure connector training on the preset's own models, each configuration in a fresh process."""
    from ella_demo.bench import training

    if overrides := _model_overrides(args):
        raise InputError("--training", f"trains a new connector on the preset's models; drop {', '.join(overrides)}.")
    resolution, batch_size = training.default_shape(args.preset)
    bench = training.TrainingBench(
        preset=args.preset, device=args.device, dtype=args.dtype, t5_dtype=args.t5_dtype, cache_dir=args.cache_dir,
        resolution=resolution if args.resolution is None else args.resolution,
        batch_size=batch_size if args.batch_size is None else args.batch_size, timed_steps=args.train_steps,
    )  # fmt: skip
    try:
        report = training.run_training_bench(bench, args.configs or tuple(training.CONFIGS))
    except InputError as error:
        raise InputError(TRAINING_FLAGS.get(error.field, error.field), error.detail) from None
    print(training.format_training_table(report))
    return report
