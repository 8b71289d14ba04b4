"""Turning trace arrays into the quantities the figures show. Pure numpy; never touches a model.

Shapes: T timesteps (or steps), B connector blocks, H heads, Q queries, L T5 tokens, K = Q + L
connector keys (the Q latents first), W word columns, h x w a map's spatial size.

Aggregation over blocks and heads defaults to the mean over all of them: the paper does not say how
Fig. 8 aggregates, each block's rows are distributions so their mean is one too, and no block is
privileged before looking. One block, one head, or one head of one block can be chosen instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from .text_encoders import Word

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


def combine_resolutions(maps: dict[str, np.ndarray], names: list[str] | None = None) -> np.ndarray:
    """Average chosen resolutions' maps (S, h_i, w_i, K) after bilinear upsampling to the largest: (S, h, w, K)."""
    chosen = names or list(maps)
    unknown = [name for name in chosen if name not in maps]
    if unknown:
        raise ValueError(f"unknown resolutions {unknown}; available: {', '.join(maps)}")
    target = max((maps[name].shape[1:3] for name in chosen), key=lambda size: size[0] * size[1])
    total = None
    for name in chosen:
        tensor = torch.from_numpy(maps[name].astype(np.float32)).permute(0, 3, 1, 2)
        if tuple(tensor.shape[-2:]) != tuple(target):
            tensor = functional.interpolate(tensor, size=target, mode="bilinear", align_corners=False)
        total = tensor if total is None else total + tensor
    return (total / len(chosen)).permute(0, 2, 3, 1).numpy()


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


def rank_at(word_maps: np.ndarray, labels: tuple[str, ...], row: int, col: int) -> list[tuple[str, float]]:
    """Words ranked by their map value at one cell: [(word, value)], largest first. word_maps (W, h, w)."""
    values = word_maps[:, row, col]
    return [(labels[index], float(values[index])) for index in np.argsort(-values, kind="stable")]


def top_queries_at(query_maps: np.ndarray, row: int, col: int, count: int = 5) -> list[tuple[int, float]]:
    """The queries the UNet attends to most at one cell: [(query index, attention)]. query_maps (h, w, Q)."""
    values = query_maps[row, col]
    return [(int(index), float(values[index])) for index in np.argsort(-values, kind="stable")[:count]]


# ---------------------------------------------------------------------------------------------
# Both sides of a traced run at once


@dataclass(frozen=True)
class SpatialWordMaps:
    """Word maps of both sides over one step window, on the same words.

    labels: the T5 words that CLIP's prompt also has (matched case-insensitively), in prompt
    order, repeats told apart by position ("a (1)", "a (5)").
    clip / ella: (W, h, w) maps for those words.
    ella_queries: (h, w, Q) the ELLA side's UNet attention to the connector queries (pixel probe).
    """

    labels: tuple[str, ...]
    clip: np.ndarray
    ella: np.ndarray
    ella_queries: np.ndarray
    window: str


def spatial_word_maps(trace, window: str | int = "all", resolutions: list[str] | None = None) -> SpatialWordMaps:
    """CLIP word maps and ELLA attention-flow maps of a traced two-sided run, same words, same window."""
    if not {"clip", "ella"} <= set(trace.sides) or trace.tsc_attention is None:
        raise ValueError("word maps need a traced run of both sides (sides='both', trace=True)")
    steps = window_steps(len(trace.timesteps), window)
    clip_columns = text_columns(trace.clip_words, 0)
    t5_columns = text_columns(trace.t5_words, 0)
    clip_index = {label.lower(): index for index, label in enumerate(clip_columns.labels)}
    shared = [index for index, label in enumerate(t5_columns.labels) if label.lower() in clip_index]
    clip_maps = clip_word_maps(
        combine_resolutions(trace.sides["clip"].cross_attention, resolutions), clip_columns, steps
    )
    ella_unet = combine_resolutions(trace.sides["ella"].cross_attention, resolutions)
    clip_keys = len(trace.clip_tokens) if trace.mode == "ella+clip" else 0
    ella_maps = ella_word_maps(ella_unet, trace.tsc_attention, t5_columns, steps, clip_keys)
    distinct = t5_columns.distinct_labels()
    labels = tuple(distinct[index] for index in shared)
    window_label = (
        "all steps" if window == "all" else (f"step {window}" if isinstance(window, int) else f"{window} steps")
    )
    return SpatialWordMaps(
        labels=labels,
        clip=clip_maps[[clip_index[t5_columns.labels[index].lower()] for index in shared]],
        ella=ella_maps[shared],
        ella_queries=ella_unet[steps].mean(axis=0)[..., clip_keys:],
        window=window_label,
    )


def pixel_probe(maps: SpatialWordMaps, x: float, y: float, image_size: tuple[int, int], count: int = 5) -> dict:
    """At image pixel (x, y): words ranked for each side, and ELLA's most-attended queries."""
    row, col = map_position(x, y, image_size, maps.clip.shape[1:])
    return {
        "clip": rank_at(maps.clip, maps.labels, row, col)[:count],
        "ella": rank_at(maps.ella, maps.labels, row, col)[:count],
        "ella_queries": top_queries_at(maps.ella_queries, row, col, count),
    }
