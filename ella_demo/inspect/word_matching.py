"""The prompt's words, matched to both encoders' tokens, and the columns they make on a key axis.

A column groups the key indices of one word (or one token piece); figures and maps reduce
attention over those groups. Shapes: K keys (tokens, or the connector's Q latents then L T5
tokens), W word columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ella_demo.core.text_encoding import Word

# A word: letters and digits, keeping hyphens and apostrophes inside it ("well-lit", "don't") and
# the point or comma inside a number ("12.5", "1,000"). Anything else (punctuation, symbols,
# underscores, spaces) separates words and is no word itself.
_PART = r"[^\W_]+"  # letters and digits
WORD_PATTERN = re.compile(rf"(?:\d+(?:[.,]\d+)+|{_PART})(?:['’-]{_PART})*")


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
