"""Reading a pocket picture from its pixels alone, and answering the world's questions about it.

Method (numpy and PIL only):
1. A picture of another size is resized to 64x64 with PIL's box filter (area averaging; a
   non-square one is squeezed), so centres and sides are always in the 64-px layout.
2. Background: the median colour of the border ring (objects keep EDGE_MARGIN from the edges),
   named after the nearest vocabulary.BACKGROUNDS colour.
3. Pixels: an anti-aliased pixel is a blend a * C + (1 - a) * B of an object colour C and the
   measured background B (in sRGB, where the renderer's box filter blends). A pixel takes the
   colour whose segment B -> C passes closest (residual distance), if its coverage a on it is at
   least ALPHA_MIN and the residual at most RESIDUAL_MAX; faint edges, noise and foreign colours don't.
4. Objects: 8-connected components per colour (label propagation with pointer jumping); those of
   one colour whose bounding boxes intersect are merged (a broken outline); specks of fewer than
   MIN_PIXELS pixels are dropped. Holes are filled (a 3x3 closing, then all the outside cannot
   reach 4-connectedly), so an outlined shape becomes its silhouette.
5. Shape: the silhouette's box resized to GRID x GRID, compared (soft IoU) with templates drawn
   from render.shape_outline. Best score below MIN_MATCH, or a box aspect above MAX_ASPECT: shape
   None ("unknown"; it counts for style, never as a shape). Size: "large" from the midpoint of
   SIZE_PIXELS (longer box side). Style: "outlined" when the pooled hole fraction of the
   silhouettes (pixels not in their component) is at least OUTLINED_FROM.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from ella_demo.pocket import scenes
from ella_demo.pocket.queries import Query, QueryError, parse_question
from ella_demo.pocket.render import render_array, shape_outline
from ella_demo.pocket.vocabulary import BACKGROUNDS, COLOURS, SHAPES, SIZE_PIXELS, SIZES, STYLES

ALPHA_MIN = 0.35  # least coverage of an object colour for a pixel to belong to an object
RESIDUAL_MAX = 60.0  # largest sRGB distance of a pixel from its colour's blend segment
MIN_PIXELS = 6  # smaller components are specks
GRID = 16  # side of the shape-comparison grid
MIN_MATCH = 0.55  # best soft IoU below which a component's shape is unknown (None)
MAX_ASPECT = 1.5  # longer / shorter box side above which a component's shape is unknown (None)
OUTLINED_FROM = 0.1  # pooled hole fraction from which the picture's style is "outlined"
LARGE_FROM = sum(SIZE_PIXELS.values()) / 2  # box side from which an object is "large"
# Relations, looser than scenes.relation_between's margins: directions need only the dominant axis.
NEXT_TO_MAX_DY = scenes.NEXT_TO_MAX_DY + 3
NEXT_TO_MAX_GAP = scenes.NEXT_TO_MAX_GAP + 4
_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_VALUES = np.array([COLOURS[name] for name in _COLOUR_NAMES], dtype=np.float64)  # (K, 3)
_NEIGHBOURS_8 = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_NEIGHBOURS_4 = ((-1, 0), (0, -1), (0, 1), (1, 0))


@dataclass(frozen=True)
class DetectedObject:
    """One object found in a picture, in 64-px layout coordinates.

    shape: one of SHAPES, or None when it matches no template well (unknown). centre: (x, y) of the
    bounding box's centre (y grows downwards); box: (width, height) in pixels; pixels: the
    component's pixel count; hole: the fraction of its filled silhouette that is not the component
    (0 filled; about 0.3-0.6 outlined, less when blurred); match: the best template's soft IoU; mask: (64, 64) bool.
    """

    shape: str | None
    colour: str
    size: str
    centre: tuple[float, float]
    box: tuple[int, int]
    pixels: int
    hole: float
    match: float
    mask: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class Detection:
    """A picture's content: background colour name, style (None without objects), objects top to bottom."""

    background: str
    style: str | None
    objects: tuple[DetectedObject, ...]

    def of_shape(self, shape: str | None) -> tuple[DetectedObject, ...]:
        """The objects classified as `shape`."""
        return tuple(found for found in self.objects if found.shape == shape)


def detect(image: Image.Image | np.ndarray) -> Detection:
    """Read a picture (PIL image, or uint8 array of shape (H, W, 3)); see the module's docstring for the method."""
    pixels = _layout_pixels(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])  # (4 * 64 - 4, 3)
    background = np.median(border, axis=0)
    named = min(BACKGROUNDS, key=lambda name: float(np.linalg.norm(background - np.array(BACKGROUNDS[name]))))
    classes = _classify_pixels(pixels, background)
    objects, holes, silhouettes = [], 0, 0
    for colour, mask in _merged_components(classes):
        if mask.sum() >= MIN_PIXELS:
            found, filled = _describe(mask, _COLOUR_NAMES[colour])
            objects.append(found)
            holes, silhouettes = holes + filled - found.pixels, silhouettes + filled
    style = None if not objects else STYLES[1] if holes >= OUTLINED_FROM * silhouettes else STYLES[0]
    objects.sort(key=lambda found: (found.centre[1], found.centre[0]))
    return Detection(named, style, tuple(objects))


def _layout_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    """The picture as a float array of shape (64, 64, 3), resized with the box filter if needed."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an array of shape (H, W, 3), got {image.shape}")
        image = Image.fromarray(image.astype(np.uint8))
    image = image.convert("RGB")
    size = (scenes.RESOLUTION, scenes.RESOLUTION)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float64)


def _classify_pixels(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Colour index per pixel, -1 for none: pixels (H, W, 3) float, background (3,) -> (H, W) int."""
    offsets = _COLOUR_VALUES - background  # (K, 3)
    diff = pixels - background  # (H, W, 3)
    alpha = np.clip(diff @ offsets.T / np.maximum((offsets**2).sum(axis=1), 1.0), 0.0, 1.0)  # (H, W, K)
    residual = np.linalg.norm(diff[..., None, :] - alpha[..., None] * offsets, axis=-1)  # (H, W, K)
    best = residual.argmin(axis=-1)  # (H, W)
    chosen = np.take_along_axis(alpha, best[..., None], axis=-1)[..., 0]
    return np.where((chosen >= ALPHA_MIN) & (residual.min(axis=-1) <= RESIDUAL_MAX), best, -1)


def _merged_components(classes: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(colour index, (H, W) bool mask) per object, from classes (H, W) int.

    8-connected components of one colour whose bounding boxes intersect are merged: they are pieces
    of one broken outline, since the renderer keeps scenes.GAP pixels between any two boxes.
    """
    components = _components(classes, _NEIGHBOURS_8)
    pieces = []  # (colour, (top, bottom, left, right) inclusive, mask)
    for index in np.unique(components[components >= 0]):
        mask = components == index
        rows, cols = np.nonzero(mask)
        pieces.append((int(classes[mask][0]), (rows.min(), rows.max(), cols.min(), cols.max()), mask))
    done: list[tuple[int, tuple, np.ndarray]] = []
    while pieces:
        colour, box, mask = pieces.pop()
        partners = [piece for piece in pieces + done if piece[0] == colour and _intersect(box, piece[1])]
        if not partners:
            done.append((colour, box, mask))
            continue
        pieces, done = (
            [piece for piece in group if all(piece is not other for other in partners)] for group in (pieces, done)
        )
        for _, other, other_mask in partners:
            box = (min(box[0], other[0]), max(box[1], other[1]), min(box[2], other[2]), max(box[3], other[3]))
            mask = mask | other_mask
        pieces.append((colour, box, mask))
    return [(colour, mask) for colour, _, mask in done]


def _intersect(one: tuple, two: tuple) -> bool:
    """Whether two (top, bottom, left, right) inclusive boxes share a pixel."""
    return one[0] <= two[1] and two[0] <= one[1] and one[2] <= two[3] and two[2] <= one[3]


def _components(classes: np.ndarray, neighbours: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Connected components of equal non-negative classes (H, W) int -> (H, W) int ids (-1 outside any).

    Each pixel starts with its own flat index, takes the least id among same-class neighbours and
    then its id's id (pointer jumping) until nothing changes: the id is the component's least index.
    """
    height, width = classes.shape
    outside = height * width
    padded = np.pad(classes, 1, constant_values=-1)
    same = [
        (dy, dx, (padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] == classes) & (classes >= 0))
        for dy, dx in neighbours
    ]
    ids = np.where(classes >= 0, np.arange(outside).reshape(height, width), outside)
    while True:
        grown = ids.copy()
        padded_ids = np.pad(ids, 1, constant_values=outside)
        for dy, dx, link in same:
            grown = np.where(
                link, np.minimum(grown, padded_ids[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]), grown
            )
        flat = grown.ravel()
        inside = flat < outside
        flat[inside] = flat[flat[inside]]
        if np.array_equal(grown, ids):
            return np.where(ids < outside, ids, -1)
        ids = grown


def _describe(mask: np.ndarray, colour: str) -> tuple[DetectedObject, int]:
    """One component (mask (64, 64) bool) -> its DetectedObject and its filled silhouette's pixel count."""
    rows, cols = np.nonzero(mask)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    silhouette = _filled(mask[top:bottom, left:right])
    width, height = int(right - left), int(bottom - top)
    shape, match = _classify_shape(silhouette)
    pixels, filled = int(mask.sum()), int(silhouette.sum())
    found = DetectedObject(
        shape=shape,
        colour=colour,
        size=SIZES[1] if max(width, height) >= LARGE_FROM else SIZES[0],
        centre=(float(left + right) / 2, float(top + bottom) / 2),
        box=(width, height),
        pixels=pixels,
        hole=1.0 - pixels / filled,
        match=match,
        mask=mask,
    )
    return found, filled


def _filled(mask: np.ndarray) -> np.ndarray:
    """A component with its holes filled (a 3x3 closing seals gaps of up to 2 px first): (h, w) bool -> same."""
    closed = _erode(_dilate(np.pad(mask, 2)))
    outside = _components(np.where(closed, -1, 0), _NEIGHBOURS_4)
    return (outside != outside[0, 0])[2:-2, 2:-2]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 dilation of a (h, w) bool mask whose border ring is False."""
    out = mask.copy()
    for dy, dx in _NEIGHBOURS_8:
        out |= np.roll(mask, (dy, dx), axis=(0, 1))
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 erosion of a (h, w) bool mask."""
    out = mask.copy()
    for dy, dx in _NEIGHBOURS_8:
        out &= np.roll(mask, (dy, dx), axis=(0, 1))
    return out


@functools.lru_cache(maxsize=1)
def _templates() -> np.ndarray:
    """Coverage of each shape of SHAPES filling a GRID x GRID box, drawn 8x larger: (len(SHAPES), GRID, GRID) float."""
    large = GRID * 8
    maps = []
    for shape in SHAPES:
        canvas = Image.new("L", (large, large), 0)
        ImageDraw.Draw(canvas).polygon(shape_outline(shape, (large / 2, large / 2), large), fill=255)
        maps.append(np.asarray(canvas.resize((GRID, GRID), Image.Resampling.BOX), dtype=np.float64) / 255)
    return np.stack(maps)


def _classify_shape(silhouette: np.ndarray) -> tuple[str | None, float]:
    """(shape or None, best soft IoU) of a filled silhouette cropped to its box: (h, w) bool."""
    height, width = silhouette.shape
    coverage = Image.fromarray(silhouette.astype(np.float32)).resize((GRID, GRID), Image.Resampling.BILINEAR)
    observed = np.asarray(coverage, dtype=np.float64)  # (GRID, GRID)
    templates = _templates()
    scores = np.minimum(templates, observed).sum(axis=(1, 2)) / np.maximum(templates, observed).sum(axis=(1, 2))
    best = int(scores.argmax())
    square_enough = max(height, width) <= MAX_ASPECT * min(height, width)
    return (SHAPES[best] if scores[best] >= MIN_MATCH and square_enough else None), float(scores[best])


def answer(detection: Detection, query: Query) -> bool:
    """The detector's answer to one question.

    entity: some object has the shape. colour / size: at least half of the shape's objects have the
    value (False when there is none). count: exactly `count` objects have the shape. relation: between
    the mean centres of the two shapes' objects (see _holds). background / style: the picture's.
    """
    objects = detection.of_shape(query.shape) if query.shape is not None else ()
    if query.kind == "entity":
        return bool(objects)
    if query.kind in ("colour", "size"):
        agreeing = sum(getattr(found, query.kind) == query.value for found in objects)
        return bool(objects) and 2 * agreeing >= len(objects)
    if query.kind == "count":
        return len(objects) == query.count
    if query.kind == "relation":
        others = detection.of_shape(query.other)
        return bool(objects) and bool(others) and _holds(objects, query.value, others)
    if query.kind == "background":
        return detection.background == query.value
    if query.kind == "style":
        return detection.style == query.value
    raise QueryError(f"unknown question kind {query.kind!r}")


def _holds(subjects: tuple[DetectedObject, ...], predicate: str, objects: tuple[DetectedObject, ...]) -> bool:
    """Whether `subjects` stand in `predicate` to `objects`, from mean box centres (y down).

    "left of": the objects lie further right (dx > 0) and |dx| > |dy|; likewise the other
    directions. "next to": side by side (|dy| <= NEXT_TO_MAX_DY) with at most NEXT_TO_MAX_GAP
    pixels between the boxes; such a pair is also "left of" / "right of" one another.
    """
    first, second = np.mean([found.centre for found in subjects], 0), np.mean([found.centre for found in objects], 0)
    dx, dy = second - first
    if predicate == "next to":
        sides = np.mean([max(found.box) for found in subjects]) + np.mean([max(found.box) for found in objects])
        return bool(abs(dy) <= NEXT_TO_MAX_DY and abs(dx) - sides / 2 <= NEXT_TO_MAX_GAP)
    along, across = (dx, dy) if predicate in ("left of", "right of") else (dy, dx)
    forward = predicate in ("left of", "above")
    return bool((along > 0 if forward else along < 0) and abs(along) > abs(across))


class PocketAnswerer:
    """The answerer interface of dpg.vqa.answer_with_model: `(image, questions) -> ["yes" | "no", ...]`.

    Every question is parsed with queries.parse_question first (QueryError for a foreign text);
    the picture is then read once with detect().
    """

    def __call__(self, image: Image.Image, questions: list[str]) -> list[str]:
        """One "yes" or "no" per question text, in order."""
        parsed = [parse_question(text) for text in questions]
        detection = detect(image)
        return ["yes" if answer(detection, query) else "no" for query in parsed]


def detector_accuracy(
    num_scenes: int, seed: int, distort: Callable[[np.ndarray], np.ndarray] | None = None
) -> dict[str, object]:
    """How often detect() + answer() are right on freshly rendered scenes (held_out alternating False / True).

    Each scene gets true questions (every entity's shape, colour, size, count for groups, every
    relation of scene.relations, background, style) and false ones (wrong colour, wrong size,
    wrong count, an absent shape, the reversed relation, wrong background and style). `distort`
    maps the rendered uint8 (64, 64, 3) array to the one detected (noise, blur).
    Returns {"scenes", "questions", "ms_per_picture", "overall": {"all", "true", "false"},
    "kinds": {kind: {"all", "true", "false", "questions"}}}; accuracies are fractions (nan if no question).
    """
    rng = np.random.default_rng(seed)
    tally: dict[tuple[str, bool], list[int]] = {}
    seconds = 0.0
    for index in range(num_scenes):
        scene = scenes.sample_scene(rng, held_out=bool(index % 2))
        image = render_array(scene)
        image = image if distort is None else distort(image)
        start = time.perf_counter()
        detection = detect(image)
        seconds += time.perf_counter() - start
        for query, truth in labelled_queries(scene, rng):
            right_total = tally.setdefault((query.kind, truth), [0, 0])
            right_total[0] += answer(detection, query) == truth
            right_total[1] += 1
    kinds = {kind: _accuracies(tally, (kind,)) for kind in sorted({kind for kind, _ in tally})}
    overall = _accuracies(tally, tuple(kinds))
    milliseconds = 1000 * seconds / max(num_scenes, 1)
    return dict(
        scenes=num_scenes, questions=overall["questions"], ms_per_picture=milliseconds, overall=overall, kinds=kinds
    )


def _accuracies(tally: dict[tuple[str, bool], list[int]], kinds: tuple[str, ...]) -> dict[str, float]:
    """Accuracy over all, true and false questions of `kinds`, and their number (tally: (kind, truth) -> [right, n])."""

    def part(truths: tuple[bool, ...]) -> tuple[float, int]:
        """(accuracy, number) of the questions whose true answer is in `truths`."""
        right, total = np.sum([tally.get((kind, truth), [0, 0]) for kind in kinds for truth in truths], axis=0)
        return (right / total if total else float("nan")), int(total)

    (everything, total), (true, _), (false, _) = part((True, False)), part((True,)), part((False,))
    return {"all": float(everything), "true": float(true), "false": float(false), "questions": total}


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above", "next to": "above"}


def labelled_queries(scene: scenes.Scene, rng: np.random.Generator) -> list[tuple[Query, bool]]:
    """(question, true answer) pairs about a scene, true and false ones (see detector_accuracy).

    The false relation is the opposite direction; for "next to" it is "above" (the pair is side by side).
    """
    pairs: list[tuple[Query, bool]] = []
    for entity in scene.entities:
        plural = entity.count > 1
        wrong_colour = str(rng.choice([colour for colour in COLOURS if colour != entity.colour]))
        wrong_size = next(size for size in SIZES if size != entity.size)
        wrong_count = int(rng.choice([count for count in (1, 2, 3) if count != entity.count]))
        pairs += [
            (Query("entity", entity.shape), True),
            (Query("colour", entity.shape, entity.colour, plural=plural), True),
            (Query("colour", entity.shape, wrong_colour, plural=plural), False),
            (Query("size", entity.shape, entity.size, plural=plural), True),
            (Query("size", entity.shape, wrong_size, plural=plural), False),
            (Query("count", entity.shape, count=wrong_count), False),
        ]
        if plural:
            pairs.append((Query("count", entity.shape, count=entity.count), True))
    present = {entity.shape for entity in scene.entities}
    pairs.append((Query("entity", str(rng.choice([shape for shape in SHAPES if shape not in present]))), False))
    for relation in scene.relations:
        subject, other = scene.entities[relation.subject].shape, scene.entities[relation.object].shape
        pairs.append((Query("relation", subject, relation.predicate, other), True))
        pairs.append((Query("relation", subject, _OPPOSITE[relation.predicate], other), False))
    wrong_background = str(rng.choice([name for name in BACKGROUNDS if name != scene.background]))
    wrong_style = next(style for style in STYLES if style != scene.style)
    pairs += [(Query("background", value=scene.background), True), (Query("background", value=wrong_background), False)]
    pairs += [(Query("style", value=scene.style), True), (Query("style", value=wrong_style), False)]
    return pairs
