"""Textual-inversion embeddings for CLIP, through diffusers' own loading, from safetensors only.

Two layouts are read: A1111's (`emb_params`: (n, 768); the token is the file's name unless given) and
diffusers' (`{token: (768,) or (n, 768)}`). Each adds its token to CLIP's tokenizer and its n vectors to
CLIP's embedding table, for the CLIP side and `ella+clip`; T5 never sees them. An n-vector token is
written into prompts as one word and expanded by the CLIP encoder (core/text_encoding.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ella_demo.core.adapters import EmbeddingInfo
from ella_demo.core.models import LoadedModels
from ella_demo.loading.addition_files import AdapterFileError, quiet_libraries, read_safetensors

A1111_KEY = "emb_params"


@dataclass(frozen=True)
class EmbeddingSpec:
    """An embedding file and the token prompts use for it (`--embedding FILE[:TOKEN]`; None: from the file)."""

    path: Path
    token: str | None = None


def load_embeddings(models: LoadedModels, specs: Sequence[EmbeddingSpec]) -> None:
    """Teach CLIP each embedding's token. Sets `models.embeddings` and the CLIP encoder's multi-vector tokens.

    Raises:
        AdapterFileError: a file is unreadable or not safetensors, holds no single embedding, has the wrong
            width for this CLIP, or its token is already a word CLIP knows.
    """
    try:
        for spec in specs:
            models.embeddings = (*models.embeddings, _load_one(models, spec))
    finally:
        models.clip_encoder.cache.clear()


def _load_one(models: LoadedModels, spec: EmbeddingSpec) -> EmbeddingInfo:
    """Check one file's embedding against this CLIP, then add its token(s) and vector(s)."""
    token, vectors = _token_and_vectors(spec, read_safetensors(spec.path, "Embedding"))
    width = models.pipe.text_encoder.get_input_embeddings().weight.shape[-1]
    if vectors.shape[-1] != width:
        raise AdapterFileError(
            f"Embedding {spec.path.name} has {vectors.shape[-1]}-wide vectors; this CLIP reads {width}-wide ones "
            "(SD1.5: 768). Use an embedding trained for SD1.5."
        )
    if token in models.pipe.tokenizer.get_vocab():
        raise AdapterFileError(
            f"Embedding {spec.path.name}: CLIP already knows the token {token!r}. Give another with FILE:TOKEN."
        )
    try:
        with quiet_libraries():
            models.pipe.load_textual_inversion(vectors.to(models.dtype), token=token)
    except ValueError as error:  # e.g. the extra tokens of a multi-vector embedding are taken
        raise AdapterFileError(f"Embedding {spec.path.name} could not be added to CLIP: {error}") from None
    if vectors.shape[0] > 1:
        models.clip_encoder.multi_vector_tokens[token] = vectors.shape[0]
    return EmbeddingInfo(token, spec.path.name, vectors.shape[0])


def _token_and_vectors(spec: EmbeddingSpec, tensors: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
    """The token and its (n, width) vectors from a file's tensors, in either layout."""
    if len(tensors) != 1:
        raise AdapterFileError(
            f"Embedding {spec.path.name} holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); an SD1.5 "
            f"embedding holds one ({A1111_KEY!r} in A1111's layout, its token in diffusers')."
        )
    key, vectors = next(iter(tensors.items()))
    token = spec.token or (spec.path.stem if key == A1111_KEY else key)
    if vectors.ndim not in (1, 2) or vectors.numel() == 0:
        shape = tuple(vectors.shape)
        raise AdapterFileError(f"Embedding {spec.path.name}: expected (n, width) vectors, got shape {shape}.")
    if not token.strip() or any(mark.isspace() for mark in token):
        raise AdapterFileError(
            f"Embedding {spec.path.name}: its token must be one word, got {token!r}. Give one: FILE:TOKEN."
        )
    return token, vectors.reshape(-1, vectors.shape[-1]).float()
