"""The FLAN-T5 encoder folder and its tokenizer (fetched from FLAN-T5-XL's repo when the folder has none)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import T5EncoderModel, T5Tokenizer

from ella_demo.loading.hub import fetch, missing_files
from ella_demo.loading.sd15 import use_safetensors
from ella_demo.loading.sources import T5_TOKENIZER_SOURCE, HubLocation
from ella_demo.loading.text_encoders import missing_weight_files, resolve_model_folder


def resolve_t5_folder(source: Path | HubLocation, allow_pickle: bool, cache_dir: str | Path | None) -> Path:
    """The T5 encoder's folder (config and weights; the tokenizer may come from elsewhere, see below)."""
    patterns = ["*.json", "*.safetensors", "spiece.model"] + (["*.bin"] if allow_pickle else [])
    return resolve_model_folder(
        source, "T5 text encoder", patterns, lambda folder: missing_weight_files(folder, allow_pickle), cache_dir
    )


def load_t5(
    folder: Path, dtype: torch.dtype, allow_pickle: bool, cache_dir: str | Path | None
) -> tuple[T5EncoderModel, T5Tokenizer, str]:
    """The T5 encoder of `folder`, its tokenizer, and where the tokenizer came from."""
    model = T5EncoderModel.from_pretrained(folder, dtype=dtype, use_safetensors=use_safetensors(allow_pickle))
    return model, *load_t5_tokenizer(folder, cache_dir)


def _has_t5_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()


def load_t5_tokenizer(folder: Path, cache_dir: str | Path | None) -> tuple[T5Tokenizer, str]:
    """The tokenizer saved beside the encoder, else FLAN-T5-XL's own (same vocabulary, a few MB)."""
    if _has_t5_tokenizer(folder):
        return T5Tokenizer.from_pretrained(folder), str(folder)
    fetched = fetch(
        T5_TOKENIZER_SOURCE,
        ["spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"],
        "T5 tokenizer",
        cache_dir,
        lambda fetched: missing_files(fetched, [("tokenizer.json", "spiece.model")]),
    )
    return T5Tokenizer.from_pretrained(fetched), str(T5_TOKENIZER_SOURCE)
