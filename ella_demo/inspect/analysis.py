"""Turning trace arrays into the quantities the figures show. Pure numpy; never touches a model.

Shapes: T timesteps (or steps), B connector blocks, H heads, Q queries, L T5 tokens, K = Q + L
connector keys (the Q latents first), W word columns, h x w a map's spatial size.

Aggregation over blocks and heads defaults to the mean over all of them: the paper does not say how
Fig. 8 aggregates, each block's rows are distributions so their mean is one too, and no block is
privileged before looking. One block, one head, or one head of one block can be chosen instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ella_demo.core.text_encoding import Word

NORMALISATIONS = {
    "paper": "each word divided by its own maximum over time (the paper's Fig. 8)",
    "share": "share of the attention that goes to prompt words; each row sums to 1",
    "change": "share minus the word's average share over time (red: above its average)",
    "raw": "mean attention from the queries, including the latents and end/padding tokens; rows sum to 1",
}
WINDOWS = ("all", "early", "middle", "late")


@dataclass(frozen=True)
class Aggregation:
    """Which blocks and heads to average: None means all of them."""

    block: int | None = None
    head: int | None = None

    def label(self) -> str:
        block = "all blocks" if self.block is None else f"block {self.block}"
        head = "all heads" if self.head is None else f"head {self.head}"
        return f"mean over {block}, {head}" if self.block is None or self.head is None else f"{block}, {head}"

    def apply(self, attention: np.ndarray) -> np.ndarray:
        """(..., B, H, Q, K) -> (..., Q, K)."""
        blocks, heads = attention.shape[-4], attention.shape[-3]
        for name, value, size in (("block", self.block, blocks), ("head", self.head, heads)):
            if value is not None and not 0 <= value < size:
                raise ValueError(f"{name} must be from 0 to {size - 1}, got {value}")
        selected = attention.astype(np.float32)
        selected = selected.mean(axis=-4) if self.block is None else selected[..., self.block, :, :, :]
        return selected.mean(axis=-3) if self.head is None else selected[..., self.head, :, :]


@dataclass(frozen=True)
class Columns:
    """Columns of a figure over the connector's key axis.

    groups[i] lists the key indices (0..K-1) of column i; kinds[i] is "word", "piece",
    "latents", "end" or "padding".
    """

    labels: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]
    kinds: tuple[str, ...]

    def distinct_labels(self) -> tuple[str, ...]:
        """Labels with repeats told apart by their position: "a (1)", ..., "a (6)"."""
        counts: dict[str, int] = {}
        for label in self.labels:
            counts[label] = counts.get(label, 0) + 1
        return tuple(
            f"{label} ({index + 1})" if counts[label] > 1 else label for index, label in enumerate(self.labels)
        )

    def reduce(self, values: np.ndarray, how: str = "sum") -> np.ndarray:
        """(..., K) -> (..., W): sum (for shares of attention) or mean (for maps) per column."""
        if not self.groups:
            return np.zeros((*values.shape[:-1], 0), dtype=values.dtype)
        reducer = np.sum if how == "sum" else np.mean
        return np.stack([reducer(values[..., list(group)], axis=-1) for group in self.groups], axis=-1)


def text_columns(words: tuple[Word, ...], offset: int, pieces: bool = False, tokens: tuple[str, ...] = ()) -> Columns:
    """Columns for the prompt's words (or raw pieces), special tokens left out.

    `offset` is where the text starts on the key axis (Q for the connector, 0 for CLIP maps).
    """
    labels, groups = [], []
    for word in words:
        if word.is_special:
            continue
        if pieces:
            for index in word.token_indices:
                labels.append(tokens[index] if tokens else word.text)
                groups.append((index + offset,))
        else:
            labels.append(word.text)
            groups.append(tuple(index + offset for index in word.token_indices))
    kind = "piece" if pieces else "word"
    return Columns(tuple(labels), tuple(groups), (kind,) * len(labels))


def connector_columns(words: tuple[Word, ...], num_latents: int, with_sinks: bool, pieces: bool = False,
                      tokens: tuple[str, ...] = ()) -> Columns:  # fmt: skip
    """Text columns, and with `with_sinks` also the latents, `</s>` and all padding as columns."""
    text = text_columns(words, num_latents, pieces, tokens)
    if not with_sinks:
        return text
    labels, groups, kinds = [f"latents ({num_latents})"], [tuple(range(num_latents))], ["latents"]
    labels += text.labels
    groups += text.groups
    kinds += text.kinds
    padding = [
        index + num_latents
        for word in words
        if word.is_special and word.text == "<pad>"
        for index in word.token_indices
    ]
    for word in words:
        if word.is_special and word.text != "<pad>":
            labels.append(word.text)
            groups.append(tuple(index + num_latents for index in word.token_indices))
            kinds.append("end")
    if padding:
        labels.append(f"padding ({len(padding)})")
        groups.append(tuple(padding))
        kinds.append("padding")
    return Columns(tuple(labels), tuple(groups), tuple(kinds))


@dataclass(frozen=True)
class TimeMap:
    """A (T, W) matrix of attention per timestep and column, with what it means."""

    values: np.ndarray
    columns: Columns
    timesteps: np.ndarray
    normalisation: str
    aggregation: str

    @property
    def note(self) -> str:
        return NORMALISATIONS[self.normalisation]


def received_attention(attention: np.ndarray, aggregation: Aggregation = Aggregation()) -> np.ndarray:
    """(T, B, H, Q, K) -> (T, K): attention each key receives, averaged over the queries."""
    return aggregation.apply(attention).mean(axis=-2)


def token_time_map(
    attention: np.ndarray,
    timesteps: np.ndarray,
    words: tuple[Word, ...],
    normalisation: str = "paper",
    aggregation: Aggregation = Aggregation(),
    pieces: bool = False,
    tokens: tuple[str, ...] = (),
) -> TimeMap:
    """The token x timestep map (paper Fig. 8) from connector attention (T, B, H, Q, Q + L)."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {normalisation!r}")
    num_latents = attention.shape[-2]
    received = received_attention(attention, aggregation)
    columns = connector_columns(words, num_latents, with_sinks=normalisation == "raw", pieces=pieces, tokens=tokens)
    grouped = columns.reduce(received, "sum")
    if normalisation == "paper":
        values = grouped / np.maximum(grouped.max(axis=0, keepdims=True), 1e-12)
    elif normalisation == "raw":
        values = grouped
    else:
        values = grouped / np.maximum(grouped.sum(axis=1, keepdims=True), 1e-12)
        if normalisation == "change":
            values = values - values.mean(axis=0, keepdims=True)
    return TimeMap(values, columns, np.asarray(timesteps), normalisation, aggregation.label())


def word_shares(
    attention: np.ndarray, words: tuple[Word, ...], aggregation: Aggregation = Aggregation()
) -> tuple[np.ndarray, Columns]:
    """(T, W) share of text attention per word and step (rows sum to 1), and the word columns."""
    shares = token_time_map(attention, np.arange(attention.shape[0]), words, "share", aggregation)
    return shares.values, shares.columns


def top_words(shares: np.ndarray, count: int = 6) -> list[int]:
    """Indices of the `count` words with the most attention summed over time, largest first."""
    return [int(index) for index in np.argsort(-shares.sum(axis=0), kind="stable")[:count]]


def text_share_per_block(attention: np.ndarray) -> np.ndarray:
    """(T, B, H, Q, Q + L) -> (T, B): fraction of each block's attention that goes to text (not latents)."""
    num_latents = attention.shape[-2]
    per_block = attention.astype(np.float32).mean(axis=(-3, -2))  # (T, B, K)
    return per_block[..., num_latents:].sum(axis=-1)


def query_word_matrix(step_attention: np.ndarray, words: tuple[Word, ...],
                      aggregation: Aggregation = Aggregation()) -> tuple[np.ndarray, np.ndarray, Columns]:  # fmt: skip
    """Query x word attention at one step, queries ordered so those reading the same word sit together.

    step_attention (B, H, Q, Q + L) -> matrix (Q, W) in the new row order, the order (Q,) of
    original query indices, and the word columns.
    """
    num_latents = step_attention.shape[-2]
    columns = text_columns(words, num_latents)
    per_query = columns.reduce(aggregation.apply(step_attention), "sum")  # (Q, W)
    favourite = per_query.argmax(axis=1)
    strength = per_query.max(axis=1)
    order = np.lexsort((-strength, favourite))
    return per_query[order], order, columns


def highlight(shares_row: np.ndarray, columns: Columns) -> list[tuple[str, float]]:
    """(word, score) pairs for gr.HighlightedText, score = share scaled so the top word is 1."""
    top = max(float(shares_row.max()), 1e-12)
    return [(label, float(value) / top) for label, value in zip(columns.labels, shares_row, strict=True)]


# ---------------------------------------------------------------------------------------------
# Attention flow through the connector


@dataclass(frozen=True)
class Flow:
    """How much of each query's final state came from each T5 token.

    text: (Q, L), rows sum to 1 (renormalised over text). text_fraction: (Q,) the part of each
    query's state that came from text at all (the rest stems from the learned latents).
    """

    text: np.ndarray
    text_fraction: np.ndarray


def rollout(step_attention: np.ndarray) -> Flow:
    """Roll attention out through the connector's blocks, counting the residual.

    With A_b the head-mean attention of block b split into A_qq (Q x Q, to latents) and A_qt
    (Q x L, to text), each block's update latent += attn(...) is modelled as an even mix of the
    residual and the attention output: the latent part S and the text part F evolve as
        S_b = 1/2 (I + A_qq) S_{b-1},      F_b = 1/2 (I + A_qq) F_{b-1} + 1/2 A_qt,
    from S_0 = I, F_0 = 0. Rows of [S_b | F_b] sum to 1 at every block. F is then renormalised
    over text. This is attention flow (after Abnar and Zuidema, 2020), not attribution.

    step_attention: (B, H, Q, Q + L).
    """
    mean = step_attention.astype(np.float64).mean(axis=1)  # (B, Q, K)
    num_latents = mean.shape[-2]
    identity = np.eye(num_latents)
    latent_part = identity.copy()
    text_part = np.zeros((num_latents, mean.shape[-1] - num_latents))
    for block in mean:
        mix = 0.5 * (identity + block[:, :num_latents])
        latent_part = mix @ latent_part
        text_part = mix @ text_part + 0.5 * block[:, num_latents:]
    fraction = text_part.sum(axis=1)
    return Flow(text_part / np.maximum(fraction[:, None], 1e-12), fraction)


# ---------------------------------------------------------------------------------------------
# Spatial maps


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


# ---------------------------------------------------------------------------------------------
# The prompt's words, matched to both encoders' tokens

# A word: letters and digits, keeping hyphens and apostrophes inside it ("well-lit", "don't") and
# the point or comma inside a number ("12.5", "1,000"). Anything else (punctuation, symbols,
# underscores, spaces) separates words and is no word itself.
_PART = r"[^\W_]+"  # letters and digits
WORD_PATTERN = re.compile(rf"(?:\d+(?:[.,]\d+)+|{_PART})(?:['’-]{_PART})*")


@dataclass(frozen=True)
class PromptWord:
    """One word of the prompt as typed: prompt[start:end] == text."""

    text: str
    start: int
    end: int


def prompt_words(prompt: str) -> tuple[PromptWord, ...]:
    """The prompt's words, in order, found in the text itself (so both encoders get the same words)."""
    return tuple(PromptWord(match.group(), match.start(), match.end()) for match in WORD_PATTERN.finditer(prompt))


def tokens_of_words(words: tuple[PromptWord, ...], offsets) -> tuple[tuple[int, ...], ...]:
    """For each word, the indices of the tokens read from its characters.

    offsets: the (start, end) character span of each token (TextEncoding.offsets). A token belongs
    to a word when their spans overlap, so "cat," gives "cat" its token and not the comma's, and a
    word split into pieces ("well-lit": well, -, lit) gets all of them. Zero-width spans (start,
    end and padding tokens) belong to no word; a word whose tokens were truncated away gets ().
    """
    spans = [(index, int(start), int(end)) for index, (start, end) in enumerate(offsets) if end > start]
    return tuple(tuple(index for index, start, end in spans if start < word.end and end > word.start) for word in words)


@dataclass(frozen=True)
class MatchedWords:
    """The prompt's words with each encoder's tokens for them.

    labels: the words in prompt order; a word that occurs more than once (ignoring case) carries
    its position among the prompt's words: "a (1)", "a (4)".
    t5 / clip: per word, its token indices on that encoder's token axis; () where the encoder lost
    the word (CLIP keeps 77 tokens, T5 at a fixed length keeps that many). Words that neither
    encoder kept are left out.
    """

    labels: tuple[str, ...]
    t5: tuple[tuple[int, ...], ...]
    clip: tuple[tuple[int, ...], ...]

    def presence(self, index: int) -> str:
        """Where the word was kept: "both", "T5 only" or "CLIP only"."""
        if self.t5[index] and self.clip[index]:
            return "both"
        return "T5 only" if self.t5[index] else "CLIP only"

    @property
    def t5_only(self) -> tuple[str, ...]:
        return tuple(label for index, label in enumerate(self.labels) if self.presence(index) == "T5 only")

    @property
    def clip_only(self) -> tuple[str, ...]:
        return tuple(label for index, label in enumerate(self.labels) if self.presence(index) == "CLIP only")

    def choices(self) -> tuple[str, ...]:
        """The labels as a word list shows them: "lamp (T5 only)" for a word one encoder lost."""
        return tuple(
            label if self.presence(index) == "both" else f"{label} ({self.presence(index)})"
            for index, label in enumerate(self.labels)
        )

    def find(self, word: str) -> int | None:
        """The index of a word given by its choice or its label, else None."""
        for names in (self.choices(), self.labels):
            if word in names:
                return names.index(word)
        return None

    def columns(self, side: str, offset: int = 0) -> tuple[list[int], Columns]:
        """The words `side` ("t5" or "clip") has, and their columns over its token axis from `offset`."""
        groups = self.t5 if side == "t5" else self.clip
        kept = [index for index, tokens in enumerate(groups) if tokens]
        columns = Columns(
            tuple(self.labels[index] for index in kept),
            tuple(tuple(token + offset for token in groups[index]) for index in kept),
            ("word",) * len(kept),
        )
        return kept, columns


def match_words(prompt: str, t5_offsets, clip_offsets) -> MatchedWords:
    """Match the prompt's words to both encoders' tokens through the tokens' character spans."""
    words = prompt_words(prompt)
    t5, clip = tokens_of_words(words, t5_offsets), tokens_of_words(words, clip_offsets)
    kept = [index for index in range(len(words)) if t5[index] or clip[index]]
    counts: dict[str, int] = {}
    for word in words:
        counts[word.text.casefold()] = counts.get(word.text.casefold(), 0) + 1
    labels = tuple(
        f"{words[index].text} ({index + 1})" if counts[words[index].text.casefold()] > 1 else words[index].text
        for index in kept
    )
    return MatchedWords(labels, tuple(t5[index] for index in kept), tuple(clip[index] for index in kept))


def words_by_attention(attention: np.ndarray, words: MatchedWords) -> list[int]:
    """Word indices by the share of the connector's text attention they get over the run, largest first.

    attention: (T, B, H, Q, Q + L). Words T5 lost come last, in prompt order.
    """
    kept, columns = words.columns("t5", offset=attention.shape[-2])
    grouped = columns.reduce(received_attention(attention), "sum")
    shares = grouped / np.maximum(grouped.sum(axis=1, keepdims=True), 1e-12)
    ranked = [kept[index] for index in top_words(shares, len(kept))]
    return ranked + [index for index in range(len(words.labels)) if index not in ranked]


# ---------------------------------------------------------------------------------------------
# Both sides of a traced run at once


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
