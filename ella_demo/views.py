"""What the browser shows for a run, rendered from its cached trace: no model work happens here.

`RunViews` wraps one traced generation (kept per browser session) and renders each view for the
controls' current values: a step, a block/head choice, a normalisation, a word and a window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from . import analysis, figures
from .engine import GenerationResult

WINDOW_CHOICES = ("this step", "all", "early", "middle", "late")


def parse_aggregation(block: str, head: str) -> analysis.Aggregation:
    """UI choices ("mean" or a number as text) -> Aggregation."""
    return analysis.Aggregation(
        block=None if block in ("mean", "", None) else int(block),
        head=None if head in ("mean", "", None) else int(head),
    )


@dataclass
class RunViews:
    """One traced run and the renders derived from it, cached per window."""

    result: GenerationResult
    _maps: dict = field(default_factory=dict)

    @property
    def trace(self):
        return self.result.trace

    @property
    def steps(self) -> int:
        return len(self.trace.timesteps)

    @property
    def has_words(self) -> bool:
        """False for an empty prompt: the word views have nothing to show."""
        return any(not word.is_special for word in self.trace.t5_words)

    def word_choices(self) -> list[str]:
        return list(self.spatial(0).labels)

    def default_word(self) -> str | None:
        """The shared word the connector attends to most over the run, for the first word maps."""
        labels = self.word_choices()
        if not labels:
            return None
        shares, columns = analysis.word_shares(self.trace.tsc_attention, self.trace.t5_words)
        ranked = [columns.distinct_labels()[index] for index in analysis.top_words(shares, len(columns.labels))]
        return next(label for label in ranked if label in labels)

    def spatial(self, window) -> analysis.SpatialWordMaps:
        key = window
        if key not in self._maps:
            self._maps[key] = analysis.spatial_word_maps(self.trace, window)
        return self._maps[key]

    def _window(self, window: str, step: int):
        return step if window == "this step" else window

    def previews(self, step: int) -> tuple[Image.Image, Image.Image]:
        """Both sides' x0 previews of the first image at `step`, enlarged to the image size."""
        size = self.result.clip_images[0].size
        return tuple(
            Image.fromarray(self.trace.sides[side].previews[step, 0]).resize(size, Image.NEAREST)
            for side in ("clip", "ella")
        )

    def query_heatmap(self, step: int, aggregation: analysis.Aggregation) -> Image.Image:
        matrix, order, columns = analysis.query_word_matrix(
            self.trace.tsc_attention[step], self.trace.t5_words, aggregation
        )
        figure = figures.query_word_figure(
            matrix, columns, order, step, self.trace.timesteps[step], aggregation.label()
        )
        return figures.to_image(figure)

    def highlighted_prompt(self, step: int, aggregation: analysis.Aggregation) -> list[tuple[str, float]]:
        shares, columns = analysis.word_shares(
            self.trace.tsc_attention[step : step + 1], self.trace.t5_words, aggregation
        )
        return analysis.highlight(shares[0], columns)

    def token_time(self, normalisation: str, aggregation: analysis.Aggregation, pieces: bool = False) -> Image.Image:
        time_map = analysis.token_time_map(
            self.trace.tsc_attention,
            self.trace.timesteps,
            self.trace.t5_words,
            normalisation,
            aggregation,
            pieces=pieces,
            tokens=self.trace.t5_tokens,
        )
        return figures.to_image(figures.token_time_figure(time_map))

    def share_curves(self, aggregation: analysis.Aggregation) -> Image.Image:
        shares, columns = analysis.word_shares(self.trace.tsc_attention, self.trace.t5_words, aggregation)
        figure = figures.word_share_figure(
            shares,
            columns,
            self.trace.timesteps,
            analysis.top_words(shares),
            analysis.text_share_per_block(self.trace.tsc_attention),
        )
        return figures.to_image(figure)

    def word_maps(self, word: str, window: str, step: int, shared_scale: bool = True) -> Image.Image:
        maps = self.spatial(self._window(window, step))
        if word not in maps.labels:
            raise ValueError(f"{word!r} is not a word both encoders share; pick one from the list.")
        index = maps.labels.index(word)
        figure = figures.word_maps_figure(
            np.asarray(self.result.clip_images[0]),
            np.asarray(self.result.ella_images[0]),
            maps.clip[index],
            maps.ella[index],
            word,
            maps.window,
            shared_scale,
        )
        return figures.to_image(figure)

    def pixel_probe(self, x: float, y: float, window: str, step: int) -> str:
        """Markdown: the words ranked at (x, y) for each model, and ELLA's top queries there."""
        maps = self.spatial(self._window(window, step))
        found = analysis.pixel_probe(maps, x, y, self.result.clip_images[0].size)
        lines = [
            f"**At pixel ({int(x)}, {int(y)})**, {maps.window}:",
            "",
            "| rank | CLIP | ELLA (attention flow) |",
            "| --- | --- | --- |",
        ]
        for rank, (clip, ella) in enumerate(zip(found["clip"], found["ella"], strict=False), start=1):
            lines.append(f"| {rank} | {clip[0]} ({clip[1]:.3f}) | {ella[0]} ({ella[1]:.3f}) |")
        queries = ", ".join(f"q{index} ({weight:.3f})" for index, weight in found["ella_queries"])
        lines += ["", f"ELLA's UNet reads these connector queries most there: {queries}"]
        return "\n".join(lines)
