"""Reading LoRA and embedding files: safetensors only, with errors that name the file, and libraries kept quiet."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers.utils import logging as transformers_logging

from ella_demo.core.errors import ExplorerError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


class AdapterFileError(ExplorerError, ValueError):
    """A LoRA or embedding file cannot be used; the message names the file and what to change."""


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file, on the CPU; anything else is refused with what to do instead.

    Raises:
        AdapterFileError: the file is missing, is not named .safetensors (pickle formats: .ckpt, .pt, .bin,
            which are never opened), or is not a valid safetensors file.
    """
    suffix = path.suffix.lower()
    if suffix != ".safetensors":
        why = " is a pickle format, which can run code when loaded" if suffix in PICKLE_SUFFIXES else " is not one"
        raise AdapterFileError(
            f"{what} {path.name}: only .safetensors files are read ({suffix or 'a name without a suffix'}{why}). "
            "Convert it to safetensors first."
        )
    if not path.is_file():
        raise AdapterFileError(f"{what} {path}: no such file.")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise AdapterFileError(f"{what} {path.name} is not a valid safetensors file ({error}).") from None


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers', transformers' and peft's notes on a load that worked ("no LoRA keys for the text
    encoder" for a UNet-only LoRA, "multiple adapters", embedding-table resizing, a progress bar per LoRA);
    errors still raise."""
    levels = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])
        if bars:
            transformers_logging.enable_progress_bar()
