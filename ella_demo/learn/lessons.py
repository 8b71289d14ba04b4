"""The lessons: each one click in the app (Learn tab), one API call (`run_lesson`), one CLI subcommand
(`python -m ella_demo learn NAME`). Each says what to look for and shows the numbers that back it: measured
by the pocket world's detector on the pocket preset, cited from the paper (and labelled so) elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from ella_demo.core.errors import InputError
from ella_demo.core.models import LoadedModels
from ella_demo.learn import binding, long_prompts, pieces, switching, timestep_ablation
from ella_demo.learn.base import LessonOptions, LessonResult, LessonRunner, ProgressCallback, examples_for


@dataclass(frozen=True)
class Lesson:
    """A lesson's name, title, one-line summary, and whether it reads a second prompt."""

    name: str
    title: str
    summary: str
    second_prompt: str | None
    module: ModuleType

    def examples(self, preset: str) -> tuple[str, ...]:
        """The example prompts the lesson runs on `preset` when none are given."""
        return examples_for(self.module.EXAMPLES, preset)


def _lesson(module: ModuleType, summary: str, second_prompt: str | None = None) -> Lesson:
    return Lesson(module.NAME, module.TITLE, summary, second_prompt, module)


LESSONS: dict[str, Lesson] = {
    lesson.name: lesson
    for lesson in (
        _lesson(pieces, "The diagram of a run with its live tensor shapes; each block opens its view."),
        _lesson(
            binding,
            "A prompt and its attribute-swapped twin on both sides, with binding accuracy.",
            "Twin prompt (empty: the prompt with its first two colours swapped)",
        ),
        _lesson(long_prompts, "Where CLIP's 77-token window cuts a dense prompt, and what the language model keeps."),
        _lesson(
            switching,
            "Switch from one prompt to another at step k: when are layout and colour fixed?",
            "Prompt switched to (empty: the prompt with its first colour changed)",
        ),
        _lesson(timestep_ablation, "The connector fed one fixed timestep for the whole run, against the real one."),
    )
}


def run_lesson(
    models: LoadedModels,
    name: str,
    options: LessonOptions = LessonOptions(),  # noqa: B008 - frozen
    progress: ProgressCallback | None = None,
) -> LessonResult:
    """Run lesson `name` on the loaded models; `progress(done, total)` after every denoising step, counted in images
    (it may raise to stop).

    Raises InputError for an unknown lesson or an option out of range, and the engine's SettingsError for a bad
    prompt, before any image is generated.
    """
    if name not in LESSONS:
        raise InputError("lesson", f"must be one of {', '.join(LESSONS)}, got {name!r}.")
    options = options.checked()
    module = LESSONS[name].module
    runner = LessonRunner(models, options, module.images(options), progress)
    result = module.lesson(runner, options)
    given = {"prompt": options.prompt, "second_prompt": options.second_prompt}
    result.settings = {**runner.settings(), "seed": options.seed, "seeds": options.seeds, "preset": models.preset,
                       **{name: text for name, text in given.items() if text is not None}}  # fmt: skip
    return result
