"""The Learn lessons: each runs on the pocket preset and produces its figures and numbers; options are checked."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ella_demo import generate
from ella_demo.cli import main
from ella_demo.core.errors import GenerationCancelledError, InputError
from ella_demo.core.settings import SettingsError, default_guidance
from ella_demo.inspect.figures import to_image
from ella_demo.inspect.lesson_figures import prompt_cut_figure
from ella_demo.learn import LESSONS, LessonOptions, run_lesson
from ella_demo.learn.binding import swapped_twin
from ella_demo.learn.handout import write_handout
from ella_demo.learn.long_prompts import named_only_after
from ella_demo.learn.measure import requested_objects, shows_colour
from ella_demo.learn.switching import recoloured, switch_steps
from ella_demo.loading.models import load_models

FAST = LessonOptions(seeds=2, steps=10)
FIGURES = {
    "pieces": {"pipeline", "connector_queries", "word_maps"},
    "bag_of_words": {"grid", "binding"},
    "long_prompts": {"cut", "pictures", "late_objects"},
    "when_a_word_matters": {"pictures", "timing"},
    "timestep_aware": {"pictures", "drawn_as_asked"},
}


@pytest.fixture(scope="module")
def pocket():
    return load_models("pocket")


@pytest.fixture(scope="module")
def lessons(pocket):
    """Every lesson, run once on the shipped pocket world."""
    return {name: run_lesson(pocket, name, FAST) for name in LESSONS}


def test_every_lesson_is_listed_with_its_expected_figures():
    assert set(LESSONS) == set(FIGURES)


@pytest.mark.parametrize("name", list(FIGURES))
def test_each_lesson_runs_on_pocket_with_figures_measured_numbers_and_text(lessons, name):
    result = lessons[name]
    assert set(result.figures) == FIGURES[name]
    for image in result.figures.values():
        pixels = np.asarray(image)
        assert image.width >= 400 and image.height >= 200 and pixels.std() > 5  # drawn, not blank
    assert result.evidence.kind == "measured" and result.evidence.text
    assert len(re.findall(r"[.!?](?:\s|$)", result.look_for)) in (2, 3)  # two or three sentences
    assert result.settings == {"num_inference_steps": 10, "guidance_scale": default_guidance("pocket"), "seed": 0,
                               "seeds": 2, "preset": "pocket"}  # fmt: skip
    json.dumps(result.as_json())


def test_the_pieces_lesson_reads_its_shapes_from_the_run(lessons, pocket):
    result = lessons["pieces"]
    run = result.run
    steps, _, _, queries, keys = run.trace.tsc_attention.shape
    shapes = result.numbers["shapes"]
    assert f"latents {tuple(run.latents['ella'].shape)}" in shapes["unet"] and f"{steps} steps" in shapes["unet"]
    assert f"out (1, {queries}, {pocket.ella.config.width})" in shapes["connector"]
    assert f"features (1, {keys - queries}, 384)" in shapes["t5"]  # MiniLM's width, as the run read it
    assert set(result.numbers["block_views"]) == {"prompt", "t5", "clip", "connector", "unet", "vae"}


def test_the_bag_of_words_rates_count_every_picture_of_both_prompts(lessons):
    numbers = lessons["bag_of_words"].numbers
    assert numbers["asked"] == {"prompt": [["red", "square"], ["blue", "circle"]],
                                "twin": [["blue", "square"], ["red", "circle"]]}  # fmt: skip
    for side in ("clip", "ella"):
        for prompt in ("prompt", "twin"):
            rates = numbers["binding"][side][prompt]
            assert rates["every pair"]["of"] == 2 and rates["pairs found"]["of"] == 4
            assert 2 * rates["every pair"]["hits"] <= rates["pairs found"]["hits"]  # each such picture has both


def test_the_long_prompt_lesson_marks_clips_cut_and_the_language_model_keeps_everything(lessons):
    numbers = lessons["long_prompts"].numbers
    assert numbers["clip_dropped_tokens"] > 0 and numbers["clip_tokens"] == 77 + numbers["clip_dropped_tokens"]
    assert numbers["prompt"].endswith(numbers["clip_dropped_text"]) and "blue square" in numbers["clip_dropped_text"]
    assert numbers["language_model_dropped_tokens"] == 0
    assert numbers["after_the_cut"] == [["blue", "square"]]


def test_the_switch_lesson_at_k_zero_measures_what_prompt_b_alone_draws(lessons, pocket):
    """The k=0 entry is prompt B alone; recomputing it from plain runs of prompt B must give the same rate."""
    numbers = lessons["when_a_word_matters"].numbers
    assert numbers["switch_steps"] == [0, 2, 4, 6, 8, 10]
    colour = numbers["pictures_with_colour_a"]["colour"]
    for side in ("clip", "ella"):
        alone = [generate(pocket, numbers["prompt_b"], seed=seed, num_inference_steps=10,
                          guidance_scale=default_guidance("pocket")) for seed in numbers["seeds"]]  # fmt: skip
        expected = np.mean([shows_colour(getattr(result, f"{side}_images")[0], colour) for result in alone])
        assert numbers["pictures_with_colour_a"][side][0] == expected


def test_the_timestep_lesson_measures_every_variant_on_every_seed(lessons):
    measured = lessons["timestep_aware"].numbers["drawn_as_asked"]
    assert list(measured) == ["real", "fixed 999", "fixed 500", "fixed 100"]
    assert all(values["colour"]["of"] == 2 for values in measured.values())


def test_the_timestep_lessons_real_variant_is_a_plain_run_and_a_fixed_one_differs(tiny):
    result = run_lesson(tiny, "timestep_aware", LessonOptions(seeds=1, steps=3))
    grid = np.asarray(result.figures["pictures"])
    plain = generate(tiny, result.numbers["prompt"], seed=0, num_inference_steps=3, guidance_scale=10.0, sides="ella")
    fixed = generate(tiny, result.numbers["prompt"], seed=0, num_inference_steps=3, guidance_scale=10.0, sides="ella",
                     connector_timestep=999)  # fmt: skip
    assert not np.array_equal(plain.ella_pixels, fixed.ella_pixels)  # so the variants can differ at all
    assert grid.std() > 5


def test_presets_without_a_detector_cite_the_paper(tiny):
    result = run_lesson(tiny, "bag_of_words", LessonOptions(seeds=1, steps=2))
    assert result.evidence.kind == "cited" and "paper" in result.evidence.text and "binding" not in result.numbers


def test_progress_counts_every_step_of_every_generation_and_may_stop_the_lesson(tiny):
    seen = []
    run_lesson(
        tiny, "when_a_word_matters", LessonOptions(seeds=2, steps=4), lambda done, total: seen.append((done, total))
    )
    # 5 switch points (0..4) x 2 seeds = 10 images of 4 steps each, reported in images.
    assert len(seen) == 40 and {total for _, total in seen} == {10}
    assert [done for done, _ in seen] == [image + step / 4 for image in range(10) for step in range(1, 5)]

    calls = []

    def stop(done, total):
        calls.append(done)
        raise GenerationCancelledError(done, total)

    with pytest.raises(GenerationCancelledError):
        run_lesson(tiny, "timestep_aware", LessonOptions(seeds=1, steps=2), stop)
    assert calls == [0.5]  # stopped after the first step of the first image


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("nope", LessonOptions(), "lesson must be one of pieces, bag_of_words"),
        ("pieces", LessonOptions(seeds=0), "seeds must be a whole number from 1 to 8, got 0"),
        ("pieces", LessonOptions(seeds=9), "seeds must be a whole number from 1 to 8, got 9"),
        ("pieces", LessonOptions(steps=1), "steps must be a whole number from 2 to 50, got 1"),
        ("pieces", LessonOptions(seed=-1), "seed must be a whole number"),
        ("pieces", LessonOptions(seed=2**32 - 1, seeds=2), "seed plus seeds - 1 must stay at most"),
        ("long_prompts", LessonOptions(prompt="   "), "prompt is empty"),
        ("bag_of_words", LessonOptions(prompt="a red circle"), "second prompt is needed"),
        ("bag_of_words", LessonOptions(prompt="a red cube and a red ball"), "second prompt is needed"),
        ("when_a_word_matters", LessonOptions(prompt="   "), "prompt is empty"),
    ],
)
def test_bad_options_are_refused_by_name_before_any_image(tiny, name, options, message):
    with pytest.raises(InputError, match=message):
        run_lesson(tiny, name, options, lambda *_: pytest.fail("no image may be generated"))


@pytest.mark.parametrize("name", ["pieces", "long_prompts", "bag_of_words"])
def test_a_bad_prompt_is_the_engines_error_before_any_image(tiny, name):
    options = LessonOptions(prompt="a red \ud800 cat", second_prompt="a blue cat", steps=2)
    with pytest.raises(SettingsError, match="prompt contains a character that is not valid text"):
        run_lesson(tiny, name, options, lambda *_: pytest.fail("no image may be generated"))


def test_prompts_the_detector_cannot_read_are_said_not_measured(pocket):
    result = run_lesson(pocket, "bag_of_words", LessonOptions("a red cat", "a blue cat", seeds=1, steps=2))
    assert result.evidence.text.startswith("Not measured") and "binding" not in result.numbers


def test_prompts_are_read_for_colour_shape_pairs_paraphrases_included():
    assert requested_objects("A large red square left of a blue circle.") == (("red", "square"), ("blue", "circle"))
    assert requested_objects("a crimson filled cube and an emerald plus sign") == (
        ("red", "square"),
        ("green", "cross"),
    )
    assert requested_objects("There is an orange square of large size") == (("orange", "square"),)
    assert requested_objects("a red cat beside a blue and shiny circle") == ()  # no colour right before a shape


def test_only_objects_whose_colour_first_appears_after_the_cut_count_as_late():
    prompt = "A red circle. A red circle and a green cross. A blue square and a red triangle."
    cut = prompt.index("A blue")
    assert named_only_after(prompt, cut) == (("blue", "square"),)
    assert requested_objects(prompt) == (("red", "circle"), ("green", "cross"), ("blue", "square"), ("red", "triangle"))


def test_default_second_prompts_swap_or_change_the_colour():
    assert swapped_twin("A red cube left of a Blue ball.") == "A Blue cube left of a red ball."
    assert swapped_twin("a red circle") is None and swapped_twin("a red cube and a red ball") is None
    assert swapped_twin("a red\ncube, then a red ball; a blue box.") == "a blue\ncube, then a red ball; a red box."
    assert recoloured("A large red square.") == "A large blue square."
    assert recoloured("A blue square.") == "A red square."
    assert switch_steps(25) == [0, 5, 10, 15, 20, 25] and switch_steps(3) == [0, 1, 2, 3]


def test_the_cut_is_drawn_in_red_for_prompts_with_newlines_and_tabs():
    prompt = "first line of the prompt\nsecond\tline, cut here: THE DROPPED TAIL"
    cut = prompt.index("THE")
    pixels = np.asarray(to_image(prompt_cut_figure(prompt, {"CLIP": cut})))[..., :3].astype(int)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    assert red.sum() > 50
    clean = np.asarray(to_image(prompt_cut_figure(prompt, {"CLIP": len(prompt)})))[..., :3].astype(int)
    assert ((clean[..., 0] > 180) & (clean[..., 1] < 90) & (clean[..., 2] < 90)).sum() == 0


def test_a_handout_holds_every_figure_the_numbers_and_a_page(lessons, tmp_path):
    result = lessons["timestep_aware"]
    paths = write_handout(result, tmp_path / "handout")
    assert {path.name for path in paths} == {"pictures.png", "drawn_as_asked.png", "numbers.json", "README.md"}
    page = (tmp_path / "handout" / "README.md").read_text()
    assert result.title in page and "Measured here" in page and "![pictures](./pictures.png)" in page
    assert json.loads((tmp_path / "handout" / "numbers.json").read_text())["numbers"] == result.numbers


def test_the_learn_command_writes_a_handout_and_names_bad_flags(tmp_path, capsys):
    assert main(["learn", "pieces", "--preset", "tiny", "--steps", "2", "--seeds", "1", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "pieces" / "pipeline.png").is_file() and (tmp_path / "pieces" / "README.md").is_file()
    assert main(["learn", "pieces", "--preset", "tiny", "--seeds", "12", "--out", str(tmp_path)]) == 2
    assert "--seeds must be a whole number from 1 to 8, got 12" in capsys.readouterr().err
