"""Captions of pocket scenes: a small closed grammar in the dense style of DPG-Bench prompts, and the prompt sets.

A caption names every entity (count, size, colour, shape), the background colour, the style, and a random
non-empty subset of the scene's relations (each once), through one of TEMPLATES and, per entity, one of the
noun-phrase forms (adjectives before the noun, or some after it: "a large circle in red", "a red circle of
large size"). Its words come from the fixed strings of this module and vocabulary.py only, so
`training_vocabulary()` is every word a training caption can hold. `paraphrase=True` swaps every visual
word for one of its vocabulary.PARAPHRASES.

Seeds: every function draws from a numpy Generator the caller seeds. Convention: training captions draw from
`training_rng(seed)` = default_rng([TRAINING_STREAM, seed]); the prompt set number i of PROMPT_SETS in
`prompt_sets(seed, ...)` draws from default_rng([EVALUATION_STREAM, seed, i]). The first entropy word differs,
so no evaluation stream is a training stream (numpy ignores trailing zero words: default_rng(0) is
default_rng([0, 0]), hence the leading stream word rather than a trailing one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ella_demo.pocket.queries import RELATION_PHRASES, plural_of
from ella_demo.pocket.scenes import Entity, Relation, Scene, sample_scene, shape_swapped
from ella_demo.pocket.vocabulary import BACKGROUNDS, COLOURS, COUNT_WORDS, PARAPHRASES, SHAPES, SIZES, STYLES

TRAINING_STREAM = 0
EVALUATION_STREAM = 1
PROMPT_SETS = ("seen", "unseen_combinations", "paraphrase")

ARTICLES = ("a", "an")
LIST_LINK = " and "
RELATION_VERBS = ("is", "sits", "lies", "stands")
RELATION_CLAUSE = "the {subject} {verb} {relation} the {object}"
# After the determiner ("a", "two"): the entity's words without the style, and with it (for styled templates).
NOUN_FORMS = ("{size} {colour} {shape}", "{size} {shape} in {colour}", "{colour} {shape} of {size} size")
STYLED_NOUN_FORMS = (
    "{size} {style} {colour} {shape}",
    "{size} {colour} {style} {shape}",
    "{style} {size} {colour} {shape}",
    "{size} {style} {shape} in {colour}",
    "{colour} {style} {shape} of {size} size",
)
# Number agreement words: (singular, plural).
BE = ("is", "are")
SHAPES_ARE = ("the shape is", "the shapes are")
ALL_STYLE = ("{style}", "all {style}")


@dataclass(frozen=True)
class Template:
    """A caption form. `text` fields: {a_bg} ("a black"), {bg}, {entities} (every entity, maybe with one relation
    folded in), {style}, {a_style} ("an outlined"), {all_style} ("all outlined"), {be}, {shapes_are}.

    styled: every entity's noun phrase holds the style; verb_fold: a folded relation reads "X sits above Y"
    (else "X above Y"); relation_link: what joins the relation clauses that were not folded in.
    """

    name: str
    text: str
    styled: bool
    verb_fold: bool
    relation_link: str


TEMPLATES = (
    Template("background_first", "on {a_bg} background, {entities}, {all_style}", False, True, ". "),
    Template("list_first", "{entities}, {all_style}, on {a_bg} background", False, False, "; "),
    Template("picture_with", "{a_bg} picture with {entities}", True, False, ". "),
    Template("there_is", "there {be} {entities} on {a_bg} background, drawn {style}", False, False, ". "),
    Template("drawing", "{a_style} drawing on {a_bg} background: {entities}", False, False, "; "),
    Template("background_is", "the background is {bg} and {shapes_are} {style}: {entities}", False, True, ". "),
    Template("shown_on", "{entities} {be} shown on {a_bg} background", True, False, ", and "),
)


@dataclass(frozen=True)
class PocketPrompt:
    """A caption of `scene`. relations: the scene relations the text states, in the text's order.

    wording: (training word, word the text uses) for each visual word of the scene (the same word unless
    paraphrased); template: the TEMPLATES name used.
    """

    text: str
    scene: Scene
    relations: tuple[Relation, ...]
    wording: tuple[tuple[str, str], ...]
    template: str
    paraphrased: bool = False

    def surface(self, training_word: str) -> str:
        """The word the text uses for a training word of the scene (e.g. "red" -> "crimson")."""
        return dict(self.wording)[training_word]


def training_rng(seed: int) -> np.random.Generator:
    """The generator training captions draw from (see the module docstring)."""
    return np.random.default_rng([TRAINING_STREAM, seed])


def training_example(rng: np.random.Generator) -> PocketPrompt:
    """A training caption: a scene of the training distribution (no held-out pair), in training words."""
    return describe(sample_scene(rng, held_out=False), rng)


def training_example_with_shape_negative(rng: np.random.Generator) -> tuple[PocketPrompt, PocketPrompt]:
    """A training caption, and the caption of its scene with one shape changed (scenes.shape_swapped) in the same
    wording: the two texts differ only in shape words, so only a text tower that reads shapes tells them apart."""
    negative = None
    while negative is None:  # the rare scene with no qualifying shape change is drawn again
        scene = sample_scene(rng, held_out=False)
        negative = shape_swapped(scene, rng)
    wording_seed = int(rng.integers(2**63))
    return describe(scene, np.random.default_rng(wording_seed)), describe(negative, np.random.default_rng(wording_seed))


def prompt_sets(seed: int, sizes: Mapping[str, int]) -> dict[str, list[PocketPrompt]]:
    """Held-out evaluation prompts, deterministic for a seed: set name (of PROMPT_SETS) -> `sizes[name]` prompts.

    "seen": training-distribution scenes in training words; "unseen_combinations": scenes holding at least
    one HELD_OUT_PAIRS (colour, shape), in training words; "paraphrase": training-distribution scenes in
    paraphrase words. Sets missing from `sizes` are left out.
    """
    unknown = set(sizes) - set(PROMPT_SETS)
    if unknown:
        raise ValueError(f"unknown prompt set(s) {sorted(unknown)}; expected some of {PROMPT_SETS}")
    sets = {}
    for index, name in enumerate(PROMPT_SETS):
        if name in sizes:
            rng = np.random.default_rng([EVALUATION_STREAM, seed, index])
            held_out, paraphrase = name == "unseen_combinations", name == "paraphrase"
            sets[name] = [
                describe(sample_scene(rng, held_out=held_out), rng, paraphrase=paraphrase) for _ in range(sizes[name])
            ]
    return sets


def describe(scene: Scene, rng: np.random.Generator, paraphrase: bool = False) -> PocketPrompt:
    """A random caption of `scene`; paraphrase=True uses a random paraphrase of every visual word."""
    wording = _wording(scene, rng, paraphrase)
    words = dict(wording)
    template = _pick(rng, TEMPLATES)
    relations = _stated_relations(scene, rng)
    folded = _folded_relation(scene, relations, rng)
    entities = _entities_text(scene, words, template, folded, rng)
    clauses = [_relation_clause(scene, relation, words, rng) for relation in relations if relation != folded]
    style, background = words[scene.style], words[scene.background]
    plural = _objects_in_intro(scene, folded) > 1
    text = template.text.format(
        a_bg=_with_article(background),
        bg=background,
        entities=entities,
        style=style,
        a_style=_with_article(style),
        all_style=ALL_STYLE[sum(entity.count for entity in scene.entities) > 1].format(style=style),
        be=BE[plural],
        shapes_are=SHAPES_ARE[len(scene.entities) > 1 or scene.entities[0].count > 1],
    )
    if clauses:
        text += template.relation_link + _joined(clauses)
    return PocketPrompt(_sentence_case(text + "."), scene, relations, wording, template.name, paraphrase)


def training_vocabulary() -> set[str]:
    """Every word a training caption (paraphrase=False) can contain, lower-case, from the grammar's word lists."""
    fixed = [template.text for template in TEMPLATES]
    fixed += [*ARTICLES, LIST_LINK, *RELATION_VERBS, RELATION_CLAUSE, *NOUN_FORMS, *STYLED_NOUN_FORMS]
    fixed += [*BE, *SHAPES_ARE, *ALL_STYLE, *RELATION_PHRASES.values()]
    group_counts = [word for number, word in COUNT_WORDS.items() if number >= 2]
    visual = [*COLOURS, *SHAPES, *map(plural_of, SHAPES), *SIZES, *STYLES, *BACKGROUNDS, *group_counts]
    return {word for text in fixed + visual for word in words_of(re.sub(r"\{\w+\}", " ", text))}


def words_of(text: str) -> list[str]:
    """The lower-case words of a text, punctuation left out."""
    return re.findall(r"[a-z]+", text.lower())


def _wording(scene: Scene, rng: np.random.Generator, paraphrase: bool) -> tuple[tuple[str, str], ...]:
    """(training word, surface word) for the scene's visual words, in sorted order."""
    used = {scene.background, scene.style}
    for entity in scene.entities:
        used |= {entity.shape, entity.colour, entity.size}
    return tuple((word, _pick(rng, PARAPHRASES[word]) if paraphrase else word) for word in sorted(used))


def _stated_relations(scene: Scene, rng: np.random.Generator) -> tuple[Relation, ...]:
    """A random non-empty subset of the scene's relations (none if it has none), in a random order."""
    if not scene.relations:
        return ()
    number = int(rng.integers(1, len(scene.relations) + 1))
    chosen = rng.choice(len(scene.relations), size=number, replace=False)
    return tuple(scene.relations[int(index)] for index in chosen)


def _folded_relation(scene: Scene, relations: tuple[Relation, ...], rng: np.random.Generator) -> Relation | None:
    """Half the time, a stated relation between the scene's only two entities, to fold into the entity list."""
    if len(scene.entities) == 2 and relations and rng.random() < 0.5:
        return relations[0]
    return None


def _objects_in_intro(scene: Scene, folded: Relation | None) -> int:
    """How many objects the grammatical subject of the entity list stands for (a folded relation's subject: one)."""
    if folded is not None:
        return 1
    return 2 if len(scene.entities) > 1 else scene.entities[0].count


def _entities_text(
    scene: Scene, words: dict[str, str], template: Template, folded: Relation | None, rng: np.random.Generator
) -> str:
    """Every entity's noun phrase: in random order joined as a list, or as "X [verb] <relation> Y" when folded."""
    style = words[scene.style] if template.styled else None
    if folded is not None:
        subject = _noun_phrase(scene.entities[folded.subject], words, style, rng)
        obj = _noun_phrase(scene.entities[folded.object], words, style, rng)
        relation = RELATION_PHRASES[folded.predicate]
        if template.verb_fold:
            relation = f"{_pick(rng, RELATION_VERBS)} {relation}"
        return f"{subject} {relation} {obj}"
    order = rng.permutation(len(scene.entities))
    return _joined([_noun_phrase(scene.entities[int(index)], words, style, rng) for index in order])


def _noun_phrase(entity: Entity, words: dict[str, str], style: str | None, rng: np.random.Generator) -> str:
    """The entity with its determiner: "a large red circle", "two small outlined squares in blue"."""
    form = _pick(rng, NOUN_FORMS if style is None else STYLED_NOUN_FORMS)
    shape = words[entity.shape] if entity.count == 1 else plural_of(words[entity.shape])
    phrase = form.format(size=words[entity.size], colour=words[entity.colour], shape=shape, style=style)
    return _with_article(phrase) if entity.count == 1 else f"{COUNT_WORDS[entity.count]} {phrase}"


def _relation_clause(scene: Scene, relation: Relation, words: dict[str, str], rng: np.random.Generator) -> str:
    """ "the circle sits to the left of the square" (relations hold between single objects only)."""
    return RELATION_CLAUSE.format(
        subject=words[scene.entities[relation.subject].shape],
        verb=_pick(rng, RELATION_VERBS),
        relation=RELATION_PHRASES[relation.predicate],
        object=words[scene.entities[relation.object].shape],
    )


def _with_article(phrase: str) -> str:
    """ "an" before a vowel letter ("an amber", "an outlined"), else "a": right for every pocket word."""
    return f"{ARTICLES[phrase[0] in 'aeiou']} {phrase}"


def _joined(parts: list[str]) -> str:
    """ "x", "x and y", "x, y and z"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + LIST_LINK + parts[-1]


def _sentence_case(text: str) -> str:
    """Capital letters at the start and after each full stop."""
    return re.sub(r"(^|\. )([a-z])", lambda match: match.group(1) + match.group(2).upper(), text)


def _pick(rng: np.random.Generator, options):
    """One of `options`, uniformly (as its own Python type, not a numpy scalar)."""
    return options[int(rng.integers(len(options)))]
