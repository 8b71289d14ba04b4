"""The pocket world's pixel detector: reading rendered scenes back, answering questions, robustness."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from ella_demo.pocket.detector import PocketAnswerer, answer, detect, detector_accuracy, labelled_queries
from ella_demo.pocket.queries import KINDS, Query, QueryError, question_text
from ella_demo.pocket.render import render, render_array
from ella_demo.pocket.scenes import Entity, Scene, relations_of
from ella_demo.pocket.vocabulary import BACKGROUNDS, COLOURS, RELATIONS, SHAPES, SIZE_PIXELS, SIZES, STYLES


def make_scene(
    entities: list[tuple[str, str, str, list[tuple[int, int]]]], background="white", style="filled"
) -> Scene:
    """A scene from (shape, colour, size, centres) entities, with the generator's relations."""
    built = tuple(Entity(shape, colour, size, tuple(centres)) for shape, colour, size, centres in entities)
    return Scene(background, style, built, relations_of(built))


def assert_found(found, shape: str, colour: str, size: str, centre: tuple[int, int], slack: int = 1) -> None:
    """The detected object has these attributes, its centre and box side within `slack` pixels."""
    assert (found.shape, found.colour, found.size) == (shape, colour, size)
    assert abs(found.centre[0] - centre[0]) <= slack and abs(found.centre[1] - centre[1]) <= slack, found.centre
    assert abs(max(found.box) - SIZE_PIXELS[size]) <= slack, found.box


def check_accuracy(report: dict, floor: float) -> None:
    """Every kind of KINDS was asked both true and false questions, and each tally reaches `floor`."""
    assert set(report["kinds"]) == set(KINDS)
    for name, tally in [("overall", report["overall"]), *report["kinds"].items()]:
        for part in ("all", "true", "false"):
            assert tally[part] >= floor, (name, part, tally)


def test_accuracy_on_held_out_scenes_is_high_for_every_kind_and_fast():
    report = detector_accuracy(300, seed=11)
    assert report["scenes"] == 300 and report["questions"] > 300 * 10
    check_accuracy(report, 0.98)
    assert report["ms_per_picture"] < 20


def test_accuracy_counts_wrong_answers():
    """A detector that sees nothing (a blank picture every time) scores badly: the measure can fail."""
    report = detector_accuracy(40, seed=3, distort=lambda image: np.full_like(image, 125))
    assert report["overall"]["all"] < 0.7
    assert report["overall"]["true"] < 0.3


def test_labelled_queries_hold_true_and_false_questions_of_every_kind():
    rng = np.random.default_rng(0)
    scene = make_scene(
        [("circle", "red", "small", [(12, 32)]), ("square", "blue", "large", [(48, 32)])], "gray", "outlined"
    )
    pairs = labelled_queries(scene, rng)
    assert {(query.kind, truth) for query, truth in pairs} >= {(kind, False) for kind in KINDS}
    assert (Query("relation", "circle", "left of", "square"), True) in pairs
    assert (Query("relation", "circle", "right of", "square"), False) in pairs
    assert (Query("background", value="gray"), True) in pairs


@pytest.mark.parametrize("shape, style", list(itertools.product(SHAPES, STYLES)))
def test_detect_finds_each_shape_in_each_style_size_and_background(shape, style):
    for index, (background, size) in enumerate(itertools.product(BACKGROUNDS, SIZES)):
        colour = list(COLOURS)[(index + SHAPES.index(shape)) % len(COLOURS)]
        centre = (20 + 4 * index, 40 - 3 * index)
        detection = detect(render(make_scene([(shape, colour, size, [centre])], background, style)))
        assert (detection.background, detection.style, len(detection.objects)) == (background, style, 1)
        assert_found(detection.objects[0], shape, colour, size, centre)


@pytest.mark.parametrize("background", list(BACKGROUNDS))
def test_detect_tells_every_colour_apart_on_every_background(background):
    entities = [
        (shape, colour, "small", [(10 + 22 * (index % 3), 16 + 30 * (index // 3))])
        for index, (shape, colour) in enumerate(zip(SHAPES * 2, COLOURS, strict=False))
    ]
    for style in STYLES:
        detection = detect(render_array(make_scene(entities, background, style)))
        assert (detection.background, detection.style) == (background, style)
        found = {(item.colour, item.shape) for item in detection.objects}
        assert found == {(colour, shape) for shape, colour, _, _ in entities}


def test_groups_are_counted():
    scene = make_scene(
        [("square", "red", "small", [(10, 10), (30, 10), (50, 10)]), ("circle", "blue", "large", [(32, 44)])]
    )
    detection = detect(render(scene))
    assert len(detection.of_shape("square")) == 3 and len(detection.of_shape("circle")) == 1
    assert answer(detection, Query("count", "square", count=3))
    assert not answer(detection, Query("count", "square", count=2))
    assert answer(detection, Query("count", "circle", count=1))
    assert not answer(detection, Query("count", "triangle", count=1))
    assert answer(detection, Query("colour", "square", "red", plural=True))
    assert not answer(detection, Query("colour", "square", "blue", plural=True))
    assert answer(detection, Query("size", "circle", "large")) and not answer(
        detection, Query("size", "circle", "small")
    )


def relation_answers(first: tuple[int, int], second: tuple[int, int], size: str = "small") -> set[str]:
    """The relations the detector finds from a circle at `first` to a square at `second`."""
    detection = detect(render(make_scene([("circle", "red", size, [first]), ("square", "green", size, [second])])))
    return {predicate for predicate in RELATIONS if answer(detection, Query("relation", "circle", predicate, "square"))}


def test_relations_follow_the_dominant_axis_and_next_to_is_side_by_side_and_close():
    assert relation_answers((12, 30), (50, 34)) == {"left of"}
    assert relation_answers((50, 30), (12, 30)) == {"right of"}
    assert relation_answers((30, 10), (34, 50)) == {"above"}
    assert relation_answers((30, 50), (30, 10)) == {"below"}
    assert relation_answers((20, 30), (38, 32)) == {"left of", "next to"}
    assert relation_answers((44, 30), (20, 36), "large") == {"right of", "next to"}
    # Looser than the generator: no margin-clear relation here, but the horizontal offset dominates.
    scene = make_scene([("circle", "red", "small", [(20, 20)]), ("square", "green", "small", [(36, 29)])])
    assert scene.relations == ()
    assert relation_answers((20, 20), (36, 29)) == {"left of"}


def test_answerer_replies_yes_or_no_to_question_texts():
    scene = make_scene(
        [("triangle", "yellow", "large", [(16, 40)]), ("cross", "purple", "small", [(48, 40)])], "black", "outlined"
    )
    questions = {
        "Is there a triangle?": "yes",
        "Is there a circle?": "no",
        "Is the triangle yellow?": "yes",
        "Is the cross purple?": "yes",
        "Is the cross large?": "no",
        "Are there two crosses?": "no",
        "Is the triangle to the left of the cross?": "yes",
        "Is the triangle above the cross?": "no",
        "Is the background black?": "yes",
        "Is the background white?": "no",
        "Are the shapes outlined?": "yes",
        "Are the shapes filled?": "no",
        question_text(Query("relation", "cross", "right of", "triangle")): "yes",
    }
    assert PocketAnswerer()(render(scene), list(questions)) == list(questions.values())


def test_blank_picture_has_no_objects():
    blank = Image.new("RGB", (64, 64), BACKGROUNDS["gray"])
    detection = detect(blank)
    assert (detection.background, detection.style, detection.objects) == ("gray", None, ())
    questions = [f"Is there a {shape}?" for shape in SHAPES] + ["Are the shapes filled?", "Is the background gray?"]
    assert PocketAnswerer()(blank, questions) == ["no"] * (len(SHAPES) + 1) + ["yes"]


def test_foreign_question_raises_query_error():
    with pytest.raises(QueryError):
        PocketAnswerer()(Image.new("RGB", (64, 64)), ["Is there a circle?", "What colour is the sky?"])


def test_other_resolutions_are_read_in_the_64_px_layout():
    entities = [("cross", "orange", "large", [(40, 22)]), ("circle", "blue", "small", [(14, 50)])]
    for style, resolution in itertools.product(STYLES, (48, 128)):
        detection = detect(render(make_scene(entities, "gray", style), resolution))
        assert (len(detection.objects), detection.background, detection.style) == (2, "gray", style)
        # Resizing from 48 px smears edges over a further pixel.
        assert_found(detection.of_shape("cross")[0], "cross", "orange", "large", (40, 22), slack=2)
        assert_found(detection.of_shape("circle")[0], "circle", "blue", "small", (14, 50), slack=2)


def test_a_shape_matching_no_template_is_unknown():
    picture = Image.new("RGB", (64, 64), BACKGROUNDS["white"])
    ImageDraw.Draw(picture).rectangle((10, 30, 40, 35), fill=COLOURS["green"])
    detection = detect(picture)
    assert [(item.shape, item.colour) for item in detection.objects] == [(None, "green")]
    assert PocketAnswerer()(picture, [f"Is there a {shape}?" for shape in SHAPES]) == ["no"] * len(SHAPES)


def test_noisy_and_blurred_pictures_are_still_read():
    noise = np.random.default_rng(5)

    def noisy(image: np.ndarray) -> np.ndarray:
        return np.clip(image + noise.normal(0, 8, image.shape), 0, 255).astype(np.uint8)

    def blurred(image: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(0.8)))

    for distort in (noisy, blurred):
        check_accuracy(detector_accuracy(60, seed=21, distort=distort), 0.95)
