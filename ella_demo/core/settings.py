"""The settings of one generation and their validation, before any model work starts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ella_demo.core.errors import InputError
from ella_demo.core.text_encoding import DEFAULT_T5_LENGTH, FLEXIBLE

MODES = ("ella", "ella+clip")
SIDES = ("both", "clip", "ella")
SCHEDULER_NAMES = ("dpm++", "ddim", "euler", "euler_a", "unipc", "pndm")
# How the initial and per-step noise is drawn. "cpu": one CPU generator seeded with `seed` draws the
# noise of every image, so a seed gives the same images on any device. "official": the official
# ELLA demo's way, one generator per image on the model's device seeded seed + i; on the same GPU
# this reproduces the demo's images.
SEEDINGS = {
    "cpu": "one CPU generator seeded with the seed draws every image's noise (same images on any device)",
    "official": "one generator per image on the model's device, seeded seed + i (the official ELLA demo)",
}
STEPS_RANGE = (1, 150)
GUIDANCE_RANGE = (0.0, 30.0)
IMAGES_RANGE = (1, 4)
SEED_RANGE = (0, 2**32 - 1)
# Timesteps a connector may be fixed at: the 1,000 training timesteps of SD1.5's (and the pocket world's) schedule.
CONNECTOR_TIMESTEP_RANGE = (0, 999)
# Image sides each preset may ask for, in pixels (multiples of 8); presets not named take the SD1.5 range.
SIZE_RANGES = {"tiny": (8, 1024), "pocket": (32, 256)}
SD15_SIZE_RANGE = (256, 1024)
# The official demo's defaults (DPM-Solver++, 25 steps, guidance 10); the size defaults to the
# model's native size (512x512 for SD1.5, see `LoadedModels.native_size`).
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 10.0
# Presets that start elsewhere: at 10 the pocket world's ELLA side draws the asked shape far less often than at 5
# (9 against 19 of 30 single-object pictures, 3 seeds x the 10 prompts of tests/test_pocket_world.py).
PRESET_GUIDANCE = {"pocket": 5.0}


def default_guidance(preset: str) -> float:
    """The guidance scale a run of `preset` uses when none is given, and the app's slider starts at."""
    return PRESET_GUIDANCE.get(preset, DEFAULT_GUIDANCE)


class SettingsError(InputError):
    """A generation argument is unusable; the message names it, its value and what is allowed."""


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides a generation's output, in diffusers' argument names.

    A size of None stands for the loaded model's native size; `engine.generate` resolves it before
    anything reads it, so every result, trace and file records the size actually made.
    """

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    height: int | None = None
    width: int | None = None
    scheduler: str = "dpm++"
    num_images: int = 1
    mode: str = "ella"
    t5_length: int | str = FLEXIBLE
    sides: str = "both"
    trace: bool = False
    seeding: str = "cpu"
    # A prompt schedule: `prompt` for steps 0..switch_at_step-1, `prompt_after` from there on (both sides).
    prompt_after: str | None = None
    switch_at_step: int = 0
    # The timestep fed to the connector at every step, instead of the step's own (the paper's ablation).
    connector_timestep: int | None = None
    # The weight of each LoRA loaded at start-up, as (name, weight) pairs (core/adapters.py); () without LoRAs.
    loras: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def runs_clip(self) -> bool:
        return self.sides in ("both", "clip")

    @property
    def runs_ella(self) -> bool:
        return self.sides in ("both", "ella")

    @property
    def side_names(self) -> tuple[str, ...]:
        """The sides this generation runs, in the UNet batch's order: ("clip", "ella") or one of them."""
        return tuple(side for side, runs in (("clip", self.runs_clip), ("ella", self.runs_ella)) if runs)

    @property
    def uses_guidance(self) -> bool:
        """Classifier-free guidance is off at scale <= 1, as in diffusers' pipelines."""
        return self.guidance_scale > 1.0


def _check_int(name: str, value, low: int, high: int) -> None:
    """Python ints only: 2.5, 25.0, NaN, True and "25" are refused, never rounded or converted."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(name, f"must be a whole number from {low} to {high}, got {value!r}.")


def _check_text(name: str, value) -> None:
    if not isinstance(value, str):
        raise SettingsError(name, f"must be text, got {type(value).__name__}.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise SettingsError(
            name, f"contains a character that is not valid text (position {error.start}); remove it."
        ) from None


def check_choice(name: str, value, allowed) -> None:
    """Raise a SettingsError naming `name` unless `value` is one of `allowed` (compared with ==)."""
    if not any(value == choice and type(value) is type(choice) for choice in allowed):
        raise SettingsError(name, f"must be one of {', '.join(map(str, allowed))}, got {value!r}.")


def size_range(preset: str) -> tuple[int, int]:
    """The (smallest, largest) image side in pixels that `preset` may generate; sides are multiples of 8."""
    return SIZE_RANGES.get(preset, SD15_SIZE_RANGE)


def validate(settings: GenerationSettings, preset: str) -> None:
    """Raise SettingsError on the first unusable argument, naming it, its value and what is allowed.

    A size of None (the model's native size, resolved later) passes; a given size must be in
    `size_range(preset)`.
    """
    _check_text("prompt", settings.prompt)
    _check_text("negative_prompt", settings.negative_prompt)
    _check_int("seed", settings.seed, *SEED_RANGE)
    _check_int("num_inference_steps", settings.num_inference_steps, *STEPS_RANGE)
    _check_int("num_images", settings.num_images, *IMAGES_RANGE)
    guidance = settings.guidance_scale
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, int | float)
        or math.isnan(guidance)
        or not (GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1])
    ):
        raise SettingsError("guidance_scale", f"must be a number from 0 to 30, got {guidance!r}.")
    low, high = size_range(preset)
    for name in ("height", "width"):
        value = getattr(settings, name)
        if value is None:
            continue
        _check_int(name, value, low, high)
        if value % 8:
            raise SettingsError(name, f"must be a multiple of 8 from {low} to {high}, got {value}.")
    check_choice("scheduler", settings.scheduler, SCHEDULER_NAMES)
    check_choice("mode", settings.mode, MODES)
    check_choice("sides", settings.sides, SIDES)
    check_choice("seeding", settings.seeding, tuple(SEEDINGS))
    length = settings.t5_length
    if length != FLEXIBLE and (isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 512):
        raise SettingsError(
            "t5_length",
            f"must be 'flexible' or a token count from 1 to 512 (ELLA used {DEFAULT_T5_LENGTH}), got {length!r}.",
        )
    if not isinstance(settings.trace, bool):
        raise SettingsError("trace", f"must be True or False, got {settings.trace!r}.")
    _check_schedule(settings)


def _check_schedule(settings: GenerationSettings) -> None:
    """The prompt switch and the fixed connector timestep (core/engine.py, `generate`)."""
    if settings.connector_timestep is not None:
        _check_int("connector_timestep", settings.connector_timestep, *CONNECTOR_TIMESTEP_RANGE)
    if settings.prompt_after is None:
        if settings.switch_at_step != 0:
            raise SettingsError("switch_at_step", "needs a prompt_after to switch to; give one or leave it at 0.")
        return
    _check_text("prompt_after", settings.prompt_after)
    _check_int("switch_at_step", settings.switch_at_step, 0, settings.num_inference_steps)
    if settings.trace:
        raise SettingsError(
            "trace", "cannot follow a prompt switch: the word views read one prompt. Trace each prompt on its own."
        )
