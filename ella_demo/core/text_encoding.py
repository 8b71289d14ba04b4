"""Prompt encoding for both sides of the comparison: T5 for ELLA, CLIP for plain SD1.5.

Each encoder returns a `TextEncoding`: the features, the attention mask, the token strings, the
tokens grouped into words (for figures) and each token's character span in the prompt (to match
the two encoders' tokens word by word). Results are cached in a small LRU keyed by
(prompt, length mode, device, dtype), so a repeated prompt skips the encoder; the empty prompt,
used for classifier-free guidance, is pinned and computed once per model and length mode.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import torch

from ella_demo.core.caching import LRUCache
from ella_demo.core.errors import ExplorerError

FLEXIBLE = "flexible"
DEFAULT_T5_LENGTH = 128  # the token length ELLA was trained with


class TextEncoderReleasedError(ExplorerError):
    """A prompt was asked of a text encoder that was released after the prompts of its job were encoded."""


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than an encoder accepts and its tail was dropped."""


@dataclass(frozen=True)
class Word:
    """A word of the prompt as the tokenizer split it.

    `token_indices` index the token axis of the encoding; `is_special` marks tokens such as
    `</s>`, `<pad>` or `<|endoftext|>` that carry no prompt text.
    """

    text: str
    token_indices: tuple[int, ...]
    is_special: bool = False


def has_words(words: tuple[Word, ...]) -> bool:
    """Whether any word carries prompt text: False for an empty prompt (only `</s>` or padding)."""
    return any(not word.is_special for word in words)


@dataclass(frozen=True)
class PromptTokens:
    """How one encoder split a prompt, without its features (what results and traces keep).

    tokens: the L token strings. words: the tokens grouped into words. offsets: L (start, end)
    character spans in the prompt, (0, 0) for tokens that carry no prompt text.
    """

    tokens: tuple[str, ...] = ()
    words: tuple[Word, ...] = ()
    offsets: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class TextEncoding:
    """One prompt, encoded.

    features: (1, L, d) last hidden states on the encoder's device and dtype.
    attention_mask: (1, L) int64, 1 for real tokens, 0 for padding.
    tokens: the L token strings. words: the tokens grouped into words.
    dropped_tokens: how many tokens truncation removed (0 when the prompt fitted).
    offsets: L (start, end) character spans: token i was read from prompt[start:end]; (0, 0) for
        tokens that carry no prompt text (start, end and padding tokens).
    """

    prompt: str
    features: torch.Tensor
    attention_mask: torch.Tensor
    tokens: tuple[str, ...]
    words: tuple[Word, ...]
    dropped_tokens: int
    max_length: int
    offsets: tuple[tuple[int, int], ...]

    @property
    def prompt_tokens(self) -> PromptTokens:
        return PromptTokens(self.tokens, self.words, self.offsets)

    @property
    def truncation_message(self) -> str | None:
        """A sentence for the user when tokens were dropped, else None."""
        if not self.dropped_tokens:
            return None
        return (
            f"The prompt is {self.max_length + self.dropped_tokens} tokens long; this encoder keeps "
            f"{self.max_length}, so the last {self.dropped_tokens} tokens were dropped."
        )


def group_words(
    tokens: tuple[str, ...],
    special_tokens: set[str],
    marks_start: str = "",
    marks_end: str = "",
    marks_continuation: str = "",
    whole_words: frozenset[str] = frozenset(),
) -> tuple[Word, ...]:
    """Group tokens into words, by a start-of-word prefix (T5's `▁`), an end suffix (CLIP's `</w>`) or a
    continuation prefix (WordPiece's `##`, as in BERT and MiniLM: every other token starts a word).

    Special tokens each form their own word, and so does each token in `whole_words` (words added to a
    tokenizer, such as textual-inversion tokens, which carry no marker). Word text strips the markers, so
    "▁red", "red</w>" and "re" + "##d" all read "red".
    """
    words: list[Word] = []
    current: list[int] = []

    def flush() -> None:
        if current:
            text = "".join(tokens[i] for i in current)
            text = text.replace(marks_start, "") if marks_start else text
            text = text.replace(marks_end, "") if marks_end else text
            text = text.replace(marks_continuation, "") if marks_continuation else text
            words.append(Word(text, tuple(current)))
            current.clear()

    for index, token in enumerate(tokens):
        if token in special_tokens:
            flush()
            words.append(Word(token, (index,), is_special=True))
            continue
        if token in whole_words:
            flush()
            words.append(Word(token, (index,)))
            continue
        if (marks_start and token.startswith(marks_start)) or (
            marks_continuation and not token.startswith(marks_continuation)
        ):
            flush()
        current.append(index)
        if marks_end and token.endswith(marks_end):
            flush()
    flush()
    return tuple(words)


def wordpiece_continuation(tokenizer) -> str:
    """The continuation prefix ("##") of a WordPiece tokenizer (BERT, MiniLM), else "" (T5's SentencePiece)."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return getattr(decoder, "prefix", "") if type(decoder).__name__ == "WordPiece" else ""


def expand_multi_vector_tokens(prompt: str, counts: dict[str, int]) -> tuple[str, list[int], list[int]]:
    """`prompt` with " token_1 ... token_{n-1}" after each use of a token of n vectors (diffusers' layout).

    Also returns, for each character of the result, the start and end in `prompt` of what it was read
    from: itself, or for an added character the whole token it follows.
    """
    pattern = re.compile("|".join(re.escape(token) for token in sorted(counts, key=len, reverse=True)))
    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    done = 0
    for match in pattern.finditer(prompt):
        added = "".join(f" {match.group()}_{index}" for index in range(1, counts[match.group()]))
        pieces += [prompt[done : match.end()], added]
        starts += [*range(done, match.end()), *[match.start()] * len(added)]
        ends += [*range(done + 1, match.end() + 1), *[match.end()] * len(added)]
        done = match.end()
    pieces.append(prompt[done:])
    starts += range(done, len(prompt))
    ends += range(done + 1, len(prompt) + 1)
    return "".join(pieces), starts, ends


class _CachedEncoder:
    """Shared caches and tokenize -> run -> package flow of both encoders.

    Besides the in-memory LRU, an encoder may have a `store` on disk (loading/feature_store.py) that it reads
    before encoding and writes after. `running` wraps each run of the model (offloading: it is on the GPU
    only inside). `execution_device` is where it runs when that is not where its weights rest (offloaded or
    released); `model` is None once released, and a prompt in no cache then raises TextEncoderReleasedError.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, cache_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.cache = LRUCache[TextEncoding](cache_size)
        # What else decides the features (CLIP: the LoRA weights in force, core/adapters.py); part of every key.
        self.variant: tuple = ()
        self.store = None  # a loading/feature_store.FeatureStore, when features are kept on disk
        self.running: Callable[[], AbstractContextManager] = nullcontext
        self.offloaded = None  # the core/t5_memory.OffloadedWhileIdle behind `running`, when offloaded
        self.execution_device: torch.device | None = None
        self.dtype: torch.dtype = next(model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return self.execution_device or next(self.model.parameters()).device

    def use_store(self, store) -> None:
        """Keep encodings in `store` from now on; the memory cache starts empty, so every prompt passes the store."""
        self.store = store
        self.cache.clear()

    def _encode_cached(self, prompt: str, length_key, max_length: int, pad: bool) -> TextEncoding:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        key = (prompt, length_key, str(self.device), self.dtype, self.variant)
        encoding = self.cache.get_or_compute(
            key, lambda: self._encode_stored(prompt, length_key, max_length, pad), pin=prompt == "" and not self.variant
        )
        if encoding.dropped_tokens:
            warnings.warn(f"{type(self).__name__}: {encoding.truncation_message}", PromptTruncatedWarning, stacklevel=3)
        return encoding

    def _encode_stored(self, prompt: str, length_key, max_length: int, pad: bool) -> TextEncoding:
        """From the store when it holds the prompt, else encoded (and stored)."""
        found = self.store.get(prompt, length_key, self.dtype, self.device) if self.store is not None else None
        if found is not None:
            return found
        if self.model is None:
            raise TextEncoderReleasedError(
                f"The text encoder was released after its job's prompts were encoded, and {prompt[:80]!r} was not "
                "among them. Encode every prompt before releasing it."
            )
        encoding = self._encode(prompt, max_length, pad)
        if self.store is not None:
            self.store.put(encoding, length_key, self.dtype)
        return encoding

    def _encode(self, prompt: str, max_length: int, pad: bool) -> TextEncoding:
        full_length = len(self.tokenizer(prompt, truncation=False, verbose=False)["input_ids"])
        batch = self.tokenizer(
            prompt,
            padding="max_length" if pad else False,
            max_length=max_length,
            truncation=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        with torch.no_grad(), self.running():
            features = self._run(input_ids, attention_mask)
        tokens = tuple(self.tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist()))
        words = self._group(tokens)
        # Tokenizers give special tokens (0, 0) already; zeroing them here keeps that true for any tokenizer.
        special = {index for word in words if word.is_special for index in word.token_indices}
        offsets = tuple(
            (0, 0) if index in special else (int(start), int(end))
            for index, (start, end) in enumerate(batch["offset_mapping"][0].tolist())
        )
        return TextEncoding(
            prompt=prompt,
            features=features,
            attention_mask=attention_mask,
            tokens=tokens,
            words=words,
            dropped_tokens=max(0, full_length - max_length),
            max_length=max_length,
            offsets=offsets,
        )

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _group(self, tokens: tuple[str, ...]) -> tuple[Word, ...]:
        raise NotImplementedError


class T5PromptEncoder(_CachedEncoder):
    """FLAN-T5 encoder features for ELLA.

    Length modes: `"flexible"` keeps the prompt's own length (no padding; prompts longer than the
    tokenizer's limit, 512 for T5, are truncated) and an int N pads or truncates to N tokens
    (128 is ELLA's training length).
    """

    def encode(self, prompt: str, length: int | str = FLEXIBLE) -> TextEncoding:
        """Encode one prompt: features (1, L, d_model) with L = its token count or `length`."""
        if length == FLEXIBLE:
            return self._encode_cached(prompt, FLEXIBLE, self.tokenizer.model_max_length, pad=False)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"T5 length must be 'flexible' or a positive int (ELLA used 128), got {length!r}")
        if length > self.tokenizer.model_max_length:
            raise ValueError(f"T5 length {length} exceeds the tokenizer's limit of {self.tokenizer.model_max_length}")
        return self._encode_cached(prompt, length, length, pad=True)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _group(self, tokens: tuple[str, ...]) -> tuple[Word, ...]:
        special = set(self.tokenizer.all_special_tokens)
        continuation = wordpiece_continuation(self.tokenizer)
        if continuation:
            return group_words(tokens, special, marks_continuation=continuation)
        return group_words(tokens, special, marks_start="▁")


class CLIPPromptEncoder(_CachedEncoder):
    """CLIP text features for the plain SD1.5 side: always padded or truncated to 77 tokens.

    `multi_vector_tokens` maps a textual-inversion token with n > 1 vectors to n (loading/embeddings.py):
    CLIP's tokenizer holds it as `token`, `token_1`, ..., `token_{n-1}`, so the prompt is read with the
    extra tokens after each use, and their offsets point at the word the user wrote.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, cache_size: int = 64):
        super().__init__(model, tokenizer, cache_size)
        self.multi_vector_tokens: dict[str, int] = {}

    def encode(self, prompt: str) -> TextEncoding:
        """Encode one prompt: features (1, 77, hidden)."""
        return self._encode_cached(prompt, "max", self.tokenizer.model_max_length, pad=True)

    def _encode(self, prompt: str, max_length: int, pad: bool) -> TextEncoding:
        if not self.multi_vector_tokens:
            return super()._encode(prompt, max_length, pad)
        expanded, starts, ends = expand_multi_vector_tokens(prompt, self.multi_vector_tokens)
        encoding = super()._encode(expanded, max_length, pad)
        offsets = tuple((0, 0) if end == 0 else (starts[start], ends[end - 1]) for start, end in encoding.offsets)
        return replace(encoding, prompt=prompt, offsets=offsets)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # SD1.5 was trained without CLIP's attention mask; the padding tokens' states are part of
        # the condition the UNet expects.
        return self.model(input_ids=input_ids)[0]

    def _group(self, tokens: tuple[str, ...]) -> tuple[Word, ...]:
        special = set(self.tokenizer.all_special_tokens)
        added = frozenset(self.tokenizer.added_tokens_encoder) - special
        words = group_words(tokens, special, marks_end="</w>", whole_words=added)
        extra = {f"{token}_{index}" for token, count in self.multi_vector_tokens.items() for index in range(1, count)}
        merged: list[Word] = []
        for word in words:  # a multi-vector token's extra tokens belong to the word the user wrote
            if merged and word.text in extra:
                merged[-1] = Word(merged[-1].text, merged[-1].token_indices + word.token_indices)
            else:
                merged.append(word)
        return tuple(merged)
