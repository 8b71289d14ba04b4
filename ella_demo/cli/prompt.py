"""The commands on one prompt: `generate` (images, and with --trace the trace and its figures) and `probe`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from ella_demo.cli import arguments
from ella_demo.cli.output_paths import check_out_folder
from ella_demo.core.errors import InputError
from ella_demo.core.settings import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    MODES,
    PRESET_GUIDANCE,
    SCHEDULER_NAMES,
    SEEDINGS,
    SIDES,
    GenerationSettings,
    default_guidance,
    validate,
)
from ella_demo.core.text_encoding import FLEXIBLE

# The size flags' help: left out, a generation makes the loaded model's native size (LoadedModels.native_size).
SIZE_HELP = "pixels, a multiple of 8 (default: the model's native size, 512 for SD1.5, 64 for pocket)"
GUIDANCE_HELP = f"classifier-free guidance (default {DEFAULT_GUIDANCE:g}; {PRESET_GUIDANCE['pocket']:g} for pocket)"


def add_generate_parser(commands: argparse._SubParsersAction) -> None:
    """The `generate` sub-command's flags."""
    gen = commands.add_parser("generate", help="generate with CLIP and ELLA side by side")
    arguments.add_model_arguments(gen)
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    gen.add_argument("--guidance", type=float, help=GUIDANCE_HELP)
    for flag in ("--height", "--width"):
        gen.add_argument(flag, type=int, help=SIZE_HELP)
    gen.add_argument("--scheduler", choices=SCHEDULER_NAMES, default="dpm++")
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--mode", choices=MODES, default="ella")
    gen.add_argument(
        "--t5-length", type=arguments.t5_length, default=FLEXIBLE, help="'flexible' or a token count (128)"
    )
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


def add_probe_parser(commands: argparse._SubParsersAction) -> None:
    """The `probe` sub-command's flags."""
    probe = commands.add_parser("probe", help="connector attention on a dense timestep grid, no UNet")
    arguments.add_model_arguments(probe)
    probe.add_argument("--prompt", required=True)
    probe.add_argument("--prompt2", help="a second prompt to compare with")
    probe.add_argument("--timesteps", type=int, default=50, help="grid size, 999 down to 0")
    probe.add_argument(
        "--t5-length", type=arguments.t5_length, default=FLEXIBLE, help="'flexible' or a token count (128)"
    )
    probe.add_argument("--out", required=True, type=Path, help="output folder")


def run_generate(args: argparse.Namespace) -> int:
    """Generate, write the images (and trace, figures), print the paths written."""
    from ella_demo.core.engine import generate
    from ella_demo.inspect.outputs import write_run
    from ella_demo.inspect.report import write_trace_figures

    settings = _generation_settings(args)
    validate(settings, args.preset)
    _check_figures(args)
    check_out_folder(args.out)
    models = arguments.load_from_args(args)
    with tqdm(desc="denoising", unit="step", disable=not sys.stderr.isatty()) as bar:
        result = generate(models, **settings.to_dict(), progress=_bar_progress(bar))
    written = write_run(result, args.out)
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
        guidance_scale=default_guidance(args.preset) if args.guidance is None else args.guidance,
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


def run_probe(args: argparse.Namespace) -> int:
    """Run the connector alone over a timestep grid for one or two prompts; print the paths written."""
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
    check_out_folder(args.out)
    models = arguments.load_from_args(args)
    prompts = [args.prompt] + ([args.prompt2] if args.prompt2 is not None else [])
    results = [probe(models, prompt, args.timesteps, args.t5_length) for prompt in prompts]
    for path in write_probe(results, args.out):
        print(path)
    return 0
