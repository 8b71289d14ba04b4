"""Any transformers text encoder in place of FLAN-T5: its folder, its weights check, and loading it.

A connector reads whatever features the encoder it was trained with makes, so a connector trained
on another encoder (a sentence-transformers MiniLM, a smaller FLAN-T5, ...) needs that encoder at
inference. transformers' own auto classes choose the model class from the folder's config: the
encoder-only class where transformers has one (`AutoModelForTextEncoding`: T5 -> T5EncoderModel,
no decoder), else the base model (`AutoModel`). Remote code is never run. The folder-resolving and
weights-checking helpers here also serve the default T5 encoder (t5.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    MODEL_FOR_TEXT_ENCODING_MAPPING,
    AutoConfig,
    AutoModel,
    AutoModelForTextEncoding,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ella_demo.loading.hub import ModelSourceError, fetch, missing_files
from ella_demo.loading.sd15 import use_safetensors
from ella_demo.loading.shipped import read_json
from ella_demo.loading.sources import HubLocation

# A tokenizer's vocabulary comes in one of these files, depending on its kind (fast tokenizers,
# SentencePiece, WordPiece, BPE).
TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "sentencepiece.bpe.model", "vocab.txt", "vocab.json")
# The files of a folder in the transformers layout that loading a text encoder reads; nothing else is
# fetched (hub repos also hold ONNX exports, pooling configs and the like).
TEXT_ENCODER_PATTERNS = [
    "config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "vocab.*",
    "*.model",
    "model*.safetensors",
    "model.safetensors.index.json",
]
PICKLE_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]


def missing_weight_files(folder: Path, allow_pickle: bool) -> list[str]:
    """What a transformers model folder lacks: its config, and one weights file or every shard its index lists."""
    missing = missing_files(folder, ["config.json"])
    stems = ["model.safetensors"] + (["pytorch_model.bin"] if allow_pickle else [])
    incomplete = []
    for stem in stems:
        if (folder / stem).is_file():
            return missing
        index = folder / f"{stem}.index.json"
        if index.is_file():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            lacking = [name for name in shards if not (folder / name).is_file()]
            if not lacking:
                return missing
            incomplete.extend(lacking)
    return missing + (incomplete or [" or ".join(f"{stem} (or its shards)" for stem in stems)])


def resolve_model_folder(
    source: Path | HubLocation,
    what: str,
    patterns: list[str],
    lacks: Callable[[Path], list[str]],
    cache_dir: str | Path | None,
) -> Path:
    """A local folder as given, or the hub folder's files matching `patterns`; either must lack nothing.

    Raises:
        MissingFilesError: a hub folder is neither cached whole nor downloadable.
        ModelSourceError: a local folder lacks files `lacks` names.
    """
    folder = fetch(source, patterns, what, cache_dir, lacks) if isinstance(source, HubLocation) else source
    missing = lacks(folder)
    if missing:
        raise ModelSourceError(f"The {what} folder {folder} lacks {', '.join(missing)}.")
    return folder


def resolve_text_encoder_folder(source: Path | HubLocation, allow_pickle: bool, cache_dir: str | Path | None) -> Path:
    """The folder of a text encoder given by `load_models(text_encoder=...)`, with weights and tokenizer."""

    def lacks(folder: Path) -> list[str]:
        return missing_weight_files(folder, allow_pickle) + missing_files(folder, [TOKENIZER_FILES])

    patterns = TEXT_ENCODER_PATTERNS + (PICKLE_PATTERNS if allow_pickle else [])
    return resolve_model_folder(source, "text encoder", patterns, lacks, cache_dir)


def load_text_encoder(
    folder: Path, dtype: torch.dtype, allow_pickle: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The encoder and tokenizer of a transformers folder, chosen by transformers' auto classes.

    The model returns `last_hidden_state` (1, L, hidden_size) for `input_ids` and `attention_mask`,
    all the prompt encoder asks of it. The tokenizer must be a fast one: its character offsets match
    the encoder's tokens to the prompt's words.

    Raises:
        ModelSourceError: the config names an architecture transformers does not know (it is never
            run as remote code), an encoder-decoder without an encoder-only class, or a slow tokenizer.
    """
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except ValueError as error:
        raise ModelSourceError(f"{folder} holds no text encoder transformers knows: {error}") from error
    auto_class = _auto_class(config, folder)
    model = auto_class.from_pretrained(
        folder, dtype=dtype, use_safetensors=use_safetensors(allow_pickle), trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelSourceError(
            f"The tokenizer in {folder} is a slow ({type(tokenizer).__name__}) one; the explorer needs a fast "
            "tokenizer (a tokenizer.json file) to place each token in the prompt."
        )
    positions = getattr(config, "max_position_embeddings", None)
    if positions and tokenizer.model_max_length > positions:
        # An unset limit reads as 10^30; the encoder's position table is the real one.
        tokenizer.model_max_length = positions
    return model, tokenizer


def _auto_class(config: PretrainedConfig, folder: Path) -> type:
    """AutoModelForTextEncoding when transformers has an encoder-only class for the config, else AutoModel."""
    if type(config) in MODEL_FOR_TEXT_ENCODING_MAPPING:
        return AutoModelForTextEncoding
    if getattr(config, "is_encoder_decoder", False):
        raise ModelSourceError(
            f"{folder} holds an encoder-decoder model ({config.model_type}) that transformers has no "
            "encoder-only class for; use a text encoder, or the encoder of a T5-family model."
        )
    return AutoModel


def text_width(model: PreTrainedModel) -> int:
    """The width of the features a text encoder makes (T5's `d_model`, other encoders' `hidden_size`)."""
    config = model.config
    return config.d_model if hasattr(config, "d_model") else config.hidden_size
