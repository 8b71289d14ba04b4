"""When a word matters: prompt A for the first k steps, prompt B from step k on, over k, on both sides.

Diffusion fixes a picture coarse to fine: the layout and colours are decided in the first, noisiest steps,
details later. Switching prompts at step k shows when: once a colour is fixed, switching later no longer
changes it. Beside it, the connector's attention over time for the words that differ (the paper's Fig. 8
argument: colour words peak at high noise).
"""

from __future__ import annotations

import math
import re

import numpy as np

from ella_demo.core.probe import probe
from ella_demo.inspect.connector_attention import word_shares
from ella_demo.inspect.figures import to_image
from ella_demo.inspect.lesson_figures import SwitchCurves, image_grid_figure, switch_figure
from ella_demo.learn.base import LessonOptions, LessonResult, LessonRunner
from ella_demo.learn.measure import CANONICAL, COLOURS, Evidence, main_centre, shows_colour

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
    """How many generations the lesson runs: one per (switch step, seed)."""
    return len(switch_steps(options.steps)) * options.seeds


def lesson(runner: LessonRunner, options: LessonOptions) -> LessonResult:
    """Generate every (k, seed), show the first seed's pictures over k, and (pocket) when layout and colour hold."""
    examples = runner.examples(EXAMPLES)
    first = options.prompt or examples[0]
    second = options.second_prompt or (examples[1] if options.prompt is None else recoloured(first))
    ks = switch_steps(options.steps)
    runner.check_prompts(first, second)
    timesteps, shares = _differing_word_shares(runner, first, second, options.steps)  # refuses empty prompts first
    runs = {
        k: [runner.generate(first, seed, prompt_after=second, switch_at_step=k) for seed in runner.seeds] for k in ks
    }
    grid = [[runs[k][0].clip_images[0] for k in ks], [runs[k][0].ella_images[0] for k in ks]]
    labels = [f"k={k}" + (" (B alone)" if k == 0 else " (A alone)" if k == options.steps else "") for k in ks]
    title = f"A until step k, then B. A: {first} B: {second}"
    figures = {"pictures": to_image(image_grid_figure(grid, ["CLIP", "ELLA"], labels, title))}
    numbers = {"prompt_a": first, "prompt_b": second, "switch_steps": ks, "seeds": list(runner.seeds)}
    colour = first_colour(first)
    colour = colour if colour != first_colour(second) else None
    measured = _measure(runs, ks, colour) if runner.measured else {}
    numbers |= measured
    colour_share = {
        side: values for side, values in measured.get("pictures_with_colour_a", {}).items() if side in SIDES
    }
    curves = SwitchCurves(ks, colour_share, measured.get("main_object_shift_px", {}), f"A's colour ({colour})")
    figures["timing"] = to_image(switch_figure(curves, timesteps, shares))
    evidence = Evidence("cited", PAPER) if not runner.measured else _evidence(ks, measured, len(runner.seeds))
    return LessonResult(NAME, TITLE, LOOK_FOR, evidence, numbers, figures)


LOOK_FOR = (
    "Read each row left to right: k=0 is prompt B alone, the last column prompt A alone. Layout and colour are "
    "decided before the details, so once A has conditioned the steps that decide them, switching to B no longer "
    "changes them: the plots measure from which k that holds, and when the connector reads the words that differ."
)
SIDES = ("clip", "ella")
SETTLED_PX = 4.0  # a main object this close to its place in A's picture counts as placed (objects are 12-20 px)


def _measure(runs: dict, ks: list[int], colour: str | None) -> dict:
    """Per side and k: how far the main object sits from its place in A's own picture (same seed, mean px), and,
    when the prompts' first colours differ, the share of pictures that show A's colour."""
    measured = {"main_object_shift_px": {side: _layout_shift(runs, ks, side) for side in SIDES}}
    if colour is not None:
        pictures = {side: [[getattr(r, f"{side}_images")[0] for r in runs[k]] for k in ks] for side in SIDES}
        measured["pictures_with_colour_a"] = {
            "colour": colour,
            **{side: [float(np.mean([shows_colour(image, colour) for image in row])) for row in rows]
               for side, rows in pictures.items()},
        }  # fmt: skip
    return measured


def _layout_shift(runs: dict, ks: list[int], side: str) -> list[float | None]:
    """Per k, the mean distance in pixels between the main object's centre and its centre in the picture of
    prompt A alone (k = the last switch step) for the same seed; None where no picture pair has objects."""
    reference = [main_centre(getattr(result, f"{side}_images")[0]) for result in runs[ks[-1]]]
    shifts = []
    for k in ks:
        centres = [main_centre(getattr(result, f"{side}_images")[0]) for result in runs[k]]
        distances = [math.dist(centre, place) for centre, place in zip(centres, reference, strict=True)
                     if centre is not None and place is not None]  # fmt: skip
        shifts.append(float(np.mean(distances)) if distances else None)
    return shifts


def _first_k(ks: list[int], values: list, holds) -> int | None:
    """The smallest k from which `holds(value)` is true for every later k too (None if never)."""
    settled = None
    for k, value in zip(reversed(ks), reversed(values), strict=True):
        if value is None or not holds(value):
            break
        settled = k
    return settled


def _from(k: int | None) -> str:
    return "at no k" if k is None else f"from k={k} on"


def _evidence(ks: list[int], measured: dict, seeds: int) -> Evidence:
    parts = []
    for side in SIDES:
        placed = _first_k(ks, measured["main_object_shift_px"][side], lambda shift: shift <= SETTLED_PX)
        text = f"{side.upper()}: main object within {SETTLED_PX:.0f} px of A's place {_from(placed)}"
        if "pictures_with_colour_a" in measured:
            coloured = _first_k(ks, measured["pictures_with_colour_a"][side], lambda share: share > 0.5)
            text += f", A's colour in most pictures {_from(coloured)}"
        parts.append(text)
    note = "" if "pictures_with_colour_a" in measured else " (colour not measured: the first colours must differ)"
    return Evidence(
        "measured", f"Measured by the pocket detector over {seeds} seed(s) per k: {'; '.join(parts)}{note}."
    )


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
