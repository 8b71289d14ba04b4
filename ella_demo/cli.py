"""Command line: `python -m ella_demo {generate,probe,dpg,bench} ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .config import PRESETS
from .devices import DeviceError
from .dpg import DpgDataError
from .loading import LoadedModels, ModelSourceError, load_models
from .settings import (
    DEFAULT_GUIDANCE,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    MODES,
    SCHEDULER_NAMES,
    SIDES,
    SettingsError,
)
from .text_encoders import FLEXIBLE

USER_ERRORS = (ModelSourceError, DeviceError, SettingsError, DpgDataError, ValueError)


def add_model_arguments(parser: argparse.ArgumentParser, default_preset: str = "sd15") -> None:
    """The model-choice flags shared by app.py and every subcommand."""
    group = parser.add_argument_group("models")
    group.add_argument("--preset", choices=PRESETS, default=default_preset, help="sd15 = real weights")
    group.add_argument("--sd15", help="SD1.5 hub id, diffusers folder, or single .safetensors file")
    group.add_argument("--ella", help="ELLA hub id, folder, or .safetensors file")
    group.add_argument("--t5", help="T5 encoder hub id (org/name[/subfolder]) or folder")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    group.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default: fp16 on GPU, fp32 on CPU")
    group.add_argument("--allow-pickle", action="store_true", help="also read .bin/.ckpt weights (can run code)")


def load_from_args(args: argparse.Namespace) -> LoadedModels:
    return load_models(
        args.preset,
        sd15=args.sd15,
        ella=args.ella,
        t5=args.t5,
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
    )


def _t5_length(text: str) -> int | str:
    return FLEXIBLE if text == FLEXIBLE else int(text)


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
    gen.add_argument("--trace", action="store_true", help="also write trace.npz (attention and previews)")
    gen.add_argument("--figures", action="store_true", help="with --trace: also write every figure as PNG/GIF")
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

    bench = commands.add_parser("bench", help="time the engine against diffusers' pipeline")
    add_model_arguments(bench, default_preset="tiny")
    bench.add_argument("--steps", type=int, default=10)
    bench.add_argument("--height", type=int, default=256)
    bench.add_argument("--width", type=int, default=256)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="dpm++")
    bench.add_argument("--json", type=Path, help="write the report here")
    return parser


def run_generate(args: argparse.Namespace) -> int:
    from .engine import generate
    from .outputs import write_run
    from .report import write_trace_figures

    if args.figures and not args.trace:
        raise SettingsError("--figures needs --trace: the figures are drawn from the trace.")
    models = load_from_args(args)
    with tqdm(total=args.steps, desc="denoising", unit="step", disable=not sys.stderr.isatty()) as bar:
        result = generate(
            models,
            args.prompt,
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
            progress=lambda done, total: bar.update(1),
        )
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


def run_probe(args: argparse.Namespace) -> int:
    from .probe import probe, timestep_grid
    from .report import write_probe

    timestep_grid(args.timesteps)  # validate before loading any model
    models = load_from_args(args)
    prompts = [args.prompt] + ([args.prompt2] if args.prompt2 is not None else [])
    results = [probe(models, prompt, args.timesteps, args.t5_length) for prompt in prompts]
    for path in write_probe(results, args.out):
        print(path)
    return 0


def run_dpg(args: argparse.Namespace) -> int:
    from . import dpg

    if args.dpg_command == "generate":
        return _dpg_generate(args)
    if args.dpg_command == "score":
        from .vqa import answer_with_model, make_answerer, read_answers

        bench_data = dpg.load_bench(args.dpg_dir, args.official_quirks)
        notes = []
        if args.vqa.startswith("answers:"):
            answers = read_answers(args.vqa.removeprefix("answers:"))
        else:
            if args.images is None:
                raise SettingsError("--images is needed to ask a VQA model; answers:FILE needs none")
            answers, notes = answer_with_model(bench_data, args.images, make_answerer(args.vqa, args.device))
        report = dpg.score(bench_data, answers, args.official_quirks)
        report.warnings.extend(notes)
        for path in dpg.write_report(report, args.out):
            print(path)
        print(f"overall {report.overall:.2f}")
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    from .figures import category_bars_figure, to_png

    scores = {}
    for entry in args.reports:
        name, _, path = entry.partition("=")
        if not path:
            raise SettingsError(f"chart reports are NAME=report.json, got {entry!r}")
        scores[name] = json.loads(Path(path).read_text())["categories"][args.level]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(to_png(category_bars_figure(scores, f"DPG-Bench by {args.level} category")))
    print(args.out)
    return 0


def _dpg_generate(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from .dpg import load_prompts
    from .dpg_generate import generate_grids, shard

    prompts = load_prompts(args.dpg_dir)
    if args.items:
        wanted = [item.strip() for item in args.items.split(",") if item.strip()]
        unknown = [item for item in wanted if item not in prompts]
        if unknown:
            raise SettingsError(f"--items names unknown item ids: {', '.join(unknown)}")
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
            models, prompts, args.out, tuple(name.strip() for name in args.models.split(",")), args.resolution,
            args.seed, args.steps, args.guidance, args.scheduler, state.process_index, state.num_processes,
            progress=lambda item, made: bar.update(1),
        )  # fmt: skip
    print(f"process {state.process_index}: generated {counts['generated']}, skipped {counts['skipped']} (already done)")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run_benchmark

    models = load_from_args(args)
    report = run_benchmark(models, args.steps, args.height, args.width, args.repeats, args.scheduler)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"generate": run_generate, "probe": run_probe, "dpg": run_dpg, "bench": run_bench}[args.command]
    try:
        return handler(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
