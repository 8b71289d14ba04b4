"""Bag of words: a prompt and its attribute-swapped twin, both models, same seeds.

An encoder that reads a prompt as a bag of words gives "a red square and a blue circle" and "a blue square
and a red circle" nearly the same features, so the picture cannot follow the swap. The lesson draws both
prompts on both sides (a 2x2 grid at the first seed) and, in the pocket world, measures binding accuracy:
the share of pictures in which the detector finds every asked (colour, shape) pair.
"""

from __future__ import annotations

import re

from ella_demo.core.errors import InputError
from ella_demo.inspect.figures import category_bars_figure, to_image
from ella_demo.inspect.lesson_figures import image_grid_figure
from ella_demo.learn.base import LessonOptions, LessonResult, LessonRunner
from ella_demo.learn.measure import CANONICAL, COLOURS, Evidence, found_pairs, percentages, rate, requested_objects

NAME = "bag_of_words"
TITLE = "Bag of words: who gets which colour?"
EXAMPLES = {
    "pocket": (
        "A large red square left of a large blue circle, on a white background.",
        "A large blue square left of a large red circle, on a white background.",
    ),
    "sd15": ("a red cube left of a blue ball", "a blue cube left of a red ball"),
}
PAPER = (
    "Cited from the paper, not measured here: on DPG-Bench, whose questions check such attribute bindings among "
    "others, ELLA-SD1.5 scores 74.91 overall against SD1.5's 63.18 (paper, table 4)."
)
LOOK_FOR = (
    "Compare each column top and bottom: a model that binds colours to shapes swaps them with the words; one "
    "that reads a bag of words draws similar pictures for both prompts. In the pocket world the bars count, over "
    "several seeds, how often each side draws exactly what was asked."
)


def swapped_twin(prompt: str) -> str | None:
    """The prompt with its first two different colour words exchanged, spacing and punctuation kept (None when it
    names fewer than two different colours, so no twin would differ from it)."""
    colours = [match for match in re.finditer(r"[A-Za-z]+", prompt) if CANONICAL.get(match.group().lower()) in COLOURS]
    first = colours[0] if colours else None
    second = next((match for match in colours if CANONICAL[match.group().lower()] != CANONICAL[first.group().lower()]),
                  None) if first else None  # fmt: skip
    if second is None:
        return None
    return (prompt[: first.start()] + second.group() + prompt[first.end() : second.start()] + first.group()
            + prompt[second.end() :])  # fmt: skip


def run(runner: LessonRunner, prompt: str, twin: str) -> LessonResult:
    """The 2x2 grid at the first seed, and binding accuracy over every seed (pocket)."""
    prompts = {"prompt": prompt, "twin": twin}
    results = {key: [runner.generate(text, seed) for seed in runner.seeds] for key, text in prompts.items()}
    grid = [[results[key][0].clip_images[0], results[key][0].ella_images[0]] for key in prompts]
    figures = {
        "grid": to_image(
            image_grid_figure(
                grid,
                [f"{key}: {text}" for key, text in prompts.items()],
                ["CLIP", "ELLA"],
                f"Same seed ({runner.options.seed}), prompt and twin",
            )
        ),
    }
    numbers = {"prompts": prompts, "seeds": list(runner.seeds)}
    if not runner.measured:
        return LessonResult(NAME, TITLE, LOOK_FOR, Evidence("cited", PAPER), numbers, figures)
    wanted = {key: requested_objects(text) for key, text in prompts.items()}
    numbers["asked"] = {key: [list(pair) for pair in pairs] for key, pairs in wanted.items()}
    if not all(wanted.values()):
        unread = Evidence("measured", "Not measured: the detector checks objects named as a colour right before a "
                                      "shape ('a red square'), and one of the prompts names none.")  # fmt: skip
        return LessonResult(NAME, TITLE, LOOK_FOR, unread, numbers, figures)
    accuracy = {side: _binding(results, wanted, side) for side in ("clip", "ella")}
    numbers["binding"] = accuracy
    flat = {side: {f"{key}: {kind}": value for key, kinds in prompts_.items() for kind, value in kinds.items()}
            for side, prompts_ in accuracy.items()}  # fmt: skip
    figures["binding"] = to_image(category_bars_figure(percentages(flat), "Colour-shape pairs the detector finds (%)"))
    return LessonResult(NAME, TITLE, LOOK_FOR, Evidence("measured", _measured_text(accuracy)), numbers, figures)


def _binding(results: dict, wanted: dict, side: str) -> dict:
    """Per prompt: pictures with every asked pair, and asked pairs found over all pictures (partial credit)."""
    measured = {}
    for key, pairs in wanted.items():
        found = [found_pairs(getattr(result, f"{side}_images")[0], pairs) for result in results[key]]
        measured[key] = {
            "every pair": rate([all(hits) for hits in found]),
            "pairs found": rate([hit for hits in found for hit in hits]),
        }
    return measured


def _measured_text(accuracy: dict) -> str:
    parts = []
    for side, prompts in accuracy.items():
        every = [value["every pair"] for value in prompts.values()]
        pairs = [value["pairs found"] for value in prompts.values()]
        parts.append(
            f"{side.upper()} {sum(item['hits'] for item in every)} of {sum(item['of'] for item in every)} "
            f"pictures with every pair ({sum(item['hits'] for item in pairs)} of "
            f"{sum(item['of'] for item in pairs)} pairs)"
        )
    return "Measured by the pocket detector over both prompts: " + "; ".join(parts) + "."


def images(options: LessonOptions) -> int:
    """How many generations the lesson runs (for progress)."""
    return 2 * options.seeds


def lesson(runner: LessonRunner, options: LessonOptions) -> LessonResult:
    """Entry point: the given prompt (or the example) and the given twin (or its colour-swapped twin)."""
    examples = runner.examples(EXAMPLES)
    prompt = options.prompt or examples[0]
    twin = options.second_prompt or (examples[1] if options.prompt is None else swapped_twin(prompt))
    if twin is None:
        raise InputError("second prompt", "is needed: the prompt names fewer than two colours to swap. Type a twin.")
    return run(runner, prompt, twin)
