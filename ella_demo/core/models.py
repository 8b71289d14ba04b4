"""The loaded-models container every run uses: the SD1.5 pipeline, the connector and FLAN-T5."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import StableDiffusionPipeline
from transformers import T5EncoderModel, T5Tokenizer

from ella_demo.core.adapters import AdapterSwitch, EmbeddingInfo, LoraInfo
from ella_demo.core.caching import LRUCache
from ella_demo.core.connector import ELLA
from ella_demo.core.devices import Placement
from ella_demo.core.text_encoding import CLIPPromptEncoder, T5PromptEncoder
from ella_demo.core.tracing import install_recording_processors


@dataclass(frozen=True)
class ModelProvenance:
    """Which models made a run and where they ran: what meta.json and the PNG text record."""

    preset: str
    random_weights: bool
    sources: dict[str, str]
    device: str
    additions: tuple[str, ...] = ()  # the LoRAs and embeddings loaded at start-up, described

    def to_dict(self) -> dict:
        return {"preset": self.preset, "random_weights": self.random_weights, "sources": self.sources,
                "device": self.device, "additions": list(self.additions)}  # fmt: skip


@dataclass
class LoadedModels:
    """Everything a generation needs, loaded once and shared read-only between requests.

    `pipe` is a diffusers StableDiffusionPipeline (unet, vae, text_encoder, tokenizer, scheduler);
    `ella` the connector; `t5`/`t5_tokenizer` the FLAN-T5 encoder. `t5_encoder` and
    `clip_encoder` wrap the text models with caches. `random_weights` is True for presets whose
    images are noise. `sources` records where each part came from, for the UI and meta files.
    `loras` lists the LoRAs loaded at start-up (loading/lora.py) and `embeddings` the textual-inversion
    tokens CLIP learned (loading/embeddings.py); `adapters` sets the LoRA weights of each run.
    """

    pipe: StableDiffusionPipeline
    ella: ELLA
    t5: T5EncoderModel
    t5_tokenizer: T5Tokenizer
    placement: Placement
    preset: str
    random_weights: bool
    sources: dict[str, str] = field(default_factory=dict)
    loras: tuple[LoraInfo, ...] = ()
    embeddings: tuple[EmbeddingInfo, ...] = ()
    t5_encoder: T5PromptEncoder = field(init=False)
    clip_encoder: CLIPPromptEncoder = field(init=False)
    condition_cache: LRUCache[torch.Tensor] = field(init=False)
    adapters: AdapterSwitch = field(init=False)

    def __post_init__(self) -> None:
        self.t5_encoder = T5PromptEncoder(self.t5, self.t5_tokenizer)
        self.clip_encoder = CLIPPromptEncoder(self.pipe.text_encoder, self.pipe.tokenizer)
        # Connector outputs for negative prompts, keyed by (prompt, length, timestep, device, dtype):
        # 1024 entries of 64x768 fp16 are about 100 MB.
        self.condition_cache = LRUCache(1024)
        self.adapters = AdapterSwitch(self.pipe, self.clip_encoder, lambda: self.loras)
        # Once, before any request: a traced run then passes its recorder per call and changes nothing shared.
        install_recording_processors(self.pipe.unet)

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        return self.placement.dtype

    @property
    def native_size(self) -> int:
        """The image side the UNet was built for, in pixels, as diffusers' pipelines default to it:
        the UNet's sample size times the VAE's scale factor (512 for SD1.5, 64 for tiny and pocket)."""
        return self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor

    def provenance(self) -> ModelProvenance:
        additions = [f"LoRA {lora.name}: {lora.describe()}" for lora in self.loras]
        additions += [f"embedding {item.token}: {item.describe()}" for item in self.embeddings]
        return ModelProvenance(
            self.preset, self.random_weights, dict(self.sources), self.placement.describe(), tuple(additions)
        )
