"""The `pocket` command: train the pocket world's models stage by stage (`pocket train STAGE`), and measure
them (`pocket eval`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from ella_demo.core.errors import InputError
from ella_demo.loading.models import load_models
from ella_demo.loading.pocket import shipped_world
from ella_demo.pocket.connector_stage import ConnectorData, train_connector_stage
from ella_demo.pocket.diagnosis import diagnose, markdown
from ella_demo.pocket.evaluation import EvaluationSettings
from ella_demo.pocket.report import markdown_tables, write_pocket_report
from ella_demo.pocket.shipping import ship_world
from ella_demo.pocket.training import STAGES, PocketRun, stage_settings, train_model_stage

POCKET_FLAGS = {
    "stage": "STAGE",
    "max_steps": "--max-steps",
    "batch_size": "--batch-size",
    "learning_rate": "--learning-rate",
    "checkpoint_every": "--checkpoint-every",
    "keep_checkpoints": "--keep-checkpoints",
    "out": "--runs",
    "prompts": "--prompts",
    "pointing_prompts": "--pointing-prompts",
    "steps": "--steps",
    "world": "--world",
    "runs": "--runs",
    "timesteps": "--timesteps",
    "captions": "--captions",
}
DEFAULT_RUNS = Path("runs/pocket")


def add_pocket_parser(commands: argparse._SubParsersAction) -> None:
    """`pocket train STAGE`: its flags (defaults: the shipped world's settings, README 'Pocket world')."""
    parser = commands.add_parser("pocket", help="the pocket world: train its models, evaluate them")
    actions = parser.add_subparsers(dest="pocket_command", required=True)
    _add_eval_parser(actions)
    _add_diagnose_parser(actions)
    ship = actions.add_parser("ship", help="copy a trained world into the package, with checksums and its record")
    ship.add_argument("--world", type=Path, default=DEFAULT_RUNS / "world")
    ship.add_argument("--runs", type=Path, default=DEFAULT_RUNS)
    ship.add_argument("--record", type=Path, default=Path("assets/pocket/record"),
                      help="where the training record goes (default assets/pocket/record)")  # fmt: skip
    train = actions.add_parser(
        "train",
        help="train one stage (vae, clip, unet, connector, in that order), resumable",
        description="Train one stage of the pocket world and export its model into the world folder. Stages read "
        "what earlier ones exported: run vae, clip, unet, connector in that order.",
    )
    train.add_argument("stage", choices=STAGES)
    train.add_argument("--world", type=Path, default=DEFAULT_RUNS / "world",
                       help=f"the world folder each stage exports into (default {DEFAULT_RUNS / 'world'})")  # fmt: skip
    train.add_argument("--runs", type=Path, default=DEFAULT_RUNS,
                       help=f"checkpoints, logs and curves go to RUNS/STAGE (default {DEFAULT_RUNS})")  # fmt: skip
    train.add_argument("--max-steps", type=int, help="default: the stage's (see README)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--checkpoint-every", type=int, default=250)
    train.add_argument("--keep-checkpoints", type=int, default=2)
    train.add_argument("--connector-scenes", type=int, default=20000, help="pictures the connector trains on")
    train.add_argument("--resume", action="store_true", help="continue from the stage's latest checkpoint")
    train.add_argument("--timesteps", type=timestep_range, metavar="LOW:HIGH",
                       help="unet only: train on timesteps in [LOW, HIGH) of the 1,000 (default: all)")  # fmt: skip


def timestep_range(text: str) -> tuple[int, int]:
    """`--timesteps LOW:HIGH` as (LOW, HIGH), with 0 <= LOW < HIGH <= 1000 (the pocket schedule's length)."""
    low, _, high = text.partition(":")
    if not (low.isdigit() and high.isdigit() and int(low) < int(high) <= 1000):
        raise argparse.ArgumentTypeError(f"give LOW:HIGH with 0 <= LOW < HIGH <= 1000, as in 300:750; got {text!r}")
    return int(low), int(high)


def _add_diagnose_parser(actions: argparse._SubParsersAction) -> None:
    diagnose = actions.add_parser(
        "diagnose",
        help="how much the UNet and CLIP depend on shape and colour words",
        description="Loss ratios per timestep, attention shares and padding-state shifts on single-object "
        "training captions and their shape- and colour-changed variants (pocket/diagnosis.py).",
    )
    _add_world_and_seed(diagnose)
    diagnose.add_argument("--captions", type=int, default=48, help="single-object captions (default 48)")


def _add_world_and_seed(parser: argparse.ArgumentParser) -> None:
    """The flags every measuring command shares: which world, which seed."""
    parser.add_argument("--world", type=Path, help="a pocket world folder (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=0)


def _add_eval_parser(actions: argparse._SubParsersAction) -> None:
    evaluation = actions.add_parser(
        "eval",
        help="score both sides on the held-out prompt sets with the pixel detector; attention pointing",
        description="Both sides draw 4 images per held-out prompt (seen, unseen combinations, paraphrases); the "
        "pixel detector answers their DPG-Bench questions; then attention pointing and token x time maps.",
    )
    _add_world_and_seed(evaluation)
    evaluation.add_argument("--out", type=Path, default=DEFAULT_RUNS / "eval")
    evaluation.add_argument("--prompts", type=int, default=50, help="prompts per set (default 50)")
    evaluation.add_argument("--pointing-prompts", type=int, default=60)
    evaluation.add_argument("--steps", type=int, default=25)
    evaluation.add_argument("--device", default="cpu")


def run_pocket(args: argparse.Namespace) -> int:
    """Train a stage, or evaluate; print where the results went."""
    if args.pocket_command == "eval":
        return _run_eval(args)
    if args.pocket_command == "diagnose":
        if args.captions < 1:
            raise InputError("captions", f"must be at least 1, got {args.captions}.")
        models = load_models("pocket", sd15=str(args.world) if args.world else None)
        print(markdown(diagnose(models, args.captions, args.seed)))
        return 0
    if args.pocket_command == "ship":
        record = ship_world(args.world, args.runs, shipped_world(), args.record)
        print(f"shipped {len(record['sha256'])} files ({record['weights_bytes'] / 1e6:.1f} MB of weights) to "
              f"{shipped_world()}; record in {args.record}")  # fmt: skip
        return 0
    settings = stage_settings(
        args.stage, args.runs, max_steps=args.max_steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, resume=args.resume, timesteps=args.timesteps,
    )  # fmt: skip
    if args.stage == "connector":
        data = ConnectorData(args.runs / "connector_scenes", args.connector_scenes, args.runs / "connector_cache")
        result = train_connector_stage(args.world, data, settings, command=args.command_line)
    else:
        result = train_model_stage(PocketRun(args.stage, args.world, args.runs, settings, command=args.command_line))
    print(f"{args.stage}: {result.steps} steps, {result.wall_s:.0f} s in all; model in {args.world}, "
          f"run in {settings.out}")  # fmt: skip
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    for name in ("prompts", "pointing_prompts", "steps"):
        if getattr(args, name) < 1:
            raise InputError(name, f"must be at least 1, got {getattr(args, name)}.")
    models = load_models("pocket", sd15=str(args.world) if args.world else None, device=args.device)
    settings = EvaluationSettings(prompts=args.prompts, seed=args.seed, num_inference_steps=args.steps)
    with tqdm(total=3 * args.prompts, desc="pocket eval", unit="prompt") as bar:
        report = write_pocket_report(models, args.out, settings, args.pointing_prompts, lambda *_: bar.update(1))
    print(markdown_tables(report))
    print(f"\n{report['wall_s']:.0f} s; figures and reports in {args.out}")
    return 0
