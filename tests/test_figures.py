"""Figures: sizes, readable labels at 128 tokens, GIF frames, thread safety, and the probe CLI."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.text
import numpy as np
import pytest
import torch
from PIL import Image

from ella_demo import generate
from ella_demo.core.errors import InputError
from ella_demo.core.probe import ProbeResult, probe, timestep_grid
from ella_demo.core.text_encoding import Word
from ella_demo.inspect import connector_attention, figures
from ella_demo.inspect.report import write_probe, write_trace_figures

REPO_ROOT = Path(__file__).resolve().parents[1]


def synthetic(words: int, steps: int = 6, queries: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    weights = np.exp(rng.normal(size=(steps, 2, 2, queries, queries + words + 1)))
    attention = weights / weights.sum(-1, keepdims=True)
    word_list = (*(Word(f"word{index}", (index,)) for index in range(words)), Word("</s>", (words,), True))
    return attention, np.linspace(999, 0, steps).round(), word_list


def tick_labels_overlap(figure) -> bool:
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    for axes in figure.axes:
        for ticks in (axes.get_xticklabels(), axes.get_yticklabels()):
            boxes = [label.get_window_extent(renderer) for label in ticks if label.get_text()]
            if any(first.overlaps(second) for first, second in itertools.pairwise(boxes)):
                return True
    return False


@pytest.mark.parametrize("words", [1, 128])
@pytest.mark.parametrize("normalisation", sorted(connector_attention.NORMALISATIONS))
def test_token_time_figure_fits_the_browser_and_labels_do_not_overlap(words, normalisation):
    attention, timesteps, word_list = synthetic(words, steps=50)
    time_map = connector_attention.token_time_map(attention, timesteps, word_list, normalisation)
    figure = figures.token_time_figure(time_map)
    assert not tick_labels_overlap(figure)
    image = Image.open(io.BytesIO(figures.to_png(figure)))
    assert 700 <= image.width <= 1280 and 400 <= image.height <= 800
    title = figure.axes[0].get_title()
    assert normalisation in title and "mean over all blocks, all heads" in title.replace("\n", " ")
    assert figure.axes[1].get_ylabel() == figures.COLORBAR_LABELS[normalisation]  # the colour bar


def test_word_share_and_query_figures_render():
    attention, timesteps, word_list = synthetic(10)
    shares, columns = connector_attention.word_shares(attention, word_list)
    figure = figures.word_share_figure(shares, columns, timesteps, connector_attention.top_words(shares, 3),
                                       connector_attention.text_share_per_block(attention))  # fmt: skip
    assert figures.to_image(figure).width <= 1280
    axis = figure.axes[0]
    assert axis.get_xlim()[0] > axis.get_xlim()[1]  # high noise on the left
    assert len(axis.get_lines()) == 3
    matrix, order, query_columns = connector_attention.query_word_matrix(attention[2], word_list)
    figure = figures.query_word_figure(matrix, query_columns, order, 2, timesteps[2], "mean")
    assert "step 3 (t=599)" in figure.axes[0].get_title()  # shown 1-based


def test_gif_has_one_frame_per_step(tmp_path):
    attention, timesteps, word_list = synthetic(5, steps=7)
    matrices = [connector_attention.query_word_matrix(attention[step], word_list)[0] for step in range(7)]
    shares, columns = connector_attention.word_shares(attention, word_list)
    frames = figures.animation_frames(matrices, shares, columns, timesteps, vmax=1.0)
    figures.save_gif(frames, tmp_path / "a.gif")
    assert Image.open(tmp_path / "a.gif").n_frames == 7


def test_rendering_is_identical_across_threads():
    attention, timesteps, word_list = synthetic(20)
    maps = [
        connector_attention.token_time_map(attention, timesteps, word_list, name)
        for name in sorted(connector_attention.NORMALISATIONS)
    ]
    sequential = [figures.to_png(figures.token_time_figure(item)) for item in maps]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda item: figures.to_png(figures.token_time_figure(item)), maps))
    assert parallel == sequential


def test_figures_never_import_pyplot():
    script = (
        "import sys, ella_demo.inspect.figures, ella_demo.inspect.report\nprint('matplotlib.pyplot' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


def test_traced_run_writes_the_full_figure_set(tiny, tmp_path):
    result = generate(tiny, "a red cat on a blue chair", num_inference_steps=4, height=64, width=64, trace=True)
    names = {path.name for path in write_trace_figures(result, tmp_path)}
    assert {f"token_time_{name}.png" for name in connector_attention.NORMALISATIONS} <= names
    assert {"word_shares.png", "query_words_step2.png", "tsc_animation.gif", "previews.png"} <= names
    assert any(name.startswith("word_maps_") for name in names)
    assert Image.open(tmp_path / "tsc_animation.gif").n_frames == 4


def test_untraced_run_has_no_figures(tiny, tmp_path):
    result = generate(tiny, "a cat", num_inference_steps=2, height=32, width=32)
    with pytest.raises(ValueError, match="figures need a traced run"):
        write_trace_figures(result, tmp_path)


def test_probe_equals_calling_the_connector_directly(tiny):
    result = probe(tiny, "a red cat on a blue chair", timesteps=7)
    features = tiny.t5_encoder.encode("a red cat on a blue chair").features
    assert result.timesteps.tolist() == timestep_grid(7).tolist() == [999, 832, 666, 500, 333, 166, 0]
    for index, timestep in enumerate(result.timesteps):
        with torch.no_grad():
            _, expected = tiny.ella(features, int(timestep), return_attention=True)
        assert np.allclose(result.attention[index], expected[0].numpy(), atol=1e-5)


def test_probe_cli_writes_npz_and_figures_matching_the_connector(tiny, tmp_path):
    command = [sys.executable, "-m", "ella_demo", "probe", "--preset", "tiny", "--device", "cpu", "--prompt",
               "a red cat", "--prompt2", "three white birds", "--timesteps", "5", "--out", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    saved = np.load(tmp_path / "probe.npz")
    assert saved["attention"].shape[:1] == (5,) and saved["attention_2"].shape[:1] == (5,)
    direct = probe(tiny, "a red cat", timesteps=5)
    assert np.allclose(saved["attention"].astype(np.float32), direct.attention, atol=2e-3)
    assert saved["tokens"].tolist() == list(direct.tokens)
    for name in ("token_time_paper.png", "word_shares.png", "compare.png", "prompt2/token_time_paper.png"):
        assert (tmp_path / name).is_file(), name


def test_probe_rejects_a_bad_grid(tiny):
    with pytest.raises(ValueError, match="timesteps must be a whole number from 2 to 1000, got 1"):
        probe(tiny, "a cat", timesteps=1)


def test_probe_figures_for_two_prompts(tiny, tmp_path):
    results = [probe(tiny, "a red cat", timesteps=4), probe(tiny, "a blue dog beside a tall tree", timesteps=4)]
    written = {path.relative_to(tmp_path).as_posix() for path in write_probe(results, tmp_path)}
    assert "compare.png" in written and "probe.npz" in written
    assert Image.open(tmp_path / "compare.png").width <= 1280


NASTY = r"$\alpha_$ costs $5 {x} 100% a_b^c \ and a lone $ sign"


def nasty_figure(name: str):
    """One figure function, with NASTY in each place prompt text can reach (labels, titles, legends)."""
    attention, timesteps, _ = synthetic(3)
    word_list = (Word(NASTY, (0,)), Word("$", (1,)), Word("_{x}^", (2,)), Word("</s>", (3,), True))
    time_map = connector_attention.token_time_map(attention, timesteps, word_list, "change")
    shares, columns = connector_attention.word_shares(attention, word_list)
    matrix, order, query_columns = connector_attention.query_word_matrix(attention[0], word_list)
    image, word_map = np.zeros((16, 16, 3), np.uint8), np.random.default_rng(0).random((4, 4))
    previews = np.zeros((2, 1, 8, 8, 3), np.uint8)
    draw = {
        "token_time": lambda: figures.token_time_figure(time_map, title=NASTY),
        "word_share": lambda: figures.word_share_figure(shares, columns, timesteps, [0, 1, 2], np.zeros((6, 2))),
        "query_word": lambda: figures.query_word_figure(matrix, query_columns, order, 0, 999, NASTY),
        "word_maps": lambda: figures.word_maps_figure(image, image, word_map, word_map, NASTY, NASTY),
        "word_maps_t5_only": lambda: figures.word_maps_figure(image, image, None, word_map, NASTY, NASTY),
        "preview_strip": lambda: figures.preview_strip_figure(previews, previews, [0, 1], timesteps),
        "compare": lambda: figures.compare_token_time_figure(time_map, time_map, NASTY, NASTY[:20]),
        "category_bars": lambda: figures.category_bars_figure({NASTY: {"$a$": 50.0}, "ELLA": {"$a$": 60.0}}, NASTY),
    }
    return draw[name]()


NASTY_FIGURES = ("token_time", "word_share", "query_word", "word_maps", "word_maps_t5_only", "preview_strip",
                 "compare", "category_bars")  # fmt: skip


@pytest.mark.parametrize("name", NASTY_FIGURES)
def test_prompt_text_is_drawn_literally_and_never_breaks_a_figure(name):
    figure = nasty_figure(name)
    png = figures.to_png(figure)  # mathtext would raise on "$\alpha_$"
    assert Image.open(io.BytesIO(png)).width <= 1280
    texts = [text for text in figure.findobj(matplotlib.text.Text) if text.get_text()]
    assert texts and not any(text.get_parse_math() for text in texts)
    if name != "preview_strip":
        assert any(NASTY in text.get_text() or "$" in text.get_text() for text in texts)


def test_animation_frames_draw_prompt_text_literally():
    attention, timesteps, _ = synthetic(2, steps=2)
    word_list = (Word(NASTY, (0,)), Word("$x$", (1,)), Word("</s>", (2,), True))
    matrices = [connector_attention.query_word_matrix(attention[step], word_list)[0] for step in range(2)]
    shares, columns = connector_attention.word_shares(attention, word_list)
    assert len(figures.animation_frames(matrices, shares, columns, timesteps, vmax=1.0)) == 2


def test_an_empty_prompt_run_writes_what_it_can_and_says_what_it_skipped(tiny, tmp_path):
    result = generate(tiny, "", num_inference_steps=2, height=32, width=32, trace=True)
    names = {path.name for path in write_trace_figures(result, tmp_path)}
    assert "previews.png" in names and "skipped.txt" in names
    assert not any(name.startswith(("token_time", "word_maps")) for name in names)
    assert "empty" in (tmp_path / "skipped.txt").read_text()


def test_a_prompt_with_a_dollar_sign_writes_the_full_figure_set(tiny, tmp_path):
    result = generate(tiny, r"a $red$ cat_1 {x} costs $\alpha_$", num_inference_steps=2, height=32, width=32,
                      trace=True)  # fmt: skip
    names = {path.name for path in write_trace_figures(result, tmp_path)}
    assert {"token_time_paper.png", "tsc_animation.gif", "previews.png"} <= names
    assert any(name.startswith("word_maps_") for name in names)


def test_an_empty_probe_prompt_is_an_input_error_naming_the_prompt(tiny, tmp_path):
    with pytest.raises(InputError, match="empty") as raised:
        probe(tiny, "", timesteps=3)
    assert raised.value.field == "prompt"
    empty = ProbeResult("", np.zeros((3, 1, 1, 2, 3)), timestep_grid(3), ("</s>",), (Word("</s>", (0,), True),))
    with pytest.raises(InputError, match="empty") as raised:
        write_probe([probe(tiny, "a red cat", timesteps=3), empty], tmp_path)
    assert raised.value.field == "prompt2"


def test_probe_tab_treats_an_empty_second_prompt_as_absent(tiny):
    import gradio as gr

    from ella_demo.app.handlers import ExplorerUI

    explorer = ExplorerUI(tiny)
    for second in ("", "   ", None):
        first, curves, comparison = explorer.run_probe(r"a $red$ cat", second, timesteps=3)
        assert first.width > 0 and curves.width > 0 and comparison is None
    for second in ("", "a blue dog"):
        with pytest.raises(gr.Error, match=r"(?i)prompt is empty"):
            explorer.run_probe("", second, timesteps=3)
