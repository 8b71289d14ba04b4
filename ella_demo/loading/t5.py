"""The FLAN-T5 encoder folder and its tokenizer (fetched from FLAN-T5-XL's repo when the folder has none)."""

from __future__ import annotations

from pathlib import Path

from transformers import T5Tokenizer

from ella_demo.loading.hub import ModelSourceError, fetch, missing_files
from ella_demo.loading.shipped import read_json
from ella_demo.loading.sources import T5_TOKENIZER_SOURCE, HubLocation


def resolve_t5_folder(source: Path | HubLocation, allow_pickle: bool, cache_dir: str | Path | None) -> Path:
    if isinstance(source, HubLocation):
        patterns = ["*.json", "*.safetensors", "spiece.model"] + (["*.bin"] if allow_pickle else [])
        folder = fetch(
            source, patterns, "T5 text encoder", cache_dir, lambda folder: _missing_t5_files(folder, allow_pickle)
        )
    else:
        folder = source
    missing = _missing_t5_files(folder, allow_pickle)
    if missing:
        raise ModelSourceError(f"The T5 encoder folder {folder} lacks {', '.join(missing)}.")
    return folder


def _missing_t5_files(folder: Path, allow_pickle: bool) -> list[str]:
    """What a T5 encoder folder lacks: its config, and one weights file or every shard its index lists."""
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
