"""The connector's attention over time: token x timestep maps, word shares, queries and rollout.

Pure numpy; never touches a model. Shapes: T timesteps (or steps), B connector blocks, H heads,
Q queries, L T5 tokens, K = Q + L connector keys (the Q latents first), W word columns.

Aggregation over blocks and heads defaults to the mean over all of them: the paper does not say how
Fig. 8 aggregates, each block's rows are distributions so their mean is one too, and no block is
privileged before looking. One block, one head, or one head of one block can be chosen instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ella_demo.inspect.word_matching import Columns, MatchedWords, text_columns

if TYPE_CHECKING:
    from ella_demo.core.text_encoding import Word

NORMALISATIONS = {
    "paper": "each word divided by its own maximum over time (the paper's Fig. 8)",
    "share": "share of the attention that goes to prompt words; each row sums to 1",
    "change": "share minus the word's average share over time (red: above its average)",
    "raw": "mean attention from the queries, including the latents and end/padding tokens; rows sum to 1",
}


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
