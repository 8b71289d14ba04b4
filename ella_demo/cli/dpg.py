"""The `dpg` command: generate DPG-Bench grids, score one model's grids, chart two or more reports."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ella_demo.cli import arguments
from ella_demo.cli.output_paths import check_out_file, check_out_folder
from ella_demo.cli.prompt import GUIDANCE_HELP, SIZE_HELP
from ella_demo.core.errors import InputError
from ella_demo.core.settings import (
    DEFAULT_STEPS,
    SCHEDULER_NAMES,
    GenerationSettings,
    default_guidance,
    validate,
)


def add_dpg_parser(commands: argparse._SubParsersAction) -> None:
    """The `dpg` sub-command and its own sub-commands: generate, score, chart."""
    dpg = commands.add_parser("dpg", help="DPG-Bench: generate grids, score them, chart two models")
    dpg_commands = dpg.add_subparsers(dest="dpg_command", required=True)
    _add_generate_parser(dpg_commands)
    _add_score_parser(dpg_commands)
    _add_chart_parser(dpg_commands)


def _add_generate_parser(dpg_commands: argparse._SubParsersAction) -> None:
    dpg_gen = dpg_commands.add_parser("generate", help="write OUT/<model>/<item_id>.png 2x2 grids")
    arguments.add_model_arguments(dpg_gen)
    dpg_gen.add_argument("--dpg-dir", required=True, type=Path, help="folder with prompts/ (and dpg_bench.csv)")
    dpg_gen.add_argument("--out", required=True, type=Path)
    dpg_gen.add_argument("--models", default="clip,ella", help="clip, ella or clip,ella")
    dpg_gen.add_argument("--limit", type=int, help="only the first N prompts (sorted by item id)")
    dpg_gen.add_argument("--items", help="only these item ids, comma-separated")
    dpg_gen.add_argument("--seed", type=int, default=0)
    dpg_gen.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    dpg_gen.add_argument("--guidance", type=float, help=GUIDANCE_HELP)
    dpg_gen.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="dpm++")
    dpg_gen.add_argument("--resolution", type=int, help=f"tile size in {SIZE_HELP}")


def _add_score_parser(dpg_commands: argparse._SubParsersAction) -> None:
    dpg_score = dpg_commands.add_parser("score", help="score one model's grids")
    dpg_score.add_argument("--dpg-dir", required=True, type=Path)
    dpg_score.add_argument("--images", type=Path, help="OUT/<model> folder (not needed with answers:FILE)")
    dpg_score.add_argument("--vqa", required=True, help="answers:FILE, blip or blip:REPO_OR_FOLDER")
    dpg_score.add_argument("--device", default="cpu")
    dpg_score.add_argument("--official-quirks", action="store_true", help="reproduce the official scorer's numbers")
    dpg_score.add_argument("--out", required=True, type=Path, help="report.json (report.csv goes beside it)")


def _add_chart_parser(dpg_commands: argparse._SubParsersAction) -> None:
    dpg_chart = dpg_commands.add_parser("chart", help="bar chart of two or more reports per category")
    dpg_chart.add_argument("reports", nargs="+", help="NAME=report.json, e.g. CLIP=out/clip/report.json")
    dpg_chart.add_argument("--level", choices=("broad", "detailed"), default="broad")
    dpg_chart.add_argument("--out", required=True, type=Path, help="PNG file")


def run_dpg(args: argparse.Namespace) -> int:
    """Run the dpg sub-command that `args.dpg_command` names."""
    handler = {"generate": _dpg_generate, "score": _dpg_score, "chart": _dpg_chart}[args.dpg_command]
    return handler(args)


def _dpg_score(args: argparse.Namespace) -> int:
    """Answer (or read the answers to) every question, score them, write report.json and report.csv."""
    from ella_demo.dpg.data import load_bench
    from ella_demo.dpg.scoring import score, write_report
    from ella_demo.dpg.vqa import answer_with_model, make_answerer, read_answers

    check_out_file(args.out)
    if not args.vqa.startswith("answers:") and args.images is None:
        raise InputError("--images", "is needed to ask a VQA model; answers:FILE needs none.")
    bench_data = load_bench(args.dpg_dir, args.official_quirks)
    notes = []
    if args.vqa.startswith("answers:"):
        answers = read_answers(args.vqa.removeprefix("answers:"))
    else:
        answers, notes = answer_with_model(bench_data, args.images, make_answerer(args.vqa, args.device))
    report = score(bench_data, answers, args.official_quirks)
    report.warnings.extend(notes)
    for path in write_report(report, args.out):
        print(path)
    print(f"overall {report.overall:.2f}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _dpg_chart(args: argparse.Namespace) -> int:
    """A PNG bar chart of the reports' category scores."""
    from ella_demo.inspect.figures import category_bars_figure, to_png

    check_out_file(args.out)
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
    """Write this process's share of the grids (several processes under `accelerate launch`)."""
    from accelerate import PartialState

    from ella_demo.dpg import generation

    # Everything is checked before any model loads.
    model_names = tuple(name.strip() for name in args.models.split(",") if name.strip())
    if not model_names or any(name not in generation.MODEL_NAMES for name in model_names):
        raise InputError("--models", f"must list clip and/or ella, got {args.models!r}.")
    guidance = default_guidance(args.preset) if args.guidance is None else args.guidance
    settings = GenerationSettings(
        prompt="", seed=args.seed, num_inference_steps=args.steps, guidance_scale=guidance,
        height=args.resolution, width=args.resolution, scheduler=args.scheduler, num_images=4,
    )  # fmt: skip
    validate(settings, args.preset)
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit", f"must be at least 1, got {args.limit}.")
    check_out_folder(args.out)
    prompts = _chosen_prompts(args)
    # On machines without a GPU the processes talk over CPU (gloo); accelerate must be told so.
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    if state.num_processes > 1 and args.device == "auto":
        args.device = str(state.device)
    models = arguments.load_from_args(args)
    mine = generation.shard(sorted(prompts), state.process_index, state.num_processes)
    if "ella" in model_names:
        _encode_then_release_t5(args, models, {item: prompts[item] for item in mine}, settings, state.process_index)
    with tqdm(total=len(mine), desc=f"DPG grids (process {state.process_index})", unit="prompt") as bar:
        counts = generation.generate_grids(
            models,
            prompts,
            args.out,
            settings,
            model_names,
            shard_of=(state.process_index, state.num_processes),
            progress=lambda item, made: bar.update(1),
        )
    generated, skipped = counts["generated"], counts["skipped"]
    _report(f"process {state.process_index}: generated {generated}, skipped {skipped} (already done)")
    return 0


def _encode_then_release_t5(
    args: argparse.Namespace, models, prompts: dict[str, str], settings: GenerationSettings, rank: int
) -> None:
    """Encode the prompts of the ELLA grids still to make into the features store, then free T5."""
    from ella_demo.core.engine import with_native_size
    from ella_demo.dpg import generation

    store = args.t5_cache or args.out / generation.T5_FEATURES_FOLDER
    missing = generation.missing_grids(args.out / "ella", list(prompts), with_native_size(models, settings).height)
    encoded, needed = generation.encode_then_release_t5(models, [prompts[item] for item in missing], settings, store)
    _report(f"process {rank}: T5 encoded {encoded} of {needed} prompts (the rest were in {store}), then was released")


def _report(line: str) -> None:
    """One write of the whole line: the processes share stdout, and print's separate newline write can interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _chosen_prompts(args: argparse.Namespace) -> dict[str, str]:
    """The prompts of --dpg-dir that --items and --limit keep."""
    from ella_demo.dpg.data import load_prompts

    prompts = load_prompts(args.dpg_dir)
    if args.items:
        wanted = [item.strip() for item in args.items.split(",") if item.strip()]
        unknown = [item for item in wanted if item not in prompts]
        if unknown:
            raise InputError("--items", f"names unknown item ids: {', '.join(unknown)}.")
        prompts = {item: prompts[item] for item in wanted}
    if args.limit is not None:
        prompts = {item: prompts[item] for item in sorted(prompts)[: args.limit]}
    return prompts
