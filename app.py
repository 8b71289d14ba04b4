"""ELLA Explorer entry point: load the models of a preset and report what was loaded.

The browser app (Gradio) is built on top of this in a later step; until then this script checks
that a preset loads on this machine and prints where each part came from.
"""

from __future__ import annotations

import argparse
import sys
import time

from ella_demo import load_models
from ella_demo.config import PRESETS
from ella_demo.devices import DeviceError
from ella_demo.loading import ModelSourceError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="sd15", help="sd15 = real weights (default)")
    parser.add_argument("--sd15", help="SD1.5 hub id, diffusers folder, or single .safetensors file")
    parser.add_argument("--ella", help="ELLA hub id, folder, or .safetensors file")
    parser.add_argument("--t5", help="T5 encoder hub id (org/name[/subfolder]) or folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="default: fp16 on GPU, fp32 on CPU")
    parser.add_argument("--allow-pickle", action="store_true", help="also read .bin/.ckpt weights (can run code)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        models = load_models(
            args.preset,
            sd15=args.sd15,
            ella=args.ella,
            t5=args.t5,
            device=args.device,
            dtype=args.dtype,
            allow_pickle=args.allow_pickle,
        )
    except (ModelSourceError, DeviceError, ValueError) as error:
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
