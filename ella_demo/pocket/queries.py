"""The questions the pocket world asks of a picture: a typed Query, its English text, and back.

The DPG-Bench question graphs of pocket prompts (questions.py) hold these texts in their
`question_natural_language` column, and the pixel detector's answerer parses them back, so pocket
evaluation goes through the DPG scorer unchanged. Texts always use the training words of
vocabulary.py, whatever words the prompt used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ella_demo.pocket.vocabulary import BACKGROUNDS, COLOURS, COUNT_WORDS, SHAPES, SIZES, STYLES

KINDS = ("entity", "colour", "size", "count", "relation", "background", "style")
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above",
                    "below": "below", "next to": "next to"}  # fmt: skip
_NUMBERS = {word: number for number, word in COUNT_WORDS.items()}


class QueryError(ValueError):
    """A question text that is not one of the pocket world's questions."""


@dataclass(frozen=True)
class Query:
    """One question. kind: one of KINDS. shape: the entity asked about (None for background, style).

    value: the colour, size, background colour, style or relation asked for; other: a relation's
    second shape; count: the number of `shape` objects asked for (kind "count"); plural: the entity
    is a group (changes only the wording).
    """

    kind: str
    shape: str | None = None
    value: str | None = None
    other: str | None = None
    count: int | None = None
    plural: bool = False


def plural_of(noun: str) -> str:
    """English plural of a shape or paraphrase noun: cross -> crosses, plus sign -> plus signs, box -> boxes."""
    return noun + "es" if noun.endswith(("s", "x")) else noun + "s"


def question_text(query: Query) -> str:
    """The question in English, e.g. "Is the circle to the left of the square?"."""
    the = f"the {plural_of(query.shape)}" if query.plural else f"the {query.shape}"
    be = "Are" if query.plural else "Is"
    texts = {
        "entity": lambda: f"Is there a {query.shape}?",
        "colour": lambda: f"{be} {the} {query.value}?",
        "size": lambda: f"{be} {the} {query.value}?",
        "count": lambda: f"Are there {COUNT_WORDS[query.count]} {plural_of(query.shape)}?",
        "relation": lambda: f"Is the {query.shape} {RELATION_PHRASES[query.value]} the {query.other}?",
        "background": lambda: f"Is the background {query.value}?",
        "style": lambda: f"Are the shapes {query.value}?",
    }
    return texts[query.kind]()


def _alternatives(words) -> str:
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


_SHAPE = f"(?P<shape>{_alternatives(SHAPES)})"
_SHAPES = f"(?P<shapes>{_alternatives(plural_of(shape) for shape in SHAPES)})"
_PATTERNS = (
    ("entity", re.compile(f"Is there a {_SHAPE}\\?")),
    ("colour", re.compile(f"(?:Is the {_SHAPE}|Are the {_SHAPES}) (?P<value>{_alternatives(COLOURS)})\\?")),
    ("size", re.compile(f"(?:Is the {_SHAPE}|Are the {_SHAPES}) (?P<value>{_alternatives(SIZES)})\\?")),
    ("count", re.compile(f"Are there (?P<count>{_alternatives(_NUMBERS)}) {_SHAPES}\\?")),
    (
        "relation",
        re.compile(
            f"Is the {_SHAPE} (?P<value>{_alternatives(RELATION_PHRASES.values())}) "
            f"the (?P<other>{_alternatives(SHAPES)})\\?"
        ),
    ),
    ("background", re.compile(f"Is the background (?P<value>{_alternatives(BACKGROUNDS)})\\?")),
    ("style", re.compile(f"Are the shapes (?P<value>{_alternatives(STYLES)})\\?")),
)
_SINGULAR = {plural_of(shape): shape for shape in SHAPES}
_RELATION_OF_PHRASE = {phrase: relation for relation, phrase in RELATION_PHRASES.items()}


def parse_question(text: str) -> Query:
    """question_text's inverse; QueryError for any other text."""
    for kind, pattern in _PATTERNS:
        match = pattern.fullmatch(text.strip())
        if match is None:
            continue
        found = match.groupdict()
        value = found.get("value")
        return Query(
            kind=kind,
            shape=found.get("shape") or _SINGULAR.get(found.get("shapes")),
            value=_RELATION_OF_PHRASE.get(value, value) if kind == "relation" else value,
            other=found.get("other"),
            count=_NUMBERS[found["count"]] if found.get("count") else None,
            plural=found.get("shapes") is not None and kind != "count",
        )
    raise QueryError(f"not a pocket-world question: {text!r}")
