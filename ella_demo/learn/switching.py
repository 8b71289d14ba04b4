"""When a word matters: prompt A for the first k steps, prompt B from step k on, over k, on both sides.

Diffusion fixes a picture coarse to fine: the layout and colours are decided in the first, noisiest steps,
details later. Switching prompts at step k shows when: once a colour is fixed, switching later no longer
changes it. Beside it, the connector's attention over time for the words that differ (the paper's Fig. 8
argument: colour words peak at high noise).
"""

from __future__ import annotations

import re

import numpy as np

from ella_demo.core.probe import probe
from ella_demo.inspect.connector_attention import word_shares
from ella_demo.inspect.figures import to_image
from ella_demo.inspect.lesson_figures import image_grid_figure, switch_figure
from ella_demo.learn.base import LessonOptions, LessonResult, LessonRunner
from ella_demo.learn.measure import CANONICAL, COLOURS, Evidence, shows_colour

NAME = "when_a_word_matters"
TITLE = "When a word matters: switching prompts mid-run"
EXAMPLES = {
    "pocket": (
        "A large red square on a white background, drawn filled.",
        "A large blue square on a white background, drawn filled.",
    ),
    "sd15": ("a red sports car parked on a quiet street", "a blue sports car parked on a quiet street"),
}
SWITCH_POINTS = 6
PAPER = (
    "Cited from the paper, not measured here: in the connector's token x timestep maps, colour words and layout "
    "phrases peak at high noise, style words rise at low noise, and main entities stay strong throughout "
    "(paper, Fig. 8)."
)


def switch_steps(steps: int) -> list[int]:
    """Up to SWITCH_POINTS switch points from 0 (prompt B alone) to `steps` (prompt A alone), evenly."""
    return sorted({round(float(value)) for value in np.linspace(0, steps, SWITCH_POINTS)})


def first_colour(prompt: str) -> str | None:
    """The training word of the prompt's first colour word, or None."""
    for word in re.findall(r"[a-z_]+", prompt.lower()):
        if CANONICAL.get(word) in COLOURS:
            return CANONICAL[word]
    return None


def recoloured(prompt: str) -> str:
    """The prompt with its first colour word replaced by another colour (the default prompt B)."""
    colour = first_colour(prompt) or "red"
    other = "blue" if colour != "blue" else "red"
    for word in re.findall(r"[A-Za-z_]+", prompt):
        if CANONICAL.get(word.lower()) == colour:
            return re.sub(rf"\b{word}\b", other, prompt, count=1)
    return f"{other} {prompt}"


def images(options: LessonOptions) -> int:
    return len(switch_steps(options.steps)) * options.seeds


def lesson(runner: LessonRunner, options: LessonOptions) -> LessonResult:
    """Generate every (k, seed), show the first seed's pictures over k, and (pocket) when A's colour holds."""
    examples = runner.examples(EXAMPLES)
    first = options.prompt or examples[0]
    second = options.second_prompt or (examples[1] if options.prompt is None else recoloured(first))
    ks = switch_steps(options.steps)
    runs = {
        k: [runner.generate(first, seed, prompt_after=second, switch_at_step=k) for seed in runner.seeds] for k in ks
    }
    grid = [[runs[k][0].clip_images[0] for k in ks], [runs[k][0].ella_images[0] for k in ks]]
    labels = [f"k={k}" + (" (B alone)" if k == 0 else " (A alone)" if k == options.steps else "") for k in ks]
    figures = {
        "pictures": to_image(
            image_grid_figure(grid, ["CLIP", "ELLA"], labels, f"A until step k, then B. A: {first} B: {second}")
        )
    }
    numbers = {"prompt_a": first, "prompt_b": second, "switch_steps": ks, "seeds": list(runner.seeds)}
    timesteps, shares = _differing_word_shares(runner, first, second, options.steps)
    colour_a, colour_b = first_colour(first), first_colour(second)
    measurable = runner.measured and colour_a is not None and colour_a != colour_b
    follows = {}
    if measurable:
        follows = {
            side: [
                float(np.mean([shows_colour(getattr(r, f"{side}_images")[0], colour_a) for r in runs[k]])) for k in ks
            ]
            for side in ("clip", "ella")
        }
        numbers["pictures_with_colour_a"] = {"colour": colour_a, **follows}
    figures["timing"] = to_image(
        switch_figure(
            ks,
            {side.upper(): values for side, values in follows.items()},
            timesteps,
            shares,
            f"A's colour ({colour_a})",
        )
    )
    return LessonResult(NAME, TITLE, LOOK_FOR, _evidence(runner, measurable, ks, follows), numbers, figures)


LOOK_FOR = (
    "Read each row left to right: k=0 is prompt B alone, the last column prompt A alone. The colour settles in "
    "the first few steps: once A has been read for those, switching to B no longer changes it, and later steps "
    "only refine edges. The right plot shows when the connector reads the words that differ."
)


def _evidence(runner: LessonRunner, measurable: bool, ks: list[int], follows: dict) -> Evidence:
    if not runner.measured:
        return Evidence("cited", PAPER)
    if not measurable:
        return Evidence(
            "measured",
            "The two prompts must name different first colours for the detector to tell which one a picture follows.",
        )
    settled = {
        side: next((k for k, value in zip(ks, values, strict=True) if value >= 0.5), None)
        for side, values in follows.items()
    }
    text = "; ".join(
        f"{side.upper()}: A's colour in most pictures from k={k}"
        if k is not None
        else f"{side.upper()}: A's colour never in most pictures"
        for side, k in settled.items()
    )
    return Evidence("measured", f"Measured by the pocket detector over {len(runner.seeds)} seed(s) per k: {text}.")


def _differing_word_shares(runner: LessonRunner, first: str, second: str, steps: int) -> tuple:
    """(timesteps, {label: (T,) share}) of the connector's text attention for the words only one prompt has."""
    only = {
        prompt: set(re.findall(r"\w+", prompt.lower())) - set(re.findall(r"\w+", other.lower()))
        for prompt, other in ((first, second), (second, first))
    }
    curves, timesteps = {}, np.zeros(0)
    for tag, prompt in (("A", first), ("B", second)):
        result = probe(runner.models, prompt, max(steps, 2))
        timesteps = result.timesteps
        shares, columns = word_shares(result.attention, result.words)
        for index, label in enumerate(columns.labels):
            if label.lower().strip(".,") in only[prompt]:
                curves[f"{label} ({tag})"] = shares[:, index]
    return timesteps, curves
