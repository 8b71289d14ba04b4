"""Per-session views of a traced run: word choices, empty prompts, and the bounded render cache."""

from __future__ import annotations

import pytest

from ella_demo import generate
from ella_demo.core.errors import InputError
from ella_demo.core.text_encoding import PromptTruncatedWarning
from ella_demo.inspect.connector_attention import Aggregation
from ella_demo.inspect.views import MAP_CACHE_SIZE, RunViews


def views_of(tiny, prompt: str, steps: int = 2) -> RunViews:
    return RunViews(generate(tiny, prompt, trace=True, num_inference_steps=steps, height=32, width=32))


def test_every_content_word_is_selectable_and_drawn(tiny):
    views = views_of(tiny, "a red cat, on a blue chair.")
    choices = views.word_choices()
    assert {"red", "cat", "on", "blue", "chair"} <= set(choices)
    assert views.default_word() in choices
    for word in ("cat", "chair"):
        assert views.word_maps(word, "all", 1).width > 0
    assert "| 1 |" in views.pixel_probe(3, 3, "this step", 1)


def test_t5_only_words_are_offered_and_drawn_with_a_note(tiny):
    with pytest.warns(PromptTruncatedWarning, match="CLIP"):
        views = views_of(tiny, " ".join(["red cat"] * 40) + " under a green lamp")
    assert "lamp (T5 only)" in views.word_choices()
    assert views.word_maps("lamp (T5 only)", "all", 1).width > 0
    assert "T5 only" in views.pixel_probe(3, 3, "all", 1)


def test_an_empty_prompt_gives_clear_messages_not_numpy_errors(tiny):
    views = views_of(tiny, "")
    assert not views.has_words
    assert views.word_choices() == [] and views.default_word() is None
    assert "no words" in views.pixel_probe(3, 3, "all", 0)
    with pytest.raises(InputError, match="word") as raised:
        views.word_maps("cat", "all", 0)
    assert raised.value.field == "word"
    aggregation = Aggregation()
    for render in (
        lambda: views.query_heatmap(0, aggregation),
        lambda: views.highlighted_prompt(0, aggregation),
        lambda: views.token_time("paper", aggregation),
        lambda: views.share_curves(aggregation),
    ):
        with pytest.raises(InputError, match="empty") as raised:
            render()
        assert raised.value.field == "prompt"
    assert views.previews(0)[0].size == (32, 32)


def test_unknown_word_is_an_input_error(tiny):
    views = views_of(tiny, "a red cat")
    with pytest.raises(InputError, match="'dog' is not a word of the prompt"):
        views.word_maps("dog", "all", 0)


def test_render_cache_is_bounded_over_a_session(tiny):
    views = views_of(tiny, "a red cat", steps=MAP_CACHE_SIZE + 6)
    for step in range(views.steps):
        views.spatial(step)
    for window in ("all", "early", "middle", "late"):
        views.spatial(window)
    assert len(views._maps) == MAP_CACHE_SIZE
    assert views.spatial("late") is views.spatial("late")  # recent windows are served from the cache
