"""What a lesson measures in the pocket world: the objects a prompt asks for, and whether a picture shows them.

A prompt asks for an object where it names a colour and, a few words later, a shape: "a red circle", "a large
blue filled square", "a crimson cube" (paraphrases count as the word they stand for). Pictures are read by the
pocket world's detector (ella_demo/pocket/detector.py), which answers 96% of the questions about VAE round
trips of the world's own pictures correctly (README, "The pocket world"). Other presets have no detector:
their lessons cite the paper instead (`Evidence`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from ella_demo.pocket.detector import detect
from ella_demo.pocket.vocabulary import COLOURS, PARAPHRASES, SHAPES, SIZES, STYLES

# Words allowed between a colour and its shape ("a red large filled circle" is not English, but is read).
_BETWEEN = set(SIZES) | set(STYLES) | {word for base in (*SIZES, *STYLES) for word in PARAPHRASES.get(base, ())}
_MAX_GAP = 2


def _canonical() -> dict[str, str]:
    """Every colour and shape word (paraphrases included, "plus sign" as "plus_sign") -> its training word."""
    names = {name: name for name in (*COLOURS, *SHAPES)}
    for base, paraphrases in PARAPHRASES.items():
        if base in names:
            names.update({paraphrase.replace(" ", "_"): base for paraphrase in paraphrases})
    return names


CANONICAL = _canonical()


@dataclass(frozen=True)
class Evidence:
    """Where a lesson's claim comes from: "measured" (the pocket detector) or "cited" (the paper)."""

    kind: str
    text: str


def requested_objects(prompt: str) -> tuple[tuple[str, str], ...]:
    """(colour, shape) training words of the objects the prompt names with a colour before the shape, each once, in
    the order of their first mention (the detector checks presence, so repeats add nothing)."""
    words = re.findall(r"[a-z_]+", prompt.lower().replace("plus sign", "plus_sign"))
    found = []
    for index, word in enumerate(words):
        if CANONICAL.get(word) not in COLOURS:
            continue
        for gap, later in enumerate(words[index + 1 : index + 2 + _MAX_GAP]):
            if CANONICAL.get(later) in SHAPES:
                found.append((CANONICAL[word], CANONICAL[later]))
                break
            if later not in _BETWEEN or gap == _MAX_GAP:
                break
    return tuple(dict.fromkeys(found))


def found_pairs(image: Image.Image, objects: Sequence[tuple[str, str]]) -> list[bool]:
    """For each (colour, shape), whether the detector finds an object of that colour and shape in the picture."""
    detected = {(item.colour, item.shape) for item in detect(image).objects}
    return [wanted in detected for wanted in objects]


def shows(image: Image.Image, objects: Sequence[tuple[str, str]]) -> bool:
    """Whether the detector finds every (colour, shape) of `objects` in the picture."""
    return all(found_pairs(image, objects))


def shows_colour(image: Image.Image, colour: str) -> bool:
    """Whether the detector finds any object of `colour` in the picture."""
    return any(item.colour == colour for item in detect(image).objects)


def main_centre(image: Image.Image) -> tuple[float, float] | None:
    """(x, y) centre of the largest object the detector finds, in 64-px layout pixels; None for an empty picture."""
    objects = detect(image).objects
    return max(objects, key=lambda item: item.pixels).centre if objects else None


def drawn_as_asked(images: Sequence[Image.Image], objects: Sequence[tuple[str, str]]) -> dict:
    """{"colour": pictures with every asked colour, "colour and shape": pictures with every asked pair} as rates."""
    return {
        "colour": rate([all(shows_colour(image, colour) for colour, _ in objects) for image in images]),
        "colour and shape": rate([shows(image, objects) for image in images]),
    }


def percentages(rates: dict[str, dict[str, dict]]) -> dict[str, dict[str, float]]:
    """{group: {label: rate dict}} -> {GROUP: {label: percent}}, the bar charts' input (an empty rate is 0)."""
    return {group.upper(): {label: 100 * (value["rate"] or 0) for label, value in labels.items()}
            for group, labels in rates.items()}  # fmt: skip


def rate(hits: Sequence[bool]) -> dict:
    """{"hits", "of", "rate"} of a list of yes/no measurements (rate None for an empty list)."""
    count = len(hits)
    return {"hits": int(sum(hits)), "of": count, "rate": (sum(hits) / count) if count else None}
