"""What every command (and app.py) shares: the model flags, loading from them, and user-error messages."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from ella_demo.core.adapters import LORA_WEIGHT_RANGE
from ella_demo.core.devices import DTYPES
from ella_demo.core.errors import ExplorerError, InputError
from ella_demo.core.models import LoadedModels
from ella_demo.core.text_encoding import FLEXIBLE
from ella_demo.loading.additions import Additions, T5Memory
from ella_demo.loading.embeddings import EmbeddingSpec
from ella_demo.loading.lora import LoraSpec
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
    "text_encoder": "--text-encoder",
    "t5_offload": "--t5-offload",
    "loras": "--lora",
}
# `dpg generate` makes square tiles: one --resolution sets both sides.
DPG_FLAGS = {**FLAGS, "height": "--resolution", "width": "--resolution"}


def describe_error(error: ExplorerError, flags: Mapping[str, str] = FLAGS) -> str:
    """A user error's message, with the value it names shown as its command-line flag."""
    return error.named(flags) if isinstance(error, InputError) else str(error)


def add_model_arguments(parser: argparse.ArgumentParser, default_preset: str = "sd15") -> None:
    """The model-choice flags shared by app.py and every subcommand."""
    group = parser.add_argument_group("models")
    group.add_argument(
        "--preset",
        choices=PRESETS,
        default=default_preset,
        help="sd15 = real weights (downloaded); pocket = the small world trained by this project, shipped, offline",
    )
    group.add_argument("--sd15", help="SD1.5 hub id, diffusers folder, or single .safetensors file")
    group.add_argument(
        "--ella",
        help="ELLA hub id, folder, or .safetensors file (any preset), or 'scratch' for a new untrained connector",
    )
    group.add_argument("--t5", help="T5 encoder hub id (org/name[/subfolder]) or folder")
    group.add_argument(
        "--text-encoder",
        help="any transformers text encoder (hub id or folder) instead of T5; "
        "the connector must have been trained with it",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    group.add_argument("--dtype", choices=tuple(DTYPES), help="default: fp16 on GPU, fp32 on CPU")
    group.add_argument(
        "--t5-dtype",
        choices=tuple(DTYPES),
        help="T5 (or --text-encoder) dtype; default: fp16 on GPU (as ELLA was trained), else --dtype",
    )
    group.add_argument("--cache-dir", type=Path, help="hub cache folder (default: huggingface_hub's own)")
    group.add_argument("--allow-pickle", action="store_true", help="also read .bin/.ckpt weights (can run code)")
    _add_memory_and_addition_arguments(parser)


def _add_memory_and_addition_arguments(parser: argparse.ArgumentParser) -> None:
    """T5's memory options, LoRAs and textual-inversion embeddings (loading/additions.py)."""
    memory = parser.add_argument_group("T5 memory")
    memory.add_argument("--t5-device", choices=("cpu",), help="run T5 on the CPU (fp32; spares the GPU its memory)")
    memory.add_argument("--t5-offload", action="store_true", help="keep T5 in CPU memory, on the GPU only to encode")
    memory.add_argument("--t5-cache", type=Path, help="folder of encoded prompts, kept across runs (any size)")
    additions = parser.add_argument_group("LoRAs and embeddings (safetensors only)")
    additions.add_argument(
        "--lora",
        action="append",
        default=[],
        type=parse_lora_argument,
        metavar="FILE[:WEIGHT]",
        help="an SD1.5 LoRA (A1111/kohya or diffusers) on the UNet of both sides and on CLIP; repeatable",
    )
    additions.add_argument("--lora-fuse", action="store_true", help="merge the LoRAs into the weights at start-up")
    additions.add_argument(
        "--embedding",
        action="append",
        default=[],
        type=parse_embedding_argument,
        metavar="FILE[:TOKEN]",
        help="a textual-inversion embedding for CLIP (token: the file's name unless given); repeatable",
    )


def addition_flags(args: argparse.Namespace) -> list[str]:
    """The LoRA, embedding and T5-memory flags given: commands that build or train their own models refuse them."""
    given = (
        ("--lora", args.lora), ("--lora-fuse", args.lora_fuse), ("--embedding", args.embedding),
        ("--t5-device", args.t5_device), ("--t5-offload", args.t5_offload), ("--t5-cache", args.t5_cache),
    )  # fmt: skip
    return [flag for flag, value in given if value]


def load_from_args(args: argparse.Namespace) -> LoadedModels:
    """The models the flags of `add_model_arguments` choose."""
    return load_models(
        args.preset,
        sd15=args.sd15,
        ella=args.ella,
        t5=args.t5,
        text_encoder=args.text_encoder,
        device=args.device,
        dtype=args.dtype,
        t5_dtype=args.t5_dtype,
        allow_pickle=args.allow_pickle,
        cache_dir=args.cache_dir,
        memory=T5Memory(args.t5_device, args.t5_offload, args.t5_cache),
        additions=Additions(tuple(args.lora), args.lora_fuse, tuple(args.embedding)),
    )


def t5_length(text: str) -> int | str:
    """'flexible' or a whole number; its range is checked with the other settings (settings.validate)."""
    if text == FLEXIBLE:
        return FLEXIBLE
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be '{FLEXIBLE}' or a token count, got {text!r}") from None


def parse_lora_argument(text: str) -> LoraSpec:
    """`FILE` or `FILE:WEIGHT`: only a number after the last colon is a weight (a Windows drive's colon is FILE's)."""
    path, _, tail = text.rpartition(":")
    try:
        weight = float(tail)
    except ValueError:
        return LoraSpec(Path(text))
    low, high = LORA_WEIGHT_RANGE
    if not path or not low <= weight <= high:
        raise argparse.ArgumentTypeError(f"expected FILE[:WEIGHT] with a weight from {low:g} to {high:g}, got {text!r}")
    return LoraSpec(Path(path), weight)


def parse_embedding_argument(text: str) -> EmbeddingSpec:
    """`FILE` or `FILE:TOKEN`, where TOKEN has no path separator (so a Windows drive stays part of FILE)."""
    path, _, token = text.rpartition(":")
    if not path or not token or any(mark in token for mark in "/\\."):
        return EmbeddingSpec(Path(text))
    if any(mark.isspace() for mark in token):
        raise argparse.ArgumentTypeError(f"the token after ':' must be one word without spaces, got {token!r}")
    return EmbeddingSpec(Path(path), token)
