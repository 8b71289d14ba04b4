"""The Learn tab through the app's API (gradio_client) and its handlers, on the tiny preset."""

from __future__ import annotations

import gradio as gr
import pytest
from gradio_client import Client
from PIL import Image

from ella_demo.app import ServingLimits, build_app, serving
from ella_demo.app.handlers import ExplorerUI
from ella_demo.app.learn_handlers import LESSON_WORK, MAX_FIGURES, LearnUI, figure_labels
from ella_demo.learn import LESSONS, LessonOptions, run_lesson

FAST = {"seeds": 1, "steps": 2}


@pytest.fixture
def client(server):
    return Client(server, verbose=False)


def test_the_learn_endpoint_runs_a_lesson_and_returns_its_page_and_figures(client):
    page, *figures = client.predict(lesson="timestep_aware", **FAST, api_name="/learn")
    figures, shapes = figures[:MAX_FIGURES], figures[MAX_FIGURES:]
    assert "# Timestep-aware or not" in page and "Cited from the paper" in page and "Random weights" in page
    assert "`python -m ella_demo learn timestep_aware --preset tiny --seed 0 --seeds 1 --steps 2" in page
    assert Image.open(figures[0]).width >= 700 and figures[1:] == [None, None]  # one figure without a detector
    assert shapes == ["", "", "", "", "", ""]  # only the pieces lesson fills the diagram


def test_the_pieces_lesson_fills_the_diagram_with_the_runs_shapes(client):
    page, *outputs = client.predict(lesson="pieces", prompt="a red cat", **FAST, api_name="/learn")
    figures, shapes = outputs[:MAX_FIGURES], outputs[MAX_FIGURES:]
    assert "How the pieces connect" in page and "--prompt 'a red cat'" in page and all(figures)
    assert all(shapes) and "latents (1, 4," in shapes[4] and "features (1, 77," in shapes[2]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"lesson": "nope"}, "Lesson must be one of pieces, bag_of_words"),
        ({"seeds": 9}, "Seeds per measurement must be a whole number from 1 to 8, got 9"),
        ({"steps": 2.5}, "Steps must be a whole number, got 2.5"),
        ({"seed": -3}, "Seed must be a whole number from 0 to"),
        ({"prompt": 42}, "Prompt must be text, got int"),
        ({"lesson": "bag_of_words", "prompt": "a red cat"}, "Second prompt is needed"),
        ({"lesson": "when_a_word_matters", "second_prompt": "a \ud800"}, "Second prompt contains a character"),
    ],
)
def test_bad_lesson_requests_name_the_field_to_change(tiny, arguments, message):
    ui = LearnUI(ExplorerUI(tiny))
    with pytest.raises(gr.Error, match=message):
        ui.run(**{"lesson": "pieces", **FAST, **arguments})


def test_a_lesson_over_the_work_cap_is_refused_before_any_image(tiny):
    limits = ServingLimits(max_pixel_steps=tiny.native_size**2 * 10)
    ui = LearnUI(ExplorerUI(tiny, limits=limits))
    cap = LESSON_WORK * limits.max_pixel_steps / 1e6
    with pytest.raises(gr.Error, match=rf"this app allows {cap:.0f} M per lesson\. Lower the seeds or the steps"):
        ui.run("when_a_word_matters", seeds=8, steps=50)


def test_a_stopped_lesson_says_so_and_clears_the_last_one(tiny, monkeypatch):
    ui = LearnUI(ExplorerUI(tiny))
    monkeypatch.setattr(ui.explorer.runs, "is_stopped", lambda run: True)
    shown = ui.run("pieces", **FAST)
    assert shown["page"].startswith("⏹️ Stopped after 0.5 of 1 images") and shown["lesson_state"] is None
    assert [shown[f"figure_{index}"] for index in range(MAX_FIGURES)] == [None] * MAX_FIGURES


def test_blocks_and_downloads_need_a_lesson_first(tiny, tmp_path):
    ui = LearnUI(ExplorerUI(tiny))
    with pytest.raises(gr.Error, match="run that lesson first"):
        ui.open_block(None, "connector")
    with pytest.raises(gr.Error, match="Run a lesson first"):
        ui.download(None)


def test_blocks_open_their_views_and_the_download_holds_the_handout(tiny):
    import zipfile

    ui = LearnUI(ExplorerUI(tiny))
    result = ui.run("pieces", **FAST)["lesson_state"]
    text, image = ui.open_block(result, "clip").values()
    assert "**CLIP** read 77 tokens" in text and "end or padding tokens" in text and image["visible"] is False
    text, image = ui.open_block(result, "connector").values()
    assert "Connector queries" in text and image["visible"] is True and image["value"].width > 0
    with pytest.raises(gr.Error, match="Block must be one of"):
        ui.open_block(result, "scheduler")
    with zipfile.ZipFile(ui.download(result)) as bundle:
        assert {"pieces/pipeline.png", "pieces/numbers.json", "pieces/README.md"} <= set(bundle.namelist())


def test_figure_slots_show_a_lessons_figures_by_name_and_hide_the_rest(tiny):
    result = run_lesson(tiny, "timestep_aware", LessonOptions(seeds=1, steps=2))
    labels = list(figure_labels(result).values())
    assert labels[0]["label"] == "pictures" and labels[0]["visible"] is True
    assert [label["visible"] for label in labels[1:]] == [False] * (MAX_FIGURES - 1)
    assert all(label["visible"] is False for label in figure_labels(None).values())


def test_every_lesson_fits_the_tabs_figure_slots(tiny):
    for name in LESSONS:
        assert len(run_lesson(tiny, name, LessonOptions(seeds=1, steps=2)).figures) <= MAX_FIGURES


def test_lessons_share_the_model_queue(tiny):
    app = build_app(tiny)
    queued = {
        getattr(block.fn, "__name__", "") for block in app.fns.values() if block.concurrency_id == serving.MODEL_WORK
    }
    assert queued == {"run_generate", "run_probe", "run"}  # the lesson; not its block views or downloads
