"""Command line: `python -m ella_demo {generate,probe,dpg,bench} ...`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from tqdm import tqdm

from ella_demo.core.devices import DTYPES
from ella_demo.core.errors import ExplorerError, InputError
from ella_demo.core.models import LoadedModels
from ella_demo.core.settings import (
    DEFAULT_GUIDANCE,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    MODES,
    SCHEDULER_NAMES,
    SEEDINGS,
    SIDES,
    GenerationSettings,
    validate,
)
from ella_demo.core.text_encoding import FLEXIBLE
from ella_demo.loading.models import load_models
from ella_demo.loading.sources import PRESETS

# The project's own errors, which the user can fix: the CLI prints their message and exits with 2.
# Any other exception is a bug and keeps its traceback.
USER_ERRORS = (ExplorerError,)

# The command-line flag of each Python argument name that an InputError may name.
FLAGS = {
    "prompt": "--prompt",
    "prompt2": "--prompt2",
    "negative_prompt": "--negative-prompt",
    "seed": "--seed",
    "num_inference_steps": "--steps",
    "guidance_scale": "--guidance",
    "height": "--height",
    "width": "--width",
    "scheduler": "--scheduler",
    "num_images": "--num-images",
    "mode": "--mode",
    "t5_length": "--t5-length",
    "sides": "--sides",
    "trace": "--trace",
    "seeding": "--seeding",
    "timesteps": "--timesteps",
    "preset": "--preset",
    "sd15": "--sd15",
    "ella": "--ella",
    "t5": "--t5",
}
# `dpg generate` makes square tiles: one --resolution sets both sides.
DPG_FLAGS = {**FLAGS, "height": "--resolution", "width": "--resolution"}


def describe_error(error: ExplorerError, flags: Mapping[str, str] = FLAGS) -> str:
    """A user error's message, with the value it names shown as its command-line flag."""
    return error.named(flags) if isinstance(error, InputError) else str(error)


def add_model_arguments(parser: argparse.ArgumentParser, default_preset: str = "sd15") -> None:
    """The model-choice flags shared by app.py and every subcommand."""
    group = parser.add_argument_group("models")
    group.add_argument("--preset", choices=PRESETS, default=default_preset, help="sd15 = real weights")
    group.add_argument("--sd15", help="SD1.5 hub id, diffusers folder, or single .safetensors file")
    group.add_argument("--ella", help="ELLA hub id, folder, or .safetensors file")
    group.add_argument("--t5", help="T5 encoder hub id (org/name[/subfolder]) or folder")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    group.add_argument("--dtype", choices=tuple(DTYPES), help="default: fp16 on GPU, fp32 on CPU")
    group.add_argument(
        "--t5-dtype",
        choices=tuple(DTYPES),
        help="T5 encoder dtype; default: fp16 on GPU (as ELLA was trained), else --dtype",
    )
    group.add_argument("--cache-dir", type=Path, help="hub cache folder (default: huggingface_hub's own)")
    group.add_argument("--allow-pickle", action="store_true", help="also read .bin/.ckpt weights (can run code)")


def load_from_args(args: argparse.Namespace) -> LoadedModels:
    return load_models(
        args.preset,
        sd15=args.sd15,
        ella=args.ella,
        t5=args.t5,
        device=args.device,
        dtype=args.dtype,
        t5_dtype=args.t5_dtype,
        allow_pickle=args.allow_pickle,
        cache_dir=args.cache_dir,
    )


def _t5_length(text: str) -> int | str:
    """'flexible' or a whole number; its range is checked with the other settings (settings.validate)."""
    if text == FLEXIBLE:
        return FLEXIBLE
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be '{FLEXIBLE}' or a token count, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ella_demo", description="ELLA Explorer command line")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="generate with CLIP and ELLA side by side")
    add_model_arguments(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    gen.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    gen.add_argument("--height", type=int, default=DEFAULT_SIZE)
    gen.add_argument("--width", type=int, default=DEFAULT_SIZE)
    gen.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="dpm++")
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--mode", choices=MODES, default="ella")
    gen.add_argument("--t5-length", type=_t5_length, default=FLEXIBLE, help="'flexible' or a token count (128)")
    gen.add_argument("--sides", choices=SIDES, default="both")
    gen.add_argument(
        "--seeding",
        choices=tuple(SEEDINGS),
        default="cpu",
        help="; ".join(f"{name}: {meaning}" for name, meaning in SEEDINGS.items()),
    )
    gen.add_argument("--trace", action="store_true", help="also write trace.npz (attention and previews)")
    gen.add_argument(
        "--figures",
        action="store_true",
        help="with --trace: also write the figures as PNG/GIF (the connector's need the ELLA side, "
        "the word maps and previews both sides)",
    )
    gen.add_argument("--out", required=True, type=Path, help="output folder")

    probe = commands.add_parser("probe", help="connector attention on a dense timestep grid, no UNet")
    add_model_arguments(probe)
    probe.add_argument("--prompt", required=True)
    probe.add_argument("--prompt2", help="a second prompt to compare with")
    probe.add_argument("--timesteps", type=int, default=50, help="grid size, 999 down to 0")
    probe.add_argument("--t5-length", type=_t5_length, default=FLEXIBLE, help="'flexible' or a token count (128)")
    probe.add_argument("--out", required=True, type=Path, help="output folder")

    dpg = commands.add_parser("dpg", help="DPG-Bench: generate grids, score them, chart two models")
    dpg_commands = dpg.add_subparsers(dest="dpg_command", required=True)
    dpg_gen = dpg_commands.add_parser("generate", help="write OUT/<model>/<item_id>.png 2x2 grids")
    add_model_arguments(dpg_gen)
    dpg_gen.add_argument("--dpg-dir", required=True, type=Path, help="folder with prompts/ (and dpg_bench.csv)")
    dpg_gen.add_argument("--out", required=True, type=Path)
    dpg_gen.add_argument("--models", default="clip,ella", help="clip, ella or clip,ella")
    dpg_gen.add_argument("--limit", type=int, help="only the first N prompts (sorted by item id)")
    dpg_gen.add_argument("--items", help="only these item ids, comma-separated")
    dpg_gen.add_argument("--seed", type=int, default=0)
    dpg_gen.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    dpg_gen.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    dpg_gen.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="dpm++")
    dpg_gen.add_argument("--resolution", type=int, default=512, help="tile size in pixels")
    dpg_score = dpg_commands.add_parser("score", help="score one model's grids")
    dpg_score.add_argument("--dpg-dir", required=True, type=Path)
    dpg_score.add_argument("--images", type=Path, help="OUT/<model> folder (not needed with answers:FILE)")
    dpg_score.add_argument("--vqa", required=True, help="answers:FILE, blip or blip:REPO_OR_FOLDER")
    dpg_score.add_argument("--device", default="cpu")
    dpg_score.add_argument("--official-quirks", action="store_true", help="reproduce the official scorer's numbers")
    dpg_score.add_argument("--out", required=True, type=Path, help="report.json (report.csv goes beside it)")
    dpg_chart = dpg_commands.add_parser("chart", help="bar chart of two or more reports per category")
    dpg_chart.add_argument("reports", nargs="+", help="NAME=report.json, e.g. CLIP=out/clip/report.json")
    dpg_chart.add_argument("--level", choices=("broad", "detailed"), default="broad")
    dpg_chart.add_argument("--out", required=True, type=Path, help="PNG file")

    bench = commands.add_parser(
        "bench", help="time the engine (cold and warm caches) against diffusers' pipeline, or measure trace sizes"
    )
    add_model_arguments(bench, default_preset="tiny")
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
    bench.add_argument("--trace-steps", type=int, nargs="+", default=[25, 50], help="with --trace-size")
    bench.add_argument(
        "--trace-t5-length", type=_t5_length, nargs="+", default=[FLEXIBLE], help="with --trace-size: flexible or N"
    )
    return parser


def run_generate(args: argparse.Namespace) -> int:
    from ella_demo.core.engine import generate
    from ella_demo.inspect.outputs import write_run
    from ella_demo.inspect.report import write_trace_figures

    settings = _generation_settings(args)
    validate(settings, args.preset)
    _check_figures(args)
    _check_out_folder(args.out)
    models = load_from_args(args)
    with tqdm(desc="denoising", unit="step", disable=not sys.stderr.isatty()) as bar:
        result = generate(models, **settings.to_dict(), progress=_bar_progress(bar))
    written = write_run(result, models, args.out)
    if args.figures:
        written += write_trace_figures(result, args.out / "figures")
    for path in written:
        print(path)
    for note in result.warnings:
        print(f"warning: {note}", file=sys.stderr)
    if models.random_weights:
        print(f"note: preset {models.preset} has random weights; the images are noise.", file=sys.stderr)
    return 0


def _generation_settings(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        height=args.height,
        width=args.width,
        scheduler=args.scheduler,
        num_images=args.num_images,
        mode=args.mode,
        t5_length=args.t5_length,
        sides=args.sides,
        trace=args.trace,
        seeding=args.seeding,
    )


def _check_figures(args: argparse.Namespace) -> None:
    """--figures draws from the trace, and what it can draw depends on the sides run.

    The connector figures (report.write_trace_figures) need the ELLA side; the word maps and the
    previews strip compare both sides. A choice that allows no figure is refused; one that allows
    some says which are skipped.
    """
    if not args.figures:
        return
    if not args.trace:
        raise InputError("--figures", "needs --trace: the figures are drawn from the trace.")
    if args.sides == "clip":
        raise InputError(
            "--figures",
            "draws nothing with --sides clip: the connector figures need the ELLA side, and the word maps "
            "and the previews strip need both sides. Use --sides both (or ella), or drop --figures.",
        )
    if args.sides == "ella":
        print(
            "note: with --sides ella only the connector figures are drawn; the word maps and the previews "
            "strip need both sides (--sides both).",
            file=sys.stderr,
        )


def _bar_progress(bar) -> Callable[[int, int], None]:
    """A `progress(done, total)` callback moving `bar`; its total is the one generate reports,
    which can differ from --steps (PNDM runs one step more)."""

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    return progress


def _check_out_folder(folder: Path, flag: str = "--out") -> None:
    """Refuse, before any model loads, an output folder that is a file or cannot be made or written."""
    if folder.exists() and not folder.is_dir():
        raise InputError(flag, f"{folder} is a file: give a folder (it is made if missing).")
    _check_writable(folder, flag)


def _check_out_file(path: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output file that is a folder or whose folder cannot be made or written."""
    if path.is_dir():
        raise InputError(flag, f"{path} is a folder: give a file name.")
    _check_writable(path.parent, flag)


def _check_writable(folder: Path, flag: str) -> None:
    """The folder, or the nearest of its parents that exists, must be a folder this user may write in."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(flag, f"cannot make the folder {folder}: {existing} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(flag, f"cannot write in {existing}: choose a folder you may write to.")


def run_probe(args: argparse.Namespace) -> int:
    from ella_demo.core.probe import probe, timestep_grid
    from ella_demo.inspect.report import write_probe

    # Everything is checked before any model loads.
    validate(GenerationSettings(prompt="", t5_length=args.t5_length), args.preset)
    for field, text in (("prompt", args.prompt), ("prompt2", args.prompt2)):
        if text is None:
            continue
        try:
            validate(GenerationSettings(prompt=text), args.preset)
        except InputError as error:
            raise InputError(field, error.detail) from None
        if not text.strip():
            raise InputError(field, "is empty: type the prompt whose words the connector should read.")
    timestep_grid(args.timesteps)
    _check_out_folder(args.out)
    models = load_from_args(args)
    prompts = [args.prompt] + ([args.prompt2] if args.prompt2 is not None else [])
    results = [probe(models, prompt, args.timesteps, args.t5_length) for prompt in prompts]
    for path in write_probe(results, args.out):
        print(path)
    return 0


def run_dpg(args: argparse.Namespace) -> int:
    from ella_demo.dpg import data as dpg

    if args.dpg_command == "generate":
        return _dpg_generate(args)
    if args.dpg_command == "score":
        from ella_demo.dpg.vqa import answer_with_model, make_answerer, read_answers

        _check_out_file(args.out)
        if not args.vqa.startswith("answers:") and args.images is None:
            raise InputError("--images", "is needed to ask a VQA model; answers:FILE needs none.")
        bench_data = dpg.load_bench(args.dpg_dir, args.official_quirks)
        notes = []
        if args.vqa.startswith("answers:"):
            answers = read_answers(args.vqa.removeprefix("answers:"))
        else:
            answers, notes = answer_with_model(bench_data, args.images, make_answerer(args.vqa, args.device))
        report = dpg.score(bench_data, answers, args.official_quirks)
        report.warnings.extend(notes)
        for path in dpg.write_report(report, args.out):
            print(path)
        print(f"overall {report.overall:.2f}")
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    from ella_demo.inspect.figures import category_bars_figure, to_png

    _check_out_file(args.out)
    scores = {}
    for entry in args.reports:
        name, _, path = entry.partition("=")
        if not name or not path:
            raise InputError("reports", f"are NAME=report.json, got {entry!r}.")
        scores[name] = _report_scores(entry, Path(path), args.level)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(to_png(category_bars_figure(scores, f"DPG-Bench by {args.level} category")))
    print(args.out)
    return 0


def _report_scores(entry: str, path: Path, level: str) -> dict:
    """The per-category scores of a report.json that `dpg score` wrote."""
    if not path.is_file():
        raise InputError("reports", f"entry {entry!r}: {path} does not exist.")
    try:
        scores = json.loads(path.read_text(encoding="utf-8"))["categories"][level]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(
            "reports", f"entry {entry!r}: {path} is not a DPG-Bench report (no categories.{level}: {error})."
        ) from None
    if not isinstance(scores, dict):
        raise InputError("reports", f"entry {entry!r}: {path} is not a DPG-Bench report (categories.{level}).")
    return scores


def _dpg_generate(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ella_demo.dpg.data import load_prompts
    from ella_demo.dpg.generation import MODEL_NAMES, generate_grids, shard

    # Everything is checked before any model loads.
    model_names = tuple(name.strip() for name in args.models.split(",") if name.strip())
    if not model_names or any(name not in MODEL_NAMES for name in model_names):
        raise InputError("--models", f"must list clip and/or ella, got {args.models!r}.")
    settings = GenerationSettings(
        prompt="", seed=args.seed, num_inference_steps=args.steps, guidance_scale=args.guidance,
        height=args.resolution, width=args.resolution, scheduler=args.scheduler, num_images=4,
    )  # fmt: skip
    validate(settings, args.preset)
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit", f"must be at least 1, got {args.limit}.")
    _check_out_folder(args.out)
    prompts = load_prompts(args.dpg_dir)
    if args.items:
        wanted = [item.strip() for item in args.items.split(",") if item.strip()]
        unknown = [item for item in wanted if item not in prompts]
        if unknown:
            raise InputError("--items", f"names unknown item ids: {', '.join(unknown)}.")
        prompts = {item: prompts[item] for item in wanted}
    if args.limit is not None:
        prompts = {item: prompts[item] for item in sorted(prompts)[: args.limit]}
    # On machines without a GPU the processes talk over CPU (gloo); accelerate must be told so.
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    if state.num_processes > 1 and args.device == "auto":
        args.device = str(state.device)
    models = load_from_args(args)
    share = len(shard(sorted(prompts), state.process_index, state.num_processes))
    with tqdm(total=share, desc=f"DPG grids (process {state.process_index})", unit="prompt") as bar:
        counts = generate_grids(
            models, prompts, args.out, model_names, args.resolution,
            args.seed, args.steps, args.guidance, args.scheduler, state.process_index, state.num_processes,
            progress=lambda item, made: bar.update(1),
        )  # fmt: skip
    print(f"process {state.process_index}: generated {counts['generated']}, skipped {counts['skipped']} (already done)")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from ella_demo.bench import format_table, format_trace_sizes, measure_trace_size, run_benchmark

    if args.json:
        _check_out_file(args.json, "--json")
    if args.sessions is not None:
        report = _bench_sessions(args)
    elif args.trace_size:
        overrides = [flag for flag, value in (("--sd15", args.sd15), ("--ella", args.ella), ("--t5", args.t5)) if value]
        if overrides or args.preset != "tiny":
            raise InputError(
                "--trace-size",
                "builds its own models with SD1.5's layout; drop "
                + (", ".join(overrides) or f"--preset {args.preset}")
                + ".",
            )
        report = measure_trace_size(args.trace_steps, args.trace_t5_length, device=args.device, dtype=args.dtype)
        print(format_trace_sizes(report))
    else:
        bench_settings = GenerationSettings(
            prompt="", num_inference_steps=args.steps, height=args.height, width=args.width, scheduler=args.scheduler
        )
        validate(bench_settings, args.preset)
        if args.repeats < 1:
            raise InputError("--repeats", f"must be at least 1, got {args.repeats}.")
        models = load_from_args(args)
        report = run_benchmark(models, args.steps, args.height, args.width, args.repeats, args.scheduler)
        print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _bench_sessions(args: argparse.Namespace) -> dict:
    from ella_demo.app.ui import ServingLimits
    from ella_demo.bench_serving import format_session_memory, session_memory

    for flag, value in (("--sessions", args.sessions), ("--max-sessions", args.max_sessions)):
        if value < 1:
            raise InputError(flag, f"must be at least 1, got {value}.")
    validate(GenerationSettings(prompt="", num_inference_steps=args.steps, height=args.height, width=args.width),
             args.preset)  # fmt: skip
    limits = ServingLimits(max_sessions=args.max_sessions)
    report = session_memory(args.preset, args.sessions, max(1, args.sessions // 10), args.height, args.steps, limits)
    print(format_session_memory(report))
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"generate": run_generate, "probe": run_probe, "dpg": run_dpg, "bench": run_bench}[args.command]
    try:
        return handler(args)
    except USER_ERRORS as error:
        flags = DPG_FLAGS if args.command == "dpg" else FLAGS
        print(f"error: {describe_error(error, flags)}", file=sys.stderr)
        return 2
