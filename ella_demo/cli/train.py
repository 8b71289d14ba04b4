"""The `train` command: fit an ELLA connector with `ella_demo.train.train` (one process, or several
under `accelerate launch -m ella_demo train ...` / torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ella_demo.cli import arguments
from ella_demo.core.errors import InputError
from ella_demo.train.config import DEFAULT_VALIDATION_PROMPTS, TrainConfig

# The command-line flag of each TrainConfig field an InputError may name.
TRAIN_FLAGS = {
    **arguments.FLAGS,
    **{name: f"--{name.replace('_', '-')}" for name in TrainConfig.__dataclass_fields__},
    "mode": "--mode",
}


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    """The `train` sub-command's flags: models as for `generate`, then data, the recipe and bookkeeping."""
    parser = commands.add_parser(
        "train",
        help="train an ELLA connector against a frozen SD1.5-family UNet (paper recipe by default)",
        description="Train an ELLA connector. Defaults are the paper's recipe (AdamW, lr 1e-4 constant, weight "
        "decay 0.01, gradient clip 1.0, T5 length 128, uniform timesteps); see README 'Training'.",
    )
    arguments.add_model_arguments(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--train-data", required=True, help="image folder with metadata.jsonl, or a dataset id")
    data.add_argument("--image-column", default="image")
    data.add_argument("--caption-column", default="text")
    data.add_argument("--resolution", type=int, default=512, help="square crop side in pixels (default 512)")
    data.add_argument("--feature-cache", type=Path, help="encode text and images once into this folder, then train "
                      "from it (the text encoder then leaves the GPU)")  # fmt: skip
    data.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    recipe = parser.add_argument_group("recipe (paper defaults)")
    recipe.add_argument("--batch-size", type=int, default=8, help="per process (our choice: the paper gives none)")
    recipe.add_argument("--max-steps", type=int, default=1000)
    recipe.add_argument("--learning-rate", type=float, default=1e-4)
    recipe.add_argument("--weight-decay", type=float, default=0.01)
    recipe.add_argument("--max-grad-norm", type=float, default=1.0)
    recipe.add_argument("--t5-length", type=int, default=128, help="text tokens per caption (ELLA: 128)")
    options = parser.add_argument_group("options where the paper is silent (our defaults)")
    options.add_argument("--caption-dropout", type=float, default=0.1, help="share of empty captions, for CFG")
    options.add_argument("--min-snr-gamma", type=float, help="Min-SNR loss weighting, e.g. 5")
    options.add_argument("--ema-decay", type=float, help="keep an EMA of the connector, e.g. 0.9999")
    options.add_argument("--gradient-accumulation", type=int, default=1)
    options.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet activations")
    options.add_argument("--mode", choices=("ella", "ella+clip"), default="ella")
    options.add_argument("--seed", type=int, default=0)
    run = parser.add_argument_group("outputs")
    run.add_argument("--out", type=Path, required=True, help="folder for ella.safetensors, logs and checkpoints")
    run.add_argument("--resume", help="'latest' or a checkpoint folder")
    run.add_argument("--checkpoint-every", type=int, default=500)
    run.add_argument("--keep-checkpoints", type=int, default=2)
    run.add_argument("--validate-every", type=int, default=500)
    run.add_argument("--validation-prompt", action="append", dest="validation_prompts",
                     help=f"repeatable (default: {len(DEFAULT_VALIDATION_PROMPTS)} dense prompts); "
                     "--validation-prompt '' turns validation off")  # fmt: skip
    run.add_argument("--validation-steps", type=int, default=25)


def run_train(args: argparse.Namespace) -> int:
    """Train, print where the outputs are."""
    if given := arguments.addition_flags(args):
        raise InputError(given[0], "is for generation: training fits a connector to the base models. Drop it.")
    fields = set(TrainConfig.__dataclass_fields__) - {"validation_prompts", "progress"}
    values = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    prompts = args.validation_prompts
    if prompts is not None:
        values["validation_prompts"] = tuple(prompt for prompt in prompts if prompt.strip())
    from ella_demo.train.loop import train  # datasets and accelerate load only when training

    result = train(TrainConfig(**values))
    print(f"connector: {result.connector}\nlog: {result.log}")
    print(f"steps: {result.steps}, final loss {result.final_loss:.4f}, {result.wall_s:.0f} s")
    return 0
