"""ELLA Explorer entry point: load the models of a preset and report what was loaded.

The browser app (Gradio) is built on top of this in a later step; until then this script checks
that a preset loads on this machine and prints where each part came from.
"""

from __future__ import annotations

import argparse
import sys
import time

from ella_demo.cli import USER_ERRORS, add_model_arguments, load_from_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        models = load_from_args(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Loaded preset {models.preset} on {models.placement.describe()} in {time.perf_counter() - started:.1f} s")
    for part, source in models.sources.items():
        print(f"  {part}: {source}")
    if models.random_weights:
        print("  Random weights: images from this preset are noise, not model output.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
