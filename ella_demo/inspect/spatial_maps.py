"""Where each word lands in the image: CLIP cross-attention maps and ELLA attention-flow maps.

Pure numpy; never touches a model. Shapes: S steps, h x w a map's spatial size, K UNet keys
(CLIP's tokens, or the connector's Q queries), B connector blocks, H heads, L T5 tokens,
W words.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ella_demo.inspect.connector_attention import rollout
from ella_demo.inspect.word_matching import Columns, MatchedWords, match_words, prompt_words

WINDOWS = ("all", "early", "middle", "late")


def window_steps(num_steps: int, window: str | int) -> np.ndarray:
    """Step indices of a window: all, early / middle / late thirds, or one step index."""
    if isinstance(window, int | np.integer) and not isinstance(window, bool):
        if not 0 <= window < num_steps:
            raise ValueError(f"step must be from 0 to {num_steps - 1}, got {window}")
        return np.array([int(window)])
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(WINDOWS)} or a step index, got {window!r}")
    if window == "all":
        return np.arange(num_steps)
    thirds = np.array_split(np.arange(num_steps), 3)
    return thirds[WINDOWS.index(window) - 1] if num_steps >= 3 else np.arange(num_steps)


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(S, h, w, K) -> (S, *size, K) float32, bilinear like torch's interpolate(align_corners=False).

    Output cell i reads the input at (i + 0.5) * in / out - 0.5, clamped at 0 (half-pixel centres),
    and interpolates between the two nearest input cells, the last one repeated at the edge.
    """
    resized = maps.astype(np.float32)
    for axis, target in ((1, size[0]), (2, size[1])):
        length = resized.shape[axis]
        if length == target:
            continue
        source = np.maximum((np.arange(target, dtype=np.float32) + 0.5) * np.float32(length / target) - 0.5, 0)
        low = np.minimum(source.astype(np.int64), length - 1)
        high = np.minimum(low + 1, length - 1)
        weight = (source - low).astype(np.float32).reshape([-1 if index == axis else 1 for index in range(4)])
        resized = np.take(resized, low, axis=axis) * (1 - weight) + np.take(resized, high, axis=axis) * weight
    return resized


def combine_resolutions(maps: dict[str, np.ndarray], names: list[str] | None = None) -> np.ndarray:
    """Average chosen resolutions' maps (S, h_i, w_i, K) after bilinear upsampling to the largest: (S, h, w, K)."""
    chosen = names or list(maps)
    unknown = [name for name in chosen if name not in maps]
    if unknown:
        raise ValueError(f"unknown resolutions {unknown}; available: {', '.join(maps)}")
    target = max((maps[name].shape[1:3] for name in chosen), key=lambda size: size[0] * size[1])
    return sum(resize_bilinear(maps[name], target) for name in chosen) / np.float32(len(chosen))


def clip_word_maps(maps: np.ndarray, columns: Columns, steps: np.ndarray) -> np.ndarray:
    """CLIP cross-attention maps (S, h, w, 77) -> (W, h, w): mean over the window and the word's tokens."""
    return np.moveaxis(columns.reduce(maps[steps].mean(axis=0), "mean"), -1, 0)


def ella_word_maps(maps: np.ndarray, tsc_attention: np.ndarray, columns: Columns, steps: np.ndarray,
                   num_clip_keys: int = 0) -> np.ndarray:  # fmt: skip
    """Attention flow pixel -> query -> T5 token, as (W, h, w) word maps over the step window.

    maps: (S, h, w, K_unet) UNet cross-attention of the ELLA side; its last Q keys are the
    connector's queries (ella+clip mode puts `num_clip_keys` CLIP tokens first; they are left
    out and the query part is renormalised). tsc_attention: (S, B, H, Q, Q + L). columns: text
    columns with offset 0 over the T5 tokens. Per step, pixel_to_token = pixel_to_query @
    rollout(step).text; words are the mean over their tokens, then the mean over the window.
    """
    total = None
    for step in steps:
        to_queries = maps[step, ..., num_clip_keys:].astype(np.float64)
        to_queries = to_queries / np.maximum(to_queries.sum(axis=-1, keepdims=True), 1e-12)
        to_tokens = to_queries @ rollout(tsc_attention[step]).text  # (h, w, L)
        words = columns.reduce(to_tokens, "mean")
        total = words if total is None else total + words
    return np.moveaxis(total / len(steps), -1, 0).astype(np.float32)


def shared_scale(*maps: np.ndarray) -> tuple[float, float]:
    """(0, max) over all given maps: one colour scale for both sides."""
    return 0.0, float(max(np.max(item) for item in maps))


def spatial_distribution(word_map: np.ndarray) -> np.ndarray:
    """(h, w) map scaled to sum to 1."""
    return word_map / max(float(word_map.sum()), 1e-12)


def difference_map(ella_map: np.ndarray, clip_map: np.ndarray) -> np.ndarray:
    """ELLA minus CLIP, each first normalised to a spatial distribution: (h, w), sums to 0."""
    return spatial_distribution(ella_map) - spatial_distribution(clip_map)


def map_position(x: float, y: float, image_size: tuple[int, int], map_size: tuple[int, int]) -> tuple[int, int]:
    """Image pixel (x right, y down) -> (row, column) of a map cell covering it."""
    width, height = image_size
    rows, cols = map_size
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"({x}, {y}) is outside the {width}x{height} image")
    return min(int(y * rows / height), rows - 1), min(int(x * cols / width), cols - 1)


def rank_at(word_maps: np.ndarray, labels: tuple[str, ...], row: int, col: int,
            present: np.ndarray | None = None) -> list[tuple[str, float]]:  # fmt: skip
    """Words ranked by their map value at one cell: [(word, value)], largest first. word_maps (W, h, w).

    present: (W,) bool, the words to rank (the others are left out); None ranks them all.
    """
    values = word_maps[:, row, col]
    order = np.argsort(-values, kind="stable")
    if present is not None:
        order = order[np.asarray(present, dtype=bool)[order]]
    return [(labels[index], float(values[index])) for index in order]


def top_queries_at(query_maps: np.ndarray, row: int, col: int, count: int = 5) -> list[tuple[int, float]]:
    """The queries the UNet attends to most at one cell: [(query index, attention)]. query_maps (h, w, Q)."""
    values = query_maps[row, col]
    return [(int(index), float(values[index])) for index in np.argsort(-values, kind="stable")[:count]]


@dataclass(frozen=True)
class SpatialWordMaps:
    """Word maps of both sides over one step window, on the prompt's words.

    words: the prompt's words and each encoder's tokens for them; `labels` are their names.
    clip / ella: (W, h, w) maps of those words; all zero on a side whose encoder lost the word
        (see `presence`: a word cut off by CLIP's 77 tokens is "T5 only").
    ella_queries: (h, w, Q) the ELLA side's UNet attention to the connector queries (pixel probe).
    """

    words: MatchedWords
    clip: np.ndarray
    ella: np.ndarray
    ella_queries: np.ndarray
    window: str

    @property
    def labels(self) -> tuple[str, ...]:
        return self.words.labels

    @property
    def t5_only(self) -> tuple[str, ...]:
        return self.words.t5_only

    @property
    def clip_only(self) -> tuple[str, ...]:
        return self.words.clip_only

    def presence(self, index: int) -> str:
        return self.words.presence(index)

    def choices(self) -> tuple[str, ...]:
        return self.words.choices()

    def find(self, word: str) -> int | None:
        return self.words.find(word)


def _window_label(window: str | int) -> str:
    if window == "all":
        return "all steps"
    return f"step {window}" if isinstance(window, int | np.integer) else f"{window} steps"


def spatial_word_maps(trace, window: str | int = "all", resolutions: list[str] | None = None) -> SpatialWordMaps:
    """CLIP word maps and ELLA attention-flow maps of a traced two-sided run, same words, same window."""
    if not {"clip", "ella"} <= set(trace.sides) or trace.tsc_attention is None:
        raise ValueError("word maps need a traced run of both sides (sides='both', trace=True)")
    if prompt_words(trace.prompt) and not (trace.t5_offsets and trace.clip_offsets):
        raise ValueError("this trace has no token offsets to match words with; trace the run again")
    steps = window_steps(len(trace.timesteps), window)
    words = match_words(trace.prompt, trace.t5_offsets, trace.clip_offsets)
    clip_unet = combine_resolutions(trace.sides["clip"].cross_attention, resolutions)
    ella_unet = combine_resolutions(trace.sides["ella"].cross_attention, resolutions)
    clip_keys = len(trace.clip_tokens) if trace.mode == "ella+clip" else 0
    shape = (len(words.labels), *clip_unet.shape[1:3])
    clip_maps, ella_maps = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    kept, columns = words.columns("clip")
    if kept:
        clip_maps[kept] = clip_word_maps(clip_unet, columns, steps)
    kept, columns = words.columns("t5")
    if kept:
        ella_maps[kept] = ella_word_maps(ella_unet, trace.tsc_attention, columns, steps, clip_keys)
    return SpatialWordMaps(
        words=words,
        clip=clip_maps,
        ella=ella_maps,
        ella_queries=ella_unet[steps].mean(axis=0)[..., clip_keys:],
        window=_window_label(window),
    )


def pixel_probe(maps: SpatialWordMaps, x: float, y: float, image_size: tuple[int, int], count: int = 5) -> dict:
    """At image pixel (x, y): words ranked for each side, and ELLA's most-attended queries.

    Each side ranks the words its encoder kept, named as in `maps.choices()` ("lamp (T5 only)").
    """
    row, col = map_position(x, y, image_size, maps.clip.shape[1:])
    choices = maps.choices()
    in_clip = np.array([bool(tokens) for tokens in maps.words.clip], dtype=bool)
    in_t5 = np.array([bool(tokens) for tokens in maps.words.t5], dtype=bool)
    return {
        "clip": rank_at(maps.clip, choices, row, col, in_clip)[:count],
        "ella": rank_at(maps.ella, choices, row, col, in_t5)[:count],
        "ella_queries": top_queries_at(maps.ella_queries, row, col, count),
    }
