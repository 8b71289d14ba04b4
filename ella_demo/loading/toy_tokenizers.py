"""Small CLIP and T5 tokenizers built in-process, for the weightless presets.

The real tokenizers live on the model hub, which this project's tests cannot reach. These are
real `transformers` tokenizer classes (CLIP byte-level BPE, T5 SentencePiece-style Unigram) over
a short English word list (`vocabulary.txt`): listed words become whole tokens, anything else
falls back to letters, so English text never produces an unknown token. The CLIP one ends words
with `</w>` and the T5 one starts them with `▁`, like the real ones, so word grouping code is
exercised the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from importlib import resources
from itertools import pairwise

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, T5Tokenizer

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512

_ASCII_SYMBOLS = [chr(code) for code in range(33, 127)]


@cache
def vocabulary_words() -> tuple[str, ...]:
    """The word list, in file order, without duplicates or comment lines."""
    text = resources.files("ella_demo.loading").joinpath("vocabulary.txt").read_text(encoding="utf-8")
    words: dict[str, None] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            words.update(dict.fromkeys(line.split()))
    return tuple(words)


def build_clip_tokenizer(words: Iterable[str] | None = None) -> CLIPTokenizer:
    """A byte-level BPE tokenizer with every byte as a token and `words` (default: the word list) merged in."""
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    vocab: dict[str, int] = {bos: 0, eos: 1}
    # `alphabet()` returns a Rust hash set whose order changes from process to process; sorted, the
    # ids are the same in every process (and follow the real CLIP vocabulary's byte order).
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        for token in (symbol, symbol + "</w>"):
            vocab.setdefault(token, len(vocab))
    ranks: dict[tuple[str, str], int] = {}
    for word in vocabulary_words() if words is None else words:
        # Join the pieces the merges so far leave of the word, left to right, until it is one token; each new
        # merge ranks after every earlier one, so no later word can split an earlier word again.
        while len(pieces := _bpe_pieces(word, ranks)) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
    return CLIPTokenizer(
        vocab=vocab,
        merges=list(ranks),
        unk_token=eos,
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        model_max_length=CLIP_MAX_LENGTH,
    )


def _bpe_pieces(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The tokens byte-level BPE makes of `word` with the merges `ranks` (pair -> rank, lower first)."""
    pieces = [*word[:-1], word[-1] + "</w>"]
    while len(pieces) > 1:
        rank, index = min((ranks.get(pair, len(ranks)), index) for index, pair in enumerate(pairwise(pieces)))
        if rank == len(ranks):
            break
        pieces[index : index + 2] = [pieces[index] + pieces[index + 1]]
    return pieces


def build_t5_tokenizer() -> T5Tokenizer:
    """A Unigram tokenizer: whole words (`▁word`, `▁Word`) score higher than letter spellings."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(symbol, -10.0) for symbol in _ASCII_SYMBOLS]
    for word in vocabulary_words():
        pieces.append(("▁" + word, -5.0))
        if word[0].isalpha():
            pieces.append(("▁" + word[0].upper() + word[1:], -6.0))
    unique = list(dict(pieces).items())
    return T5Tokenizer(vocab=unique, extra_ids=0, model_max_length=T5_MAX_LENGTH)
