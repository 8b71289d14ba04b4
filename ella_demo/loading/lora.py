"""SD1.5 LoRA files onto the loaded models, through diffusers' own LoRA loading.

A LoRA file is read from safetensors only (pickle can run code), in A1111/kohya (`lora_unet_...`,
`lora_te_...`) or diffusers (`unet.`, `text_encoder.`) key layout; diffusers converts it and loads it
as a named adapter of the shared UNet and of CLIP's text encoder. Each run then picks the weights
(core/adapters.py), or `fuse=True` merges the LoRAs into the weights once, for every run.
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.utils import logging as diffusers_logging
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers.utils import logging as transformers_logging

from ella_demo.core.adapters import LORA_WEIGHT_RANGE, LoraInfo
from ella_demo.core.errors import ExplorerError
from ella_demo.core.models import LoadedModels


class AdapterFileError(ExplorerError, ValueError):
    """A LoRA or embedding file cannot be used; the message names the file and what to change."""


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the weight runs use by default (`--lora FILE[:WEIGHT]`)."""

    path: Path
    weight: float = 1.0


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


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file, on the CPU; anything else is refused with what to do instead.

    Raises:
        AdapterFileError: the file is missing, is not named .safetensors (pickle formats: .ckpt, .pt, .bin),
            or is not a valid safetensors file.
    """
    if path.suffix.lower() != ".safetensors":
        raise AdapterFileError(
            f"{what} {path.name}: only .safetensors files are read ({path.suffix or 'this format'} is a pickle "
            "format, which can run code when loaded). Convert it to safetensors first."
        )
    if not path.is_file():
        raise AdapterFileError(f"{what} {path}: no such file.")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as error:
        raise AdapterFileError(f"{what} {path.name} is not a valid safetensors file ({error}).") from None


def load_loras(models: LoadedModels, specs: Sequence[LoraSpec], fuse: bool = False) -> None:
    """Load each LoRA as a named adapter of the UNet (both sides) and, for its text-encoder part, of CLIP.

    Runs use each LoRA at its spec's weight unless they ask for another (`generate(loras=...)`); with
    `fuse`, the LoRAs are merged into the weights at those weights and stay on for every run.
    Sets `models.loras`.

    Raises:
        AdapterFileError: a file is unreadable, not safetensors, or not an SD1.5 LoRA.
    """
    names: list[str] = []
    infos: list[LoraInfo] = []
    for spec in specs:
        name = _adapter_name(spec.path, [*(lora.name for lora in models.loras), *names])
        state_dict = read_safetensors(spec.path, "LoRA")
        before = _adapter_counts(models)
        try:
            with quiet_libraries():
                models.pipe.load_lora_weights(state_dict, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as error:
            if name in {adapter for adapters in models.pipe.get_list_adapters().values() for adapter in adapters}:
                models.pipe.delete_adapters(name)
            raise AdapterFileError(
                f"LoRA {spec.path.name} could not be loaded as an SD1.5 LoRA (A1111/kohya or diffusers layout): {error}"
            ) from None
        parts = tuple(part for part, count in _adapter_counts(models).items() if count > before[part])
        if not parts:
            raise AdapterFileError(f"LoRA {spec.path.name} changes no layer of the UNet or CLIP: is it for SD1.5?")
        names.append(name)
        infos.append(LoraInfo(name, spec.path.name, spec.weight, parts, fused=fuse))
    if fuse and names:
        _fuse(models, names, [spec.weight for spec in specs])
    models.loras = (*models.loras, *infos)
    models.adapters.reset()


def unload_loras(models: LoadedModels) -> None:
    """Remove every LoRA that is not fused: the models compute exactly what they did before `load_loras`."""
    models.pipe.unload_lora_weights()
    models.loras = tuple(lora for lora in models.loras if lora.fused)
    models.adapters.reset()


def _fuse(models: LoadedModels, names: list[str], weights: list[float]) -> None:
    """Merge the LoRAs into the UNet's and CLIP's weights (W + weight * scale * up @ down), then drop the adapters."""
    models.pipe.set_adapters(names, weights)
    models.pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    models.pipe.unload_lora_weights()


def _adapter_name(path: Path, taken: list[str]) -> str:
    """A valid, unused adapter name from the file's stem: "my-style v2.safetensors" -> "my_style_v2"."""
    base = re.sub(r"\W", "_", path.stem).strip("_") or "lora"
    base = f"lora_{base}" if base[0].isdigit() else base
    name, number = base, 2
    while name in taken:
        name, number = f"{base}_{number}", number + 1
    return name


def _adapter_counts(models: LoadedModels) -> dict[str, int]:
    """How many adapters the UNet and CLIP's text encoder hold."""
    adapters = models.pipe.get_list_adapters()
    return {part: len(adapters.get(part, ())) for part in ("unet", "text_encoder")}
