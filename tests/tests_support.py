"""Small helpers shared by tests that are not fixtures."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_tiny_bert(folder: Path, words: list[str], width: int) -> Path:
    """A one-layer BERT encoder `width` wide and its fast WordPiece tokenizer (the given words, then
    single letters, so any lower-case text tokenizes), saved as a hub folder holds them."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *dict.fromkeys(words),
        *letters,
        *(f"##{c}" for c in letters),
    ]
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)}, model_max_length=64)
    config = BertConfig(vocab_size=len(vocab), hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
