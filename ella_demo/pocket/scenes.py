"""Pocket scenes: what a picture holds (entities, their positions, background, style), and sampling them.

A scene has 1-3 entities of distinct shapes (so "the circle" names one entity); an entity is one
object, or a group of two or three identical objects ("two red circles"); at most 4 objects in all.
Positions are bounding-box centres in pixels of the 64x64 picture (y grows downwards). Relations are
derived from positions, between single-object entities, and only where they hold with a margin, so
that a detector reading the picture agrees with them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ella_demo.pocket.vocabulary import BACKGROUNDS, COLOURS, HELD_OUT_PAIRS, SHAPES, SIZE_PIXELS, SIZES, STYLES

RESOLUTION = 64
MAX_OBJECTS = 4
EDGE_MARGIN = 2  # pixels between a bounding box and the picture's edge
GAP = 3  # pixels at least between two bounding boxes
# A directional relation is stated when the offset on its axis is at least this many pixels and at
# least DOMINANCE times the offset on the other axis.
MIN_OFFSET = 14
DOMINANCE = 2.0
# "next to": side by side (vertical offset at most NEXT_TO_MAX_DY) with at most NEXT_TO_MAX_GAP pixels between boxes.
NEXT_TO_MAX_DY = 5
NEXT_TO_MAX_GAP = 8
# The chance of keeping a layout in which some pair of single objects has no margin-clear relation.
UNRELATED_LAYOUT_CHANCE = 0.2


@dataclass(frozen=True)
class Entity:
    """`count` identical objects: one shape, colour and size; centres[i] = (x, y) of object i in pixels."""

    shape: str
    colour: str
    size: str
    centres: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return len(self.centres)


@dataclass(frozen=True)
class Relation:
    """entities[subject] is `predicate` (one of vocabulary.RELATIONS) entities[object]."""

    subject: int
    predicate: str
    object: int


@dataclass(frozen=True)
class Scene:
    """A picture's content. `relations` holds every relation that holds with a margin (see relations_of)."""

    background: str
    style: str
    entities: tuple[Entity, ...]
    relations: tuple[Relation, ...]


def relation_between(first: tuple[int, int], second: tuple[int, int], sizes: tuple[int, int]) -> str | None:
    """The relation `first` stands in to `second` (centres in pixels, box sides `sizes`), if one holds with a margin.

    "next to" wins over "left of"/"right of" when the two are side by side and close.
    """
    dx, dy = second[0] - first[0], second[1] - first[1]
    gap = abs(dx) - (sizes[0] + sizes[1]) / 2
    if abs(dy) <= NEXT_TO_MAX_DY and gap <= NEXT_TO_MAX_GAP:
        return "next to"
    if abs(dx) >= MIN_OFFSET and abs(dx) >= DOMINANCE * abs(dy):
        return "left of" if dx > 0 else "right of"
    if abs(dy) >= MIN_OFFSET and abs(dy) >= DOMINANCE * abs(dx):
        return "above" if dy > 0 else "below"
    return None


def relations_of(entities: tuple[Entity, ...]) -> tuple[Relation, ...]:
    """Every margin-clear relation between two single-object entities, the lower index as subject."""
    found = []
    for first in range(len(entities)):
        for second in range(first + 1, len(entities)):
            a, b = entities[first], entities[second]
            if a.count == 1 and b.count == 1:
                sizes = (SIZE_PIXELS[a.size], SIZE_PIXELS[b.size])
                predicate = relation_between(a.centres[0], b.centres[0], sizes)
                if predicate is not None:
                    found.append(Relation(first, predicate, second))
    return tuple(found)


def sample_scene(rng: np.random.Generator, held_out: bool = False, max_entities: int = 3) -> Scene:
    """A random scene. held_out=False never uses a HELD_OUT_PAIRS (colour, shape); True uses at least one."""
    kinds = _sample_kinds(rng, held_out, max_entities)
    while True:
        entities = _placed_entities(kinds, rng)
        if entities is None:
            continue
        relations = relations_of(entities)
        singles = sum(entity.count == 1 for entity in entities)
        # Prefer layouts where every pair of single objects has a relation: captions then state more of them.
        if len(relations) == singles * (singles - 1) // 2 or rng.random() < UNRELATED_LAYOUT_CHANCE:
            break
    background = str(rng.choice(list(BACKGROUNDS)))
    style = str(rng.choice(STYLES))
    return Scene(background, style, entities, relations)


def shape_swapped(scene: Scene, rng: np.random.Generator) -> Scene | None:
    """The scene with one shape changed and nothing else: one entity takes a shape no other entity has, or two
    entities trade shapes ("red circle, blue square" -> "red square, blue circle"). Never makes a HELD_OUT_PAIRS
    (colour, shape). Positions, and so relations, stay: a caption of it drawn with the same random state differs
    from the scene's only in shape words (a hard negative for the pocket CLIP). None where no change qualifies
    (e.g. three small purple circles, squares and crosses: the free triangle would make a held-out pair)."""
    shapes = [entity.shape for entity in scene.entities]
    options = [{index: shape} for index in range(len(shapes)) for shape in SHAPES if shape not in shapes]
    # Trading shapes changes the scene's meaning only between entities that differ in something but shape.
    looks = [(entity.colour, entity.size, entity.count) for entity in scene.entities]
    options += [{first: shapes[second], second: shapes[first]}
                for first in range(len(shapes)) for second in range(first + 1, len(shapes))
                if looks[first] != looks[second]]  # fmt: skip
    colours = [entity.colour for entity in scene.entities]
    allowed = [option for option in options
               if all((colours[index], shape) not in HELD_OUT_PAIRS for index, shape in option.items())]  # fmt: skip
    if not allowed:
        return None
    changes = allowed[int(rng.integers(len(allowed)))]
    entities = tuple(
        replace(entity, shape=changes.get(index, entity.shape)) for index, entity in enumerate(scene.entities)
    )
    return replace(scene, entities=entities)


def _placed_entities(kinds: list[tuple[str, str, str, int]], rng: np.random.Generator) -> tuple[Entity, ...] | None:
    centres = _place([SIZE_PIXELS[size] for _, _, size, count in kinds for _ in range(count)], rng)
    if centres is None:
        return None
    entities, used = [], 0
    for shape, colour, size, count in kinds:
        entities.append(Entity(shape, colour, size, tuple(centres[used : used + count])))
        used += count
    return tuple(entities)


def _sample_kinds(rng: np.random.Generator, held_out: bool, max_entities: int) -> list[tuple[str, str, str, int]]:
    """(shape, colour, size, count) per entity: distinct shapes, at most MAX_OBJECTS objects."""
    number = int(rng.integers(1, max_entities + 1))
    shapes = [str(shape) for shape in rng.choice(SHAPES, size=number, replace=False)]
    kinds, objects = [], 0
    for index, shape in enumerate(shapes):
        room = MAX_OBJECTS - objects - (number - index - 1)
        count = 1 if room < 2 or rng.random() < 0.7 else int(rng.integers(2, min(3, room) + 1))
        kinds.append((shape, _sample_colour(rng, shape, held_out and index == 0), str(rng.choice(SIZES)), count))
        objects += count
    return kinds


def _sample_colour(rng: np.random.Generator, shape: str, must_be_held_out: bool) -> str:
    held = [colour for colour, held_shape in HELD_OUT_PAIRS if held_shape == shape]
    if must_be_held_out and held:
        return str(rng.choice(held))
    allowed = [colour for colour in COLOURS if (colour, shape) not in HELD_OUT_PAIRS]
    return str(rng.choice(allowed))


def _place(sides: list[int], rng: np.random.Generator, tries: int = 200) -> list[tuple[int, int]] | None:
    """Centres for boxes of the given sides, inside the picture and GAP apart; None if none was found."""
    centres: list[tuple[int, int]] = []
    for side in sides:
        low, high = EDGE_MARGIN + side // 2, RESOLUTION - EDGE_MARGIN - (side - side // 2)
        for _ in range(tries):
            centre = (int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1)))
            if all(_apart(centre, side, other, other_side) for other, other_side in zip(centres, sides, strict=False)):
                centres.append(centre)
                break
        else:
            return None
    return centres


def _apart(first: tuple[int, int], first_side: int, second: tuple[int, int], second_side: int) -> bool:
    reach = (first_side + second_side) / 2 + GAP
    return abs(first[0] - second[0]) >= reach or abs(first[1] - second[1]) >= reach
