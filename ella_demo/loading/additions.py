"""What community-model users add at start-up: LoRAs, textual-inversion embeddings, and T5's memory options.

`load_models(memory=T5Memory(...), additions=Additions(...))` applies them once the models are assembled; the
command line's --lora, --lora-fuse, --embedding, --t5-device, --t5-offload and --t5-cache fill them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ella_demo.core.devices import Placement
from ella_demo.core.errors import InputError
from ella_demo.core.models import LoadedModels
from ella_demo.core.t5_memory import offload_between_encodings
from ella_demo.loading.embeddings import EmbeddingSpec, load_embeddings
from ella_demo.loading.feature_store import FeatureStore
from ella_demo.loading.lora import LoraSpec, load_loras


@dataclass(frozen=True)
class T5Memory:
    """Where T5 runs and what keeps it off the GPU (core/t5_memory.py).

    t5_device: "cpu" runs T5 on the CPU (in fp32, see `Placement.t5_caveat`); None: with the other models.
    offload: T5 rests in CPU memory and visits the GPU only while it encodes.
    cache: a folder of encoded prompts kept across runs and processes (loading/feature_store.py).
    """

    t5_device: str | None = None
    offload: bool = False
    cache: str | Path | None = None

    def check(self, placement: Placement) -> None:
        """Refuse offloading where it means nothing: T5 already on the CPU."""
        if self.offload and placement.t5_device.type == "cpu":
            raise InputError(
                "t5_offload",
                "moves T5 to the GPU only while it encodes, but T5 runs on the CPU here "
                f"({placement.describe()}). Drop it, or run on a GPU.",
            )

    def resting_device(self, placement: Placement) -> torch.device:
        """Where T5's weights live between encodings: the CPU when offloaded (never on the GPU at start-up)."""
        return torch.device("cpu") if self.offload else placement.t5_device

    def apply(self, models: LoadedModels) -> None:
        if self.offload:
            offload_between_encodings(models.t5_encoder, models.placement.t5_device)
        if self.cache is not None:
            keep_t5_features(models, self.cache)


@dataclass(frozen=True)
class Additions:
    """LoRAs (each with its default weight; `fuse_loras`: merged once, for every run) and CLIP embeddings."""

    loras: tuple[LoraSpec, ...] = ()
    fuse_loras: bool = False
    embeddings: tuple[EmbeddingSpec, ...] = ()

    def apply(self, models: LoadedModels) -> None:
        if self.loras:
            load_loras(models, self.loras, fuse=self.fuse_loras)
        if self.embeddings:
            load_embeddings(models, self.embeddings)


def keep_t5_features(models: LoadedModels, folder: str | Path) -> None:
    """Keep the text encoder's features in a store in `folder` (loading/feature_store.py), named after the encoder."""
    models.t5_encoder.use_store(FeatureStore(folder, t5_identity(models)))


def t5_identity(models: LoadedModels) -> str:
    """What names the text encoder in the features store: its source, or the weightless preset and seed."""
    sources = models.sources
    return f"{models.preset}|{sources.get('t5') or sources.get('weights', '')}"
