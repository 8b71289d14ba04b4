"""The settings of one generation and their validation, before any model work starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .text_encoders import DEFAULT_T5_LENGTH, FLEXIBLE

MODES = ("ella", "ella+clip")
SIDES = ("both", "clip", "ella")
SCHEDULER_NAMES = ("dpm++", "ddim", "euler", "euler_a", "unipc", "pndm")
STEPS_RANGE = (1, 150)
GUIDANCE_RANGE = (0.0, 30.0)
IMAGES_RANGE = (1, 4)
SEED_RANGE = (0, 2**32 - 1)
SIZE_RANGE = (256, 1024)
TINY_SIZE_RANGE = (8, 1024)
# The official demo's defaults (DPM-Solver++, 25 steps, guidance 10, 512x512).
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 10.0
DEFAULT_SIZE = 512


class SettingsError(ValueError):
    """A generation argument is out of range; the message names it, its value and the range."""


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides a generation's output, in diffusers' argument names."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE
    height: int = DEFAULT_SIZE
    width: int = DEFAULT_SIZE
    scheduler: str = "dpm++"
    num_images: int = 1
    mode: str = "ella"
    t5_length: int | str = FLEXIBLE
    sides: str = "both"
    trace: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def runs_clip(self) -> bool:
        return self.sides in ("both", "clip")

    @property
    def runs_ella(self) -> bool:
        return self.sides in ("both", "ella")

    @property
    def uses_guidance(self) -> bool:
        """Classifier-free guidance is off at scale <= 1, as in diffusers' pipelines."""
        return self.guidance_scale > 1.0


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")


def validate(settings: GenerationSettings, preset: str) -> None:
    """Raise SettingsError on the first out-of-range argument, naming it, its value and the range."""
    for name in ("prompt", "negative_prompt"):
        if not isinstance(getattr(settings, name), str):
            raise SettingsError(f"{name} must be text, got {type(getattr(settings, name)).__name__}.")
    _check_int("seed", settings.seed, *SEED_RANGE)
    _check_int("num_inference_steps", settings.num_inference_steps, *STEPS_RANGE)
    _check_int("num_images", settings.num_images, *IMAGES_RANGE)
    guidance = settings.guidance_scale
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, int | float)
        or not (GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1])
    ):
        raise SettingsError(f"guidance_scale must be a number from 0 to 30, got {guidance!r}.")
    low, high = TINY_SIZE_RANGE if preset == "tiny" else SIZE_RANGE
    for name in ("height", "width"):
        value = getattr(settings, name)
        _check_int(name, value, low, high)
        if value % 8:
            raise SettingsError(f"{name} must be a multiple of 8 from {low} to {high}, got {value}.")
    for name, value, allowed in (
        ("scheduler", settings.scheduler, SCHEDULER_NAMES),
        ("mode", settings.mode, MODES),
        ("sides", settings.sides, SIDES),
    ):
        if value not in allowed:
            raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {value!r}.")
    length = settings.t5_length
    if length != FLEXIBLE and (isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 512):
        raise SettingsError(
            f"t5_length must be 'flexible' or a token count from 1 to 512 (ELLA used {DEFAULT_T5_LENGTH}), "
            f"got {length!r}."
        )
