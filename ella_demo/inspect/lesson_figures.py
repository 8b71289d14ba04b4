"""Figures of the Learn lessons: picture grids, a prompt's cut per encoder, a prompt switch over k, the pipeline.

Arrays, pictures and small dicts in, matplotlib figures out (see figures.py for the conventions). Small
pictures (the pocket world's 64 px) are drawn pixel for pixel.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from PIL import Image

from ella_demo.inspect.figures import MAX_WIDTH_IN, new_figure, wrap

CUT_COLOUR = "#d62728"
MAX_LABEL_CHARACTERS = 160  # prompts in labels and titles are shortened to this
MAX_PROMPT_LINES = 24  # a prompt-cut panel shows at most this many lines (T5 reads 512 tokens, about 20 lines)


def shorten(text: str, limit: int = MAX_LABEL_CHARACTERS) -> str:
    """`text`, or its first `limit` characters and an ellipsis: prompts never grow a figure without bound."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def image_grid_figure(
    rows: Sequence[Sequence[Image.Image]], row_labels: Sequence[str], column_labels: Sequence[str], title: str
) -> Figure:
    """Pictures in a grid, rows and columns labelled; labels longer than a cell are wrapped."""
    count_rows, count_columns = len(rows), max(len(row) for row in rows)
    cell = min(2.6, (MAX_WIDTH_IN - 2.5) / count_columns)
    figure = new_figure(cell * count_columns + 2.5, cell * count_rows + 0.9)
    axes = figure.subplots(count_rows, count_columns, squeeze=False)
    for row_index, row in enumerate(rows):
        for column_index in range(count_columns):
            axis = axes[row_index][column_index]
            axis.set_xticks([])
            axis.set_yticks([])
            if column_index < len(row):
                axis.imshow(np.asarray(row[column_index]), interpolation="nearest")
            if row_index == 0:
                axis.set_title(column_labels[column_index], fontsize=10)
            if column_index == 0:
                axis.set_ylabel(textwrap.fill(shorten(row_labels[row_index]), 28), fontsize=8)
    figure.suptitle(wrap(shorten(title, 2 * MAX_LABEL_CHARACTERS), figure), fontsize=11)
    return figure


def prompt_cut_figure(prompt: str, cuts: Mapping[str, int], columns: int = 130) -> Figure:
    """The prompt once per encoder, monospaced; what the encoder drops (characters from its cut on) in red.

    At most MAX_PROMPT_LINES lines are drawn; the last says how many characters were left out.
    """
    prompt = re.sub(r"\s", " ", prompt)  # one space per newline or tab: character positions (and cuts) stay
    lines = textwrap.wrap(prompt, columns) or [""]
    if len(lines) > MAX_PROMPT_LINES:
        lines = [*lines[: MAX_PROMPT_LINES - 1], f"… and {len(prompt) - sum(map(len, lines[: MAX_PROMPT_LINES - 1]))} "
                 "more characters"]  # fmt: skip
    figure = new_figure(MAX_WIDTH_IN, 0.6 + len(cuts) * (len(lines) * 0.2 + 0.45))
    axes = figure.subplots(len(cuts), 1, squeeze=False)[:, 0]
    for axis, (label, cut) in zip(axes, cuts.items(), strict=True):
        axis.set_axis_off()
        dropped = len(prompt) - cut
        note = "reads it all" if dropped <= 0 else f"drops the red tail ({dropped} characters)"
        axis.set_title(f"{label}: {note}", fontsize=10, loc="left")
        start = 0
        for number, line in enumerate(lines):
            y = 1 - (number + 0.5) / len(lines)
            found = prompt.find(line, start)
            if found < 0:  # the "... more characters" line
                axis.text(0, y, line, fontsize=9, va="bottom", style="italic", color="gray")
                continue
            start = found
            kept = max(0, min(len(line), cut - start))
            drawn = axis.text(0, y, line[:kept], family="monospace", fontsize=9, va="bottom")
            # The dropped part starts where the kept part ends, wherever the layout puts it when drawing.
            axis.annotate(line[kept:], xy=(1, 0), xycoords=drawn, va="bottom", family="monospace", fontsize=9,
                          color=CUT_COLOUR, weight="bold")  # fmt: skip
            start += len(line)
    figure.suptitle("Where each encoder stops reading", fontsize=11)
    return figure


@dataclass(frozen=True)
class SwitchCurves:
    """What a prompt switch measured per switch step k: per side, the share of pictures with the first prompt's
    colour, and the main object's mean distance in pixels from its place in the first prompt's own picture
    (None where not measured). Empty dicts: not measured."""

    ks: Sequence[int]
    colour_share: Mapping[str, Sequence[float]]
    layout_shift: Mapping[str, Sequence[float | None]]
    colour_label: str


def switch_figure(curves: SwitchCurves, timesteps: np.ndarray, word_shares: Mapping[str, np.ndarray]) -> Figure:
    """Left: layout shift over k. Middle: pictures keeping the first prompt's colour over k. Right: the connector's
    share of text attention over `timesteps` (T,) for the words that differ (labels ending in "(A)" dashed)."""
    figure = new_figure(MAX_WIDTH_IN, 4.2)
    layout, colour, words = figure.subplots(1, 3)
    panels = (
        (layout, {side: [np.nan if value is None else value for value in values]
                  for side, values in curves.layout_shift.items()}, 1.0,
         "main object's distance from A's place (px)", "When is the layout fixed?"),
        (colour, curves.colour_share, 100.0, f"pictures with {curves.colour_label} (%)", "When is the colour fixed?"),
    )  # fmt: skip
    for axis, series, scale, ylabel, title in panels:
        for side, values in series.items():
            axis.plot(curves.ks, scale * np.asarray(values, dtype=float), marker="o", label=side.upper())
        if not series:
            axis.text(0.5, 0.5, "not measured here\n(the pocket world's detector\nreads the pictures)", ha="center",
                      va="center", transform=axis.transAxes, fontsize=9)  # fmt: skip
        axis.set_xlabel("switch at step k (A before k, B from k on)")
        axis.set_ylabel(ylabel)
        axis.set_title(title, fontsize=10)
    colour.set_ylim(-5, 105)
    for word, shares in word_shares.items():
        words.plot(timesteps, shares, marker=".", label=word, linestyle="--" if word.endswith("(A)") else "-")
    if len(timesteps):
        words.set_xlim(max(timesteps) + 10, min(timesteps) - 10)
    words.set_xlabel("timestep (high noise on the left)")
    words.set_ylabel("share of the connector's text attention")
    words.set_title("ELLA connector: the words that differ", fontsize=10)
    for axis in (layout, colour, words):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8, loc="best")
    return figure


# Blocks of the pipeline figure: key -> (x, y) of the box's centre, title. Keys match `pipeline_figure`'s shapes.
PIPELINE_BLOCKS = {
    "prompt": ((0.9, 2.0), "prompt"),
    "t5": ((3.0, 3.1), "language model"),
    "connector": ((5.2, 3.1), "connector (TSC)"),
    "clip": ((4.1, 0.9), "CLIP text encoder"),
    "unet": ((7.3, 2.0), "UNet cross-attention"),
    "vae": ((9.3, 2.0), "VAE decoder"),
}
PIPELINE_ARROWS = (
    ("prompt", "t5"),
    ("prompt", "clip"),
    ("t5", "connector"),
    ("connector", "unet"),
    ("clip", "unet"),
    ("unet", "vae"),
)
_BOX = (1.8, 1.25)


def pipeline_figure(shapes: Mapping[str, str], title: str) -> Figure:
    """Prompt -> language model -> connector -> UNet and prompt -> CLIP -> UNet -> VAE, each box with its shapes."""
    figure = new_figure(MAX_WIDTH_IN, 4.4)
    axis = figure.add_subplot()
    axis.set_xlim(-0.1, 10.3)
    axis.set_ylim(0, 4)
    axis.set_axis_off()
    width, height = _BOX
    for key, ((x, y), name) in PIPELINE_BLOCKS.items():
        axis.add_patch(
            FancyBboxPatch(
                (x - width / 2, y - height / 2),
                width,
                height,
                boxstyle="round,pad=0.04",
                facecolor="#e8f0fb",
                edgecolor="#2b5797",
            )
        )
        axis.text(x, y + height / 2 - 0.2, name, ha="center", va="center", fontsize=9, fontweight="bold")
        axis.text(x, y - 0.12, shapes.get(key, ""), ha="center", va="center", fontsize=7, linespacing=1.3)
    for source, target in PIPELINE_ARROWS:
        (x0, y0), (x1, y1) = PIPELINE_BLOCKS[source][0], PIPELINE_BLOCKS[target][0]
        start = (x0 + width / 2, y0) if abs(y1 - y0) < 0.5 or x1 - x0 > width else (x0, y0)
        end = (x1 - width / 2, y1)
        axis.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="#444444"))
    figure.suptitle(wrap(shorten(title, 2 * MAX_LABEL_CHARACTERS), figure), fontsize=11)
    return figure
