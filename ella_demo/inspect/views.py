"""The views of a run or a probe: every figure derived from a traced result or a probe result.

This is the one place views are assembled; no model work happens here. The app renders them for
the controls' current values, and the report writes them to files.

`ConnectorViews` draws the connector's attention alone, of a traced run or of a probe.
`RunViews` wraps one traced generation (kept per browser session) and adds what needs both sides:
the x0 previews and the word maps. `compare_probes` sets two probes side by side.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image

from ella_demo.core.caching import LRUCache
from ella_demo.core.errors import InputError
from ella_demo.core.probe import ProbeResult
from ella_demo.core.results import GenerationResult
from ella_demo.core.text_encoding import Word, has_words
from ella_demo.core.tracing import Trace
from ella_demo.inspect import connector_attention, figures, spatial_maps
from ella_demo.inspect.connector_attention import Aggregation, TimeMap
from ella_demo.inspect.spatial_maps import SpatialWordMaps
from ella_demo.inspect.word_matching import MatchedWords, match_words

WINDOW_CHOICES = ("this step", "all", "early", "middle", "late")
# Spatial maps kept per session: the four named windows and the last few steps scrubbed to. One
# entry is about 1 MB at 512 px (two (W, 32, 32) maps and the (32, 32, 64) query map).
MAP_CACHE_SIZE = 8
MAX_PREVIEW_STEPS = 8
MEAN_OVER_ALL = Aggregation()  # the default: the mean over all blocks and all heads


def parse_aggregation(block: str, head: str) -> Aggregation:
    """UI choices ("mean" or a number as text) -> Aggregation."""
    return Aggregation(
        block=None if block in ("mean", "", None) else int(block),
        head=None if head in ("mean", "", None) else int(head),
    )


@dataclass(frozen=True)
class ConnectorViews:
    """One prompt's connector attention over time, and the figures drawn from it.

    attention: (T, B, H, Q, Q + L), None for a run without the ELLA side; timesteps: (T,) high
    noise first; words: the T5 words grouping the L tokens; tokens: (L,) the T5 pieces.
    """

    prompt: str
    attention: np.ndarray | None
    timesteps: np.ndarray
    words: tuple[Word, ...]
    tokens: tuple[str, ...]

    @classmethod
    def of_trace(cls, trace: Trace) -> ConnectorViews:
        return cls(trace.prompt, trace.tsc_attention, trace.timesteps, trace.t5_words, trace.t5_tokens)

    @classmethod
    def of_probe(cls, result: ProbeResult) -> ConnectorViews:
        return cls(result.prompt, result.attention, result.timesteps, result.words, result.tokens)

    @property
    def has_words(self) -> bool:
        """False for an empty prompt: the connector views have nothing to show."""
        return has_words(self.words)

    def _require_words(self) -> None:
        if not self.has_words:
            raise InputError("prompt", "is empty, so there are no words to show: type a prompt and generate again.")

    def time_map(self, normalisation: str = "paper", aggregation: Aggregation = MEAN_OVER_ALL,
                 pieces: bool = False) -> TimeMap:  # fmt: skip
        """The (T, W) token x timestep map (paper Fig. 8), over words or, with `pieces`, T5 pieces."""
        self._require_words()
        return connector_attention.token_time_map(
            self.attention, self.timesteps, self.words, normalisation, aggregation, pieces=pieces, tokens=self.tokens
        )

    def token_time(self, normalisation: str = "paper", aggregation: Aggregation = MEAN_OVER_ALL, pieces: bool = False,
                   title: str = figures.TOKEN_TIME_TITLE) -> Image.Image:  # fmt: skip
        return figures.to_image(figures.token_time_figure(self.time_map(normalisation, aggregation, pieces), title))

    def share_curves(self, aggregation: Aggregation = MEAN_OVER_ALL) -> Image.Image:
        """The most-read words' share of text attention over time, beside each block's share of text."""
        self._require_words()
        shares, columns = connector_attention.word_shares(self.attention, self.words, aggregation)
        figure = figures.word_share_figure(
            shares,
            columns,
            self.timesteps,
            connector_attention.top_words(shares),
            connector_attention.text_share_per_block(self.attention),
        )
        return figures.to_image(figure)

    def query_heatmap(self, step: int, aggregation: Aggregation = MEAN_OVER_ALL) -> Image.Image:
        """Queries x words at one step (0-based), queries grouped by the word they read most."""
        self._require_words()
        matrix, order, columns = connector_attention.query_word_matrix(self.attention[step], self.words, aggregation)
        figure = figures.query_word_figure(matrix, columns, order, step, self.timesteps[step], aggregation.label())
        return figures.to_image(figure)

    def highlighted_prompt(self, step: int, aggregation: Aggregation = MEAN_OVER_ALL) -> list[tuple[str, float]]:
        """(word, score) pairs at one step, the most-read word scoring 1."""
        self._require_words()
        shares, columns = connector_attention.word_shares(self.attention[step : step + 1], self.words, aggregation)
        return connector_attention.highlight(shares[0], columns)

    def animation_frames(self, aggregation: Aggregation = MEAN_OVER_ALL) -> list[Image.Image]:
        """One frame per step: queries x words beside the word shares, on one colour scale (a GIF's frames)."""
        self._require_words()
        matrices = [
            connector_attention.query_word_matrix(step_attention, self.words, aggregation)[0]
            for step_attention in self.attention
        ]
        shares, columns = connector_attention.word_shares(self.attention, self.words, aggregation)
        vmax = max(float(matrix.max()) for matrix in matrices)
        return figures.animation_frames(matrices, shares, columns, self.timesteps, vmax)


def compare_probes(first: ConnectorViews, second: ConnectorViews, normalisation: str = "paper") -> Image.Image:
    """Two prompts' token x timestep maps side by side on one colour scale, titled with the prompts."""
    figure = figures.compare_token_time_figure(
        first.time_map(normalisation), second.time_map(normalisation), first.prompt, second.prompt
    )
    return figures.to_image(figure)


@dataclass
class RunViews:
    """One traced run and the renders derived from it; spatial maps cached per window (a bounded LRU)."""

    result: GenerationResult
    _maps: LRUCache[SpatialWordMaps] = field(default_factory=lambda: LRUCache(MAP_CACHE_SIZE))

    @property
    def trace(self) -> Trace:
        return self.result.trace

    @property
    def steps(self) -> int:
        return len(self.trace.timesteps)

    @cached_property
    def connector(self) -> ConnectorViews:
        """The connector's views of this run's prompt."""
        return ConnectorViews.of_trace(self.trace)

    @property
    def has_words(self) -> bool:
        """False for an empty prompt: the connector views have nothing to show."""
        return self.connector.has_words

    @cached_property
    def words(self) -> MatchedWords:
        """The prompt's words matched to both encoders' tokens."""
        trace = self.trace
        return match_words(trace.prompt, trace.t5_offsets, trace.clip_offsets)

    def word_choices(self) -> list[str]:
        """Every word of the prompt, "lamp (T5 only)" for a word CLIP's 77 tokens cut off."""
        return list(self.words.choices())

    def ranked_words(self) -> list[int]:
        """Word indices by the connector's attention to them over the run, largest first."""
        return connector_attention.words_by_attention(self.trace.tsc_attention, self.words)

    def default_word(self) -> str | None:
        """The word both sides read that the connector attends to most over the run, for the first word maps."""
        if not self.words.labels:
            return None
        ranked = self.ranked_words()
        both = [index for index in ranked if self.words.presence(index) == "both"]
        return self.words.choices()[(both or ranked)[0]]

    def spatial(self, window) -> SpatialWordMaps:
        return self._maps.get_or_compute(window, lambda: spatial_maps.spatial_word_maps(self.trace, window))

    def _window(self, window: str, step: int):
        return step if window == "this step" else window

    def previews(self, step: int) -> tuple[Image.Image, Image.Image]:
        """Both sides' x0 previews of the first image at `step`, enlarged to the image size."""
        size = self.result.clip_images[0].size
        return tuple(
            Image.fromarray(self.trace.sides[side].previews[step, 0]).resize(size, Image.NEAREST)
            for side in ("clip", "ella")
        )

    def preview_strip(self, max_steps: int = MAX_PREVIEW_STEPS) -> Image.Image:
        """Both sides' x0 previews at up to `max_steps` steps spread over the run, CLIP above ELLA."""
        shown = np.unique(np.linspace(0, self.steps - 1, min(max_steps, self.steps)).round().astype(int))
        clip, ella = self.trace.sides["clip"], self.trace.sides["ella"]
        figure = figures.preview_strip_figure(clip.previews, ella.previews, shown, self.trace.timesteps)
        return figures.to_image(figure)

    def query_heatmap(self, step: int, aggregation: Aggregation) -> Image.Image:
        return self.connector.query_heatmap(step, aggregation)

    def highlighted_prompt(self, step: int, aggregation: Aggregation) -> list[tuple[str, float]]:
        return self.connector.highlighted_prompt(step, aggregation)

    def token_time(self, normalisation: str, aggregation: Aggregation, pieces: bool = False) -> Image.Image:
        return self.connector.token_time(normalisation, aggregation, pieces)

    def share_curves(self, aggregation: Aggregation) -> Image.Image:
        return self.connector.share_curves(aggregation)

    def animation_frames(self, aggregation: Aggregation = MEAN_OVER_ALL) -> list[Image.Image]:
        return self.connector.animation_frames(aggregation)

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
        found = spatial_maps.pixel_probe(maps, x, y, self.result.clip_images[0].size)
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
