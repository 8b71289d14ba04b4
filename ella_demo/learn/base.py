"""What every lesson shares: its options, its result, and the runner that generates and counts its images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from PIL import Image

from ella_demo.core.engine import generate
from ella_demo.core.errors import InputError
from ella_demo.core.models import LoadedModels
from ella_demo.core.results import GenerationResult
from ella_demo.core.settings import SEED_RANGE, GenerationSettings, default_guidance, validate
from ella_demo.learn.measure import Evidence

SEEDS_RANGE = (1, 8)  # images per measurement: enough for a rate, bounded for a shared app
STEPS_RANGE = (2, 50)
ProgressCallback = Callable[[float, int], None]  # (images done, fractions within one; images in all)


@dataclass(frozen=True)
class LessonOptions:
    """How to run a lesson; a prompt of None is the lesson's example for the loaded preset.

    second_prompt: the twin (bag of words) or the prompt switched to (when a word matters); lessons that use
    one prompt ignore it. Measurements use the seeds seed, seed + 1, ..., seed + seeds - 1; a guidance scale
    of None is the preset's default (`settings.default_guidance`).
    """

    prompt: str | None = None
    second_prompt: str | None = None
    seed: int = 0
    seeds: int = 4
    steps: int = 25
    guidance_scale: float | None = None

    def checked(self) -> LessonOptions:
        """These options, or an InputError naming the first one out of range (prompts are checked by the engine)."""
        for name, value, (low, high) in (
            ("seed", self.seed, SEED_RANGE),
            ("seeds", self.seeds, SEEDS_RANGE),
            ("steps", self.steps, STEPS_RANGE),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InputError(name, f"must be a whole number from {low} to {high}, got {value!r}.")
        if self.seed + self.seeds - 1 > SEED_RANGE[1]:
            raise InputError("seed", f"plus seeds - 1 must stay at most {SEED_RANGE[1]}; lower the seed.")
        return self


def examples_for(examples: dict[str, tuple[str, ...]], preset: str) -> tuple[str, ...]:
    """A lesson's example prompts for `preset`: the pocket world's words on pocket, SD1.5's on every other."""
    return examples["pocket" if preset == "pocket" else "sd15"]


@dataclass
class LessonResult:
    """A lesson's outcome: what to look for, the numbers that back it, its figures (file stem -> image).

    numbers hold plain JSON values; `run` is the traced generation a lesson's views are drawn from (the
    pieces lesson), else None.
    """

    name: str
    title: str
    look_for: str
    evidence: Evidence
    numbers: dict
    figures: dict[str, Image.Image]
    settings: dict = field(default_factory=dict)
    run: GenerationResult | None = None

    def as_json(self) -> dict:
        """The result without its images: name, title, text, evidence, numbers and settings."""
        return {
            "name": self.name,
            "title": self.title,
            "look_for": self.look_for,
            "evidence": asdict(self.evidence),
            "numbers": self.numbers,
            "settings": self.settings,
        }


class LessonRunner:
    """Generates a lesson's images with one set of options, counting them for `progress(done, total)`."""

    def __init__(
        self, models: LoadedModels, options: LessonOptions, total: int, progress: ProgressCallback | None = None
    ):
        self.models, self.options, self.total, self.progress = models, options, total, progress
        self.done = 0

    @property
    def measured(self) -> bool:
        """Whether pictures can be read (the pocket world's detector): else lessons cite the paper."""
        return self.models.preset == "pocket"

    def examples(self, examples: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
        """A lesson's example prompts for the loaded preset (`examples_for`)."""
        return examples_for(examples, self.models.preset)

    @property
    def seeds(self) -> range:
        """The measurement seeds: seed, seed + 1, ..., seed + seeds - 1."""
        return range(self.options.seed, self.options.seed + self.options.seeds)

    def settings(self) -> dict:
        """The generation settings every image of the lesson shares."""
        guidance = self.options.guidance_scale
        return {
            "num_inference_steps": self.options.steps,
            "guidance_scale": default_guidance(self.models.preset) if guidance is None else guidance,
        }

    def check_prompts(self, prompt: str, second_prompt: str | None = None) -> None:
        """Refuse, as the engine would and before any model work, a prompt that is not text."""
        validate(GenerationSettings(prompt=prompt, prompt_after=second_prompt), self.models.preset)

    def generate(self, prompt: str, seed: int, **arguments) -> GenerationResult:
        """One image per side (or the sides asked for) at the lesson's settings. Progress is reported after every
        denoising step, in images (fractions within one), so a callback that raises stops between steps."""

        def after_step(step: int, steps: int) -> None:
            if self.progress is not None:
                self.progress(self.done + step / steps, self.total)

        result = generate(self.models, prompt, seed=seed, progress=after_step, **self.settings(), **arguments)
        self.done += 1
        return result
