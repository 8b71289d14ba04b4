"""What the browser shows for a run, rendered from its cached trace: no model work happens here.

`RunViews` wraps one traced generation (kept per browser session) and renders each view for the
controls' current values: a step, a block/head choice, a normalisation, a word and a window.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image

from ella_demo.core.caching import LRUCache
from ella_demo.core.engine import GenerationResult
from ella_demo.core.errors import InputError
from ella_demo.core.text_encoding import has_words
from ella_demo.inspect import analysis, figures

WINDOW_CHOICES = ("this step", "all", "early", "middle", "late")
# Spatial maps kept per session: the four named windows and the last few steps scrubbed to. One
# entry is about 1 MB at 512 px (two (W, 32, 32) maps and the (32, 32, 64) query map).
MAP_CACHE_SIZE = 8


def parse_aggregation(block: str, head: str) -> analysis.Aggregation:
    """UI choices ("mean" or a number as text) -> Aggregation."""
    return analysis.Aggregation(
        block=None if block in ("mean", "", None) else int(block),
        head=None if head in ("mean", "", None) else int(head),
    )


@dataclass
class RunViews:
    """One traced run and the renders derived from it; spatial maps cached per window (a bounded LRU)."""

    result: GenerationResult
    _maps: LRUCache[analysis.SpatialWordMaps] = field(default_factory=lambda: LRUCache(MAP_CACHE_SIZE))

    @property
    def trace(self):
        return self.result.trace

    @property
    def steps(self) -> int:
        return len(self.trace.timesteps)

    @property
    def has_words(self) -> bool:
        """False for an empty prompt: the connector views have nothing to show."""
        return has_words(self.trace.t5_words)

    @cached_property
    def words(self) -> analysis.MatchedWords:
        """The prompt's words matched to both encoders' tokens."""
        trace = self.trace
        return analysis.match_words(trace.prompt, trace.t5_offsets, trace.clip_offsets)

    def word_choices(self) -> list[str]:
        """Every word of the prompt, "lamp (T5 only)" for a word CLIP's 77 tokens cut off."""
        return list(self.words.choices())

    def default_word(self) -> str | None:
        """The word both sides read that the connector attends to most over the run, for the first word maps."""
        if not self.words.labels:
            return None
        ranked = analysis.words_by_attention(self.trace.tsc_attention, self.words)
        both = [index for index in ranked if self.words.presence(index) == "both"]
        return self.words.choices()[(both or ranked)[0]]

    def spatial(self, window) -> analysis.SpatialWordMaps:
        return self._maps.get_or_compute(window, lambda: analysis.spatial_word_maps(self.trace, window))

    def _require_words(self) -> None:
        if not self.has_words:
            raise InputError("prompt", "is empty, so there are no words to show: type a prompt and generate again.")

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
        self._require_words()
        matrix, order, columns = analysis.query_word_matrix(
            self.trace.tsc_attention[step], self.trace.t5_words, aggregation
        )
        figure = figures.query_word_figure(
            matrix, columns, order, step, self.trace.timesteps[step], aggregation.label()
        )
        return figures.to_image(figure)

    def highlighted_prompt(self, step: int, aggregation: analysis.Aggregation) -> list[tuple[str, float]]:
        self._require_words()
        shares, columns = analysis.word_shares(
            self.trace.tsc_attention[step : step + 1], self.trace.t5_words, aggregation
        )
        return analysis.highlight(shares[0], columns)

    def token_time(self, normalisation: str, aggregation: analysis.Aggregation, pieces: bool = False) -> Image.Image:
        self._require_words()
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
        self._require_words()
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
        """Both sides' maps of one word (a label or a word-list choice), over a window or this step."""
        if not self.words.labels:
            raise InputError("word", "cannot be shown: the prompt has no words to map.")
        index = self.words.find(word)
        if index is None:
            raise InputError("word", f"{word!r} is not a word of the prompt; pick one from the list.")
        maps = self.spatial(self._window(window, step))
        present = maps.presence(index)
        figure = figures.word_maps_figure(
            np.asarray(self.result.clip_images[0]),
            np.asarray(self.result.ella_images[0]),
            None if present == "T5 only" else maps.clip[index],
            None if present == "CLIP only" else maps.ella[index],
            maps.labels[index],
            maps.window,
            shared_scale,
        )
        return figures.to_image(figure)

    def pixel_probe(self, x: float, y: float, window: str, step: int) -> str:
        """Markdown: the words ranked at (x, y) for each model, and ELLA's top queries there."""
        heading = f"**At pixel ({int(x)}, {int(y)})**"
        if not self.words.labels:
            return f"{heading}: the prompt has no words to rank."
        maps = self.spatial(self._window(window, step))
        found = analysis.pixel_probe(maps, x, y, self.result.clip_images[0].size)
        lines = [
            f"{heading}, {maps.window}:",
            "",
            "| rank | CLIP | ELLA (attention flow) |",
            "| --- | --- | --- |",
        ]
        for rank, (clip, ella) in enumerate(itertools.zip_longest(found["clip"], found["ella"]), start=1):
            cells = [f"{item[0]} ({item[1]:.3f})" if item else "" for item in (clip, ella)]
            lines.append(f"| {rank} | {cells[0]} | {cells[1]} |")
        queries = ", ".join(f"q{index} ({weight:.3f})" for index, weight in found["ella_queries"])
        lines += ["", f"ELLA's UNet reads these connector queries most there: {queries}"]
        if maps.t5_only:
            lines += ["", f"T5 only (past CLIP's 77 tokens, so only ELLA ranks them): {', '.join(maps.t5_only)}"]
        if maps.clip_only:
            lines += ["", f"CLIP only (past the T5 length, so only CLIP ranks them): {', '.join(maps.clip_only)}"]
        return "\n".join(lines)
