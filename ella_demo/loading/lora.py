"""SD1.5 LoRA files onto the loaded models, through diffusers' own LoRA loading.

A LoRA file is read from safetensors only (pickle can run code), in A1111/kohya (`lora_unet_...`,
`lora_te_...`) or diffusers (`unet.`, `text_encoder.`) key layout; diffusers converts it and loads it
as a named adapter of the shared UNet and of CLIP's text encoder. Each run then picks the weights
(core/adapters.py), or `fuse=True` merges the LoRAs into the weights once, for every run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ella_demo.core.adapters import LoraInfo, check_lora_weight
from ella_demo.core.models import LoadedModels
from ella_demo.core.settings import SettingsError
from ella_demo.loading.addition_files import AdapterFileError, quiet_libraries, read_safetensors


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the weight runs use by default (`--lora FILE[:WEIGHT]`)."""

    path: Path
    weight: float = 1.0


def load_loras(models: LoadedModels, specs: Sequence[LoraSpec], fuse: bool = False) -> None:
    """Load each LoRA as a named adapter of the UNet (both sides) and, for its text-encoder part, of CLIP.

    Runs use each LoRA at its spec's weight unless they ask for another (`generate(loras=...)`); with
    `fuse`, the LoRAs are merged into the weights at those weights and stay on for every run. Waits for
    runs in progress to end, and starts none meanwhile. Sets `models.loras`; on an error none of `specs`
    stays loaded.

    Raises:
        AdapterFileError: a file is unreadable, not safetensors, or not an SD1.5 LoRA; a weight is out of range;
            fusing while LoRAs with a per-run weight are loaded (fusing would take them in too).
    """
    weights = [_checked_weight(spec) for spec in specs]
    with models.adapters.exclusive():
        if fuse and any(not lora.fused for lora in models.loras):
            raise AdapterFileError("LoRAs can be fused only before any LoRA with a per-run weight is loaded.")
        names: list[str] = []
        fusing = False
        try:
            infos = [_load_one(models, spec, weight, names, fuse) for spec, weight in zip(specs, weights, strict=True)]
            if fuse and names:
                models.pipe.set_adapters(names, weights)
                fusing = True
                models.pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
                models.pipe.unload_lora_weights()
        except Exception:
            if fusing:  # take out of the weights whatever part of the LoRAs was merged
                models.pipe.unfuse_lora()
            _drop_adapters(models, names)
            raise
        models.loras = (*models.loras, *infos)


def unload_loras(models: LoadedModels) -> None:
    """Remove every LoRA with a per-run weight: the models compute what they did before those were loaded.
    Fused LoRAs stay, being part of the weights. Waits for runs in progress to end."""
    with models.adapters.exclusive():
        models.pipe.unload_lora_weights()
        models.loras = tuple(lora for lora in models.loras if lora.fused)


def _checked_weight(spec: LoraSpec) -> float:
    try:
        return check_lora_weight(spec.path.name, spec.weight)
    except SettingsError as error:
        raise AdapterFileError(f"LoRA {error.detail}") from None


def _load_one(models: LoadedModels, spec: LoraSpec, weight: float, names: list[str], fuse: bool) -> LoraInfo:
    """Load one file as an adapter named after it (appended to `names` before loading, so a failure drops it)."""
    held = [adapter for adapters in models.pipe.get_list_adapters().values() for adapter in adapters]
    name = _adapter_name(spec.path, [*(lora.name for lora in models.loras), *names, *held])
    state_dict = read_safetensors(spec.path, "LoRA")
    before = _adapter_counts(models)
    names.append(name)
    try:
        with quiet_libraries():
            models.pipe.load_lora_weights(state_dict, adapter_name=name)
    except (ValueError, KeyError, RuntimeError) as error:
        _drop_adapters(models, [name])
        raise AdapterFileError(
            f"LoRA {spec.path.name} could not be loaded as an SD1.5 LoRA (A1111/kohya or diffusers layout): {error}"
        ) from None
    parts = tuple(part for part, count in _adapter_counts(models).items() if count > before[part])
    if not parts:
        raise AdapterFileError(f"LoRA {spec.path.name} changes no layer of the UNet or CLIP: is it for SD1.5?")
    return LoraInfo(name, spec.path.name, weight, parts, fused=fuse)


def _drop_adapters(models: LoadedModels, names: list[str]) -> None:
    """Delete those of `names` that the UNet or CLIP still hold as adapters."""
    held = {adapter for adapters in models.pipe.get_list_adapters().values() for adapter in adapters}
    if present := [name for name in names if name in held]:
        models.pipe.delete_adapters(present)


def _adapter_name(path: Path, taken: list[str]) -> str:
    """A valid, unused adapter name from the file's stem: "my-style v2.safetensors" -> "my_style_v2".

    PEFT keeps adapters in torch ModuleDicts, so a name that is one of their attributes ("keys", "forward")
    or starts with a digit gets a "lora_" prefix.
    """
    base = re.sub(r"\W", "_", path.stem).strip("_") or "lora"
    if base[0].isdigit() or hasattr(torch.nn.ModuleDict(), base):
        base = f"lora_{base}"
    name, number = base, 2
    while name in taken:
        name, number = f"{base}_{number}", number + 1
    return name


def _adapter_counts(models: LoadedModels) -> dict[str, int]:
    """How many adapters the UNet and CLIP's text encoder hold."""
    adapters = models.pipe.get_list_adapters()
    return {part: len(adapters.get(part, ())) for part in ("unet", "text_encoder")}
