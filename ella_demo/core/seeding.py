"""How a seed (or a caller's generators) becomes the noise of a run, identically on both sides."""

from __future__ import annotations

import torch

from ella_demo.core.settings import GenerationSettings, SettingsError

# One generator for every image, or one per image (diffusers' convention).
Generators = torch.Generator | list[torch.Generator]


def check_generator(generator, num_images: int) -> None:
    """A torch.Generator, a list of exactly `num_images` of them, or None; else a SettingsError."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, list | tuple) and all(isinstance(item, torch.Generator) for item in generator):
        if len(generator) == num_images:
            return
        raise SettingsError("generator", f"must hold one generator per image: {num_images}, got {len(generator)}.")
    raise SettingsError("generator", f"must be a torch.Generator or a list of them, got {type(generator).__name__}.")


def make_generators(
    settings: GenerationSettings, generator: Generators | None, device: torch.device
) -> tuple[Generators, str]:
    """The generator(s) that draw this run's noise, and how they were made, in words."""
    if generator is not None:
        return (list(generator) if isinstance(generator, list | tuple) else generator), "the caller's generator(s)"
    if settings.seeding == "official":
        first, last = settings.seed, settings.seed + settings.num_images - 1
        seeds = f"seed {first}" if first == last else f"seeds {first} to {last}"
        made = [torch.Generator(device).manual_seed(settings.seed + index) for index in range(settings.num_images)]
        return made, f"official: one {device.type} generator per image, {seeds}"
    return torch.Generator("cpu").manual_seed(settings.seed), "cpu: one CPU generator for all images"


def copy_generators(generators: Generators) -> Generators:
    """Generators in the same state, so each side draws the same per-step noise."""
    if isinstance(generators, list):
        return [copy_generators(item) for item in generators]
    copy = torch.Generator(generators.device)
    copy.set_state(generators.get_state())
    return copy
