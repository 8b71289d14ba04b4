"""Figures for the attention views: matplotlib without pyplot, so nothing global leaks between calls.

Every function takes arrays and small dataclasses from connector_attention, word_matching and
spatial_maps and returns a `matplotlib.figure.Figure` drawn on its own Agg canvas; `to_png` /
`to_image` turn it into bytes or a PIL image. Sizes stay within a 1280-pixel-wide browser column
at the default 100 dpi. Prompt text reaches titles, tick labels and legends; `to_png` draws every
text as typed, so no prompt ("$5", "$x$", a backslash) is ever read as mathtext.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image

from ella_demo.inspect.connector_attention import TimeMap
from ella_demo.inspect.spatial_maps import difference_map
from ella_demo.inspect.word_matching import Columns

DPI = 100
MAX_WIDTH_IN = 12.5  # 1250 px
SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "RdBu_r"
OVERLAY_CMAP = "magma"
COLORBAR_LABELS = {
    "paper": "fraction of the word's maximum",
    "share": "share of text attention",
    "change": "share minus time-average",
    "raw": "attention weight (mean over queries)",
}
MIN_FONT_PT = 5.0
MAX_FONT_PT = 9.0
TOKEN_TIME_TITLE = "ELLA connector: attention to each word over time"


MIN_WIDTH_IN = 7.0


def new_figure(width_in: float, height_in: float) -> Figure:
    width = min(max(width_in, MIN_WIDTH_IN), MAX_WIDTH_IN)
    figure = Figure(figsize=(width, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def wrap(text: str, figure: Figure, font_pt: float = 10.0) -> str:
    """Wrap a title to the figure's width (about 0.55 em per character), line by line."""
    columns = max(20, int(figure.get_figwidth() * 72 / (0.55 * font_pt)))
    return "\n".join(textwrap.fill(line, columns) for line in text.split("\n"))


def plain_text(figure: Figure) -> Figure:
    """Turn mathtext off for every text of the figure: "$...$" in a prompt is drawn as typed.

    Covers titles, axis and tick labels, legends and annotations that exist now; ticks matplotlib
    adds while drawing carry only its own number labels.
    """
    for text in figure.findobj(Text):
        text.set_parse_math(False)
    return figure


def to_png(figure: Figure) -> bytes:
    """Render the figure as PNG bytes; all rendering goes through here, texts drawn as typed."""
    plain_text(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def to_image(figure: Figure) -> Image.Image:
    return Image.open(io.BytesIO(to_png(figure))).convert("RGB")


def _label_ticks(axis, labels: Sequence[str], length_in: float, along_x: bool) -> None:
    """Place category labels without overlap: shrink the font, then thin to every k-th label."""
    count = max(len(labels), 1)
    spacing_pt = length_in * 72 / count
    font = min(MAX_FONT_PT, spacing_pt * 0.85)
    step = 1
    if font < MIN_FONT_PT:
        font = MIN_FONT_PT
        step = math.ceil(MIN_FONT_PT / (spacing_pt * 0.85))
    positions = list(range(0, count, step))
    shown = [labels[index] for index in positions]
    if along_x:
        axis.set_xticks(positions, shown, rotation=90, fontsize=font)
    else:
        axis.set_yticks(positions, shown, fontsize=font)


def token_time_figure(time_map: TimeMap, title: str = TOKEN_TIME_TITLE) -> Figure:
    """Rows = timesteps (high noise at the top), columns = words or pieces."""
    columns = len(time_map.columns.labels)
    width = min(MAX_WIDTH_IN, 3.5 + 0.18 * columns)
    figure = new_figure(width, 6.0)
    axes = figure.add_subplot()
    diverging = time_map.normalisation == "change"
    values = time_map.values
    limit = float(np.abs(values).max()) or 1.0
    image = axes.imshow(
        values,
        aspect="auto",
        interpolation="nearest",
        cmap=DIVERGING_CMAP if diverging else SEQUENTIAL_CMAP,
        vmin=-limit if diverging else 0.0,
        vmax=limit if diverging else None,
    )
    plot_width = figure.get_figwidth() - 2.0
    _label_ticks(axes, time_map.columns.labels, plot_width, along_x=True)
    _label_ticks(axes, [str(int(step)) for step in time_map.timesteps], 4.5, along_x=False)
    axes.set_ylabel("timestep (high noise at top)")
    axes.set_xlabel("prompt words" if "piece" not in time_map.columns.kinds else "T5 pieces")
    subtitle = f"{time_map.normalisation}: {time_map.note}; {time_map.aggregation}"
    axes.set_title(wrap(f"{title}\n{subtitle}", figure), fontsize=10)
    figure.colorbar(image, ax=axes, label=COLORBAR_LABELS[time_map.normalisation], shrink=0.9)
    return figure


def word_share_figure(
    shares: np.ndarray,
    columns: Columns,
    timesteps: np.ndarray,
    selected: Sequence[int],
    text_share: np.ndarray | None = None,
) -> Figure:
    """Left: share over time of the selected words. Right (if given): per-block share of text vs latents."""
    panels = 2 if text_share is not None else 1
    figure = new_figure(6.0 * panels, 4.2)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    labels = columns.distinct_labels()
    for index in selected:
        axes[0].plot(timesteps, shares[:, index], marker="o", markersize=3, label=labels[index])
    axes[0].set_title("Share of the connector's text attention per word", fontsize=10)
    axes[0].set_ylabel("share of text attention")
    axes[0].legend(fontsize=8, loc="best")
    if text_share is not None:
        for block in range(text_share.shape[1]):
            axes[1].plot(timesteps, text_share[:, block], marker=".", markersize=3, label=f"block {block}")
        axes[1].set_title("Attention to text (rest: to the latents), per block", fontsize=10)
        axes[1].set_ylabel("fraction of attention on T5 tokens")
        axes[1].set_ylim(0, 1)
        axes[1].legend(fontsize=8, loc="best")
    for axis in axes:
        axis.set_xlabel("timestep (high noise on the left)")
        axis.set_xlim(max(timesteps) + 10, min(timesteps) - 10)
        axis.grid(alpha=0.3)
    return figure


def query_word_figure(matrix: np.ndarray, columns: Columns, order: np.ndarray, step: int, timestep: float,
                      aggregation: str) -> Figure:  # fmt: skip
    """Queries (rows, grouped by the word they read most) x words at one step (0-based index, shown 1-based)."""
    count = len(columns.labels)
    figure = new_figure(min(MAX_WIDTH_IN, 3.5 + 0.18 * count), 6.0)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, aspect="auto", interpolation="nearest", cmap=SEQUENTIAL_CMAP, vmin=0)
    _label_ticks(axes, columns.labels, figure.get_figwidth() - 2.0, along_x=True)
    _label_ticks(axes, [f"q{index}" for index in order], 4.5, along_x=False)
    axes.set_ylabel("connector query (grouped by favourite word)")
    title = f"ELLA connector queries x words, step {step + 1} (t={int(timestep)}); {aggregation}"
    axes.set_title(wrap(title, figure), fontsize=10)
    figure.colorbar(image, ax=axes, label="attention weight", shrink=0.9)
    return figure


def animation_frames(matrices: Sequence[np.ndarray], shares: np.ndarray, columns: Columns,
                     timesteps: np.ndarray, vmax: float) -> list[Image.Image]:  # fmt: skip
    """One frame per step: the query x word heatmap beside the word-share bar, same colour scale."""
    frames = []
    for step, matrix in enumerate(matrices):
        figure = new_figure(10.0, 5.0)
        left, right = figure.subplots(1, 2, width_ratios=[3, 2])
        image = left.imshow(matrix, aspect="auto", interpolation="nearest", cmap=SEQUENTIAL_CMAP, vmin=0, vmax=vmax)
        _label_ticks(left, columns.labels, 5.0, along_x=True)
        left.set_ylabel("queries (grouped by favourite word)")
        figure.colorbar(image, ax=left, label="attention weight")
        right.barh(range(len(columns.labels)), shares[step], color="tab:blue")
        right.set_xlim(0, float(shares.max()) * 1.05 or 1.0)
        _label_ticks(right, columns.labels, 3.5, along_x=False)
        right.invert_yaxis()
        right.set_xlabel("share of text attention")
        figure.suptitle(
            f"ELLA connector, step {step + 1}/{len(matrices)}, timestep {int(timesteps[step])}", fontsize=11
        )
        frames.append(to_image(figure))
    return frames


def save_gif(frames: Sequence[Image.Image], path, seconds_per_frame: float = 0.4) -> None:
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=int(seconds_per_frame * 1000), loop=0)


def _overlay(axes, image: np.ndarray, word_map: np.ndarray, vmin: float, vmax: float, cmap: str, title: str):
    height, width = image.shape[:2]
    resized = np.asarray(Image.fromarray(word_map.astype(np.float32)).resize((width, height), Image.BILINEAR))
    axes.imshow(image)
    drawn = axes.imshow(resized, cmap=cmap, alpha=0.6, vmin=vmin, vmax=vmax)
    axes.set_title(title, fontsize=9)
    axes.set_axis_off()
    return drawn


def _missing(axes, image: np.ndarray, title: str, note: str) -> None:
    axes.imshow(image)
    axes.text(0.5, 0.5, note, transform=axes.transAxes, ha="center", va="center", fontsize=9, wrap=True,
              bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})  # fmt: skip
    axes.set_title(title, fontsize=9)
    axes.set_axis_off()


def word_maps_figure(
    clip_image: np.ndarray,
    ella_image: np.ndarray,
    clip_map: np.ndarray | None,
    ella_map: np.ndarray | None,
    word: str,
    window_label: str,
    shared_scale: bool = True,
) -> Figure:
    """CLIP's cross-attention map, ELLA's attention flow map, and their difference, for one word.

    A map is None when that side's encoder lost the word (CLIP keeps 77 tokens): its panel shows
    the image with a note, and there is no difference panel to draw.
    """
    figure = new_figure(12.0, 4.3)
    left, middle, right = figure.subplots(1, 3)
    present = [item for item in (clip_map, ella_map) if item is not None]
    top = max(float(item.max()) for item in present) if shared_scale and present else None
    clip_title = f'CLIP: cross-attention to "{word}"'
    ella_title = f'ELLA: attention flow to "{word}"\n(pixel -> query -> token)'
    drawn = {}
    for axes, image, word_map, title, encoder in ((left, clip_image, clip_map, clip_title, "CLIP"),
                                                  (middle, ella_image, ella_map, ella_title, "T5")):  # fmt: skip
        if word_map is None:
            _missing(axes, image, title, f"not among {encoder}'s tokens\n(cut off by its length limit)")
        else:
            vmax = top if top is not None else float(word_map.max())
            drawn[encoder] = (axes, _overlay(axes, image, word_map, 0.0, vmax, OVERLAY_CMAP, title))
    if clip_map is not None and ella_map is not None:
        difference = difference_map(ella_map, clip_map)
        limit = float(np.abs(difference).max()) or 1.0
        shown = right.imshow(difference, cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit)
        right.set_title("ELLA minus CLIP (each map scaled to sum 1)", fontsize=9)
        right.set_axis_off()
        figure.colorbar(shown, ax=right, label="difference of spatial shares", shrink=0.8)
    else:
        note = "no difference: only one model read this word"
        right.text(0.5, 0.5, note, transform=right.transAxes, ha="center", va="center", fontsize=9)
        right.set_axis_off()
    scale = "shared colour scale" if shared_scale else "each map on its own scale"
    if shared_scale and len(drawn) == 2:
        figure.colorbar(drawn["T5"][1], ax=[left, middle], label="attention weight", shrink=0.8)
    else:
        for axes, image in drawn.values():
            figure.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    figure.suptitle(f'Where "{word}" lands, {window_label}; {scale}', fontsize=11)
    return figure


def preview_strip_figure(clip_previews: np.ndarray, ella_previews: np.ndarray, steps: Sequence[int],
                         timesteps: np.ndarray, image_index: int = 0) -> Figure:  # fmt: skip
    """x0 previews at chosen steps: CLIP on the top row, ELLA below. previews (S, N, h, w, 3)."""
    count = len(steps)
    figure = new_figure(min(MAX_WIDTH_IN, 1.6 * count + 1.0), 3.6)
    axes = figure.subplots(2, count, squeeze=False)
    for column, step in enumerate(steps):
        for row, (label, previews) in enumerate((("CLIP", clip_previews), ("ELLA", ella_previews))):
            axis = axes[row][column]
            axis.imshow(previews[step, image_index], interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"step {step + 1}\nt={int(timesteps[step])}", fontsize=8)
            if column == 0:
                axis.set_ylabel(label, fontsize=9)
    figure.suptitle("Predicted clean image (x0) after each step, linear latent preview", fontsize=10)
    return figure


def compare_token_time_figure(first: TimeMap, second: TimeMap, first_title: str, second_title: str) -> Figure:
    """Two prompts' token x timestep maps side by side, on one colour scale."""
    widest = max(len(first.columns.labels), len(second.columns.labels))
    figure = new_figure(min(MAX_WIDTH_IN, 5.0 + 0.3 * widest), 6.0)
    axes = figure.subplots(1, 2)
    diverging = first.normalisation == "change"
    limit = float(max(np.abs(first.values).max(), np.abs(second.values).max())) or 1.0
    for axis, time_map, title in ((axes[0], first, first_title), (axes[1], second, second_title)):
        drawn = axis.imshow(
            time_map.values,
            aspect="auto",
            interpolation="nearest",
            cmap=DIVERGING_CMAP if diverging else SEQUENTIAL_CMAP,
            vmin=-limit if diverging else 0.0,
            vmax=limit,
        )
        _label_ticks(axis, time_map.columns.labels, figure.get_figwidth() / 2 - 1.2, along_x=True)
        _label_ticks(axis, [str(int(step)) for step in time_map.timesteps], 4.5, along_x=False)
        axis.set_title(title if len(title) <= 60 else title[:57] + "...", fontsize=9)
        axis.set_ylabel("timestep (high noise at top)")
    figure.colorbar(drawn, ax=list(axes), label=COLORBAR_LABELS[first.normalisation], shrink=0.9)
    title = f"Two prompts through the ELLA connector; {first.normalisation}: {first.note}"
    figure.suptitle(wrap(title, figure), fontsize=10)
    return figure


def category_bars_figure(scores: dict[str, dict[str, float]], title: str = "DPG-Bench by category") -> Figure:
    """Grouped bars: one group per category, one bar per model (e.g. {"CLIP": {...}, "ELLA": {...}})."""
    categories = sorted({category for values in scores.values() for category in values})
    figure = new_figure(1.2 + 0.9 * len(categories) * max(1, len(scores) / 2), 4.5)
    draw_category_bars(figure.add_subplot(), scores, title, figure.get_figwidth() - 1.5)
    return figure


def draw_category_bars(axes, scores: dict[str, dict[str, float]], title: str, width_in: float) -> None:
    """Into `axes`: one group of bars per category (alphabetical, "overall" first), one bar per model, in %."""
    models = list(scores)
    found = {category for values in scores.values() for category in values}
    categories = sorted(found, key=lambda category: (category != "overall", category))
    width = 0.8 / max(len(models), 1)
    for index, model in enumerate(models):
        positions = [
            category_index + (index - (len(models) - 1) / 2) * width for category_index in range(len(categories))
        ]
        values = [scores[model].get(category, 0.0) for category in categories]
        bars = axes.bar(positions, values, width, label=model)
        axes.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
    _label_ticks(axes, categories, width_in, along_x=True)
    axes.set_ylabel("score (%)")
    axes.set_ylim(0, 120)  # room above 100 for the labels and the legend
    axes.set_yticks(range(0, 101, 20))
    axes.legend(fontsize=7, loc="upper center", ncol=len(models))
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", alpha=0.3)
