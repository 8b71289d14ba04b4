"""ELLA Explorer: compare SD1.5 with CLIP and with ELLA in the browser, and look inside the connector.

`python app.py` loads the real models (downloads on first run) and serves on 127.0.0.1:7860;
`python app.py --preset pocket` runs offline on the small world this project trained (shipped in the
package). See `--help` for model paths and serving flags.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ella_demo.app import ServingLimits, build_app, launch_app
from ella_demo.cli.arguments import USER_ERRORS, add_model_arguments, describe_error, load_from_args


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    serving = parser.add_argument_group("serving")
    serving.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    serving.add_argument("--port", type=int, default=7860)
    serving.add_argument("--share", action="store_true", help="also open a public Gradio share link")
    serving.add_argument(
        "--concurrency", type=positive_int, default=1, help="model runs at once (one GPU job by default)"
    )
    serving.add_argument(
        "--max-pixel-steps",
        type=positive_int,
        default=ServingLimits.max_pixel_steps,
        help="largest traced work per generation, width x height x steps x images (default: 512x512, 50 steps, 4)",
    )
    serving.add_argument("--max-queue", type=positive_int, default=ServingLimits.max_queue, help="requests waiting")
    serving.add_argument(
        "--max-sessions",
        type=positive_int,
        default=ServingLimits.max_sessions,
        help="browser sessions whose runs are kept in memory (least recently used dropped)",
    )
    serving.add_argument("--dpg-results", type=Path, help="a DPG-Bench results folder to browse in the app")
    serving.add_argument("--check", action="store_true", help="load the models, report them, and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    print(f"Loading preset {args.preset}...", flush=True)
    try:
        models = load_from_args(args)
    except USER_ERRORS as error:
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return 2
    print(f"Loaded preset {models.preset} on {models.placement.describe()} in {time.perf_counter() - started:.1f} s")
    for part, source in models.sources.items():
        print(f"  {part}: {source}")
    for addition in models.provenance().additions:  # the LoRAs and embeddings, as meta.json records them
        print(f"  {addition}")
    if models.placement.t5_caveat:
        print(f"  Note: {models.placement.t5_caveat}")
    if models.random_weights:
        print("  Random weights: images from this preset are noise, not model output.")
    if args.check:
        return 0
    if args.dpg_results is not None and not args.dpg_results.is_dir():
        print(f"error: --dpg-results {args.dpg_results} is not a folder", file=sys.stderr)
        return 2
    limits = ServingLimits(
        concurrency=args.concurrency,
        max_pixel_steps=args.max_pixel_steps,
        max_queue=args.max_queue,
        max_sessions=args.max_sessions,
    )
    app = build_app(models, dpg_results=args.dpg_results, limits=limits)
    launch_app(app, host=args.host, port=args.port, share=args.share, limits=limits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
