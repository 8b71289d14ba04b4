"""The frozen encoders' outputs for connector training: computed per batch, or once into a disk cache.

UNet, VAE, T5 and CLIP are frozen while the connector trains, so what they make of a sample is a
pure function of the sample. `FeatureEncoder` computes it online; `build_feature_cache` writes it
once into a folder of `.npy` arrays that `FeatureCache` reads back through memory maps (O(1)
random access, no pickle), so a long run never holds the text encoder next to the UNet.

Both paths give the same tensors bit for bit: features are stored in the dtype the encoder made
(fp16 and fp32 as such; bf16, which numpy lacks, as its raw bits in int16: exact, and as small).
The VAE's posterior is stored as mean and std; `sample_latents` draws fresh noise every step, as
online encoding would. Kernels can depend on the batch size (the VAE's convolutions do even on a
CPU), so a sample encoded in another batch may differ in its last bits; `batch_invariant=True`
encodes sample by sample, and then a sample's features never depend on its batch-mates.

Size per sample, FLAN-T5-XL at 128 tokens in fp16 and SD1.5 at 512 px: text 128 x 2048 x 2 bytes
= 512 KiB, latent mean and std 2 x 4 x 64 x 64 x 2 bytes = 64 KiB, CLIP (only for `ella+clip`)
77 x 768 x 2 bytes = 115.5 KiB; so about 5.5 GiB per 10,000 samples without CLIP.

Folder: `manifest.json` (the description it was built for, the sample count, each array's shape
and dtype), one `<name>.npy` per feature (sample index first), the empty prompt's features, and
`done.npy`, one bool per sample, set once its rows are flushed: a killed build loses one batch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from torch.utils.data import default_collate
from tqdm import tqdm

from ella_demo.core.errors import ExplorerError
from ella_demo.core.models import LoadedModels
from ella_demo.loading.text_encoders import text_width

MANIFEST = "manifest.json"
DONE = "done.npy"
FORMAT_VERSION = 1
# numpy has no bfloat16: its raw bits go into an int16 array and are viewed back on reading.
STORAGE = {torch.float16: np.float16, torch.float32: np.float32, torch.bfloat16: np.int16}


class FeatureCacheError(ExplorerError):
    """A feature cache folder does not fit the run: built for other settings, or incomplete."""


@dataclass
class EncodedBatch:
    """What the frozen encoders make of a batch of B samples.

    text_features: (B, L, C) in the text encoder's dtype. clip_features: (B, 77, D) in CLIP's dtype,
    or None (only the `ella+clip` training mode needs CLIP). latent_mean, latent_std: (B, 4, h, w),
    the VAE's posterior before scaling (sampling happens per step, see `sample_latents`).
    """

    text_features: torch.Tensor
    clip_features: torch.Tensor | None
    latent_mean: torch.Tensor
    latent_std: torch.Tensor

    def to(self, device: torch.device | str) -> EncodedBatch:
        """The same batch on `device`, dtypes unchanged."""
        moved = {item.name: getattr(self, item.name) for item in fields(self)}
        return EncodedBatch(**{name: None if value is None else value.to(device) for name, value in moved.items()})


def sample_latents(
    mean: torch.Tensor, std: torch.Tensor, scaling_factor: float, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, 4, h, w) posterior mean and std -> (B, 4, h, w) scaled latents: (mean + std * noise) * scaling_factor.

    The noise is drawn exactly as diffusers' `DiagonalGaussianDistribution.sample(generator)` draws
    it (`randn_tensor` in mean's shape, device and dtype), so this equals
    `vae.encode(x).latent_dist.sample(generator) * scaling_factor` bit for bit.
    """
    noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return (mean + std * noise) * scaling_factor


class FeatureEncoder:
    """The frozen encoders of `models`, batched, without gradients.

    Text encoder: `models.t5` / `models.t5_tokenizer` (T5, or any transformers encoder whose
    forward takes input_ids and attention_mask and returns last_hidden_state). CLIP:
    `models.pipe.text_encoder` / `models.pipe.tokenizer`, used only when `with_clip`. VAE:
    `models.pipe.vae`. `description` lists what the features depend on; it keys the disk cache.
    `batch_invariant`: encode one sample at a time (slower), for exact online-versus-cache runs.
    """

    def __init__(
        self, models: LoadedModels, text_length: int = 128, with_clip: bool = False, batch_invariant: bool = False
    ):
        if isinstance(text_length, bool) or not isinstance(text_length, int) or text_length < 1:
            raise ValueError(f"text_length must be a positive int (ELLA trained with 128), got {text_length!r}")
        self.models, self.text_length = models, text_length
        self.with_clip, self.batch_invariant = with_clip, batch_invariant
        self._empty: tuple[torch.Tensor, torch.Tensor | None] | None = None
        text_encoder, vae = models.t5, models.pipe.vae
        self.description = {
            "text_encoder": models.sources.get("t5"),
            "text_encoder_class": type(text_encoder).__name__,
            "text_hidden_size": text_width(text_encoder),
            "text_dtype": str(text_encoder.dtype),
            "text_length": text_length,
            "with_clip": with_clip,
            "clip_dtype": str(models.pipe.text_encoder.dtype) if with_clip else None,
            "vae_latent_channels": vae.config.latent_channels,
            "vae_scaling_factor": vae.config.scaling_factor,
            "vae_dtype": str(vae.dtype),
            "sd15": models.sources.get("sd15"),
            # Weightless presets have no sources but their seed, which `weights` records.
            "preset": models.preset,
            "weights": models.sources.get("weights"),
        }

    def _split(self, encode, items) -> tuple:
        """encode(items), or with batch_invariant encode of each item alone, concatenated."""
        if not self.batch_invariant:
            return encode(items)
        parts = [encode(items[index : index + 1]) for index in range(len(items))]
        return tuple(None if outputs[0] is None else torch.cat(outputs) for outputs in zip(*parts, strict=True))

    def encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """B captions -> text features (B, L, C) and CLIP features (B, 77, D) or None.

        Text: padded or truncated to `text_length` tokens, run with the attention mask (as ELLA's
        T5 path does; longer captions lose their tail, as in ELLA's training). CLIP: padded to 77
        tokens and run without the mask, as SD1.5 was trained (see `CLIPPromptEncoder`).
        """
        return self._split(self._encode_captions, list(captions))

    @torch.no_grad()
    def _encode_captions(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        text_encoder, tokens = self.models.t5, _tokens(self.models.t5_tokenizer, captions, self.text_length)
        inputs = {key: tokens[key].to(text_encoder.device) for key in ("input_ids", "attention_mask")}
        text = text_encoder(**inputs).last_hidden_state
        if not self.with_clip:
            return text, None
        clip_tokenizer, clip = self.models.pipe.tokenizer, self.models.pipe.text_encoder
        clip_ids = _tokens(clip_tokenizer, captions, clip_tokenizer.model_max_length)["input_ids"]
        return text, clip(input_ids=clip_ids.to(clip.device))[0]

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [-1, 1] -> the VAE posterior's mean and std, each (B, 4, H/8, W/8).

        The pixels are cast to the VAE's device and dtype first; the outputs are in the VAE's dtype.
        """
        return self._split(self._encode_images, pixel_values)

    @torch.no_grad()
    def _encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vae = self.models.pipe.vae
        posterior = vae.encode(pixel_values.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return posterior.mean, posterior.std

    def encode(self, batch: dict) -> EncodedBatch:
        """A DataLoader-collated batch (pixel_values (B, 3, R, R), caption: B strings) -> EncodedBatch."""
        text, clip = self.encode_captions(batch["caption"])
        mean, std = self.encode_images(batch["pixel_values"])
        return EncodedBatch(text, clip, mean, std)

    def empty_prompt(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features of "": text (1, L, C) and CLIP (1, 77, D) or None; what caption dropout substitutes
        (the unconditional branch of classifier-free guidance). Computed once."""
        if self._empty is None:
            self._empty = self.encode_captions([""])
        return self._empty


def _tokens(tokenizer, captions: list[str], length: int) -> dict:
    """Token ids and attention masks (B, length): padded, and truncated (a long caption loses its tail)."""
    return tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt")


def normalised(description: dict) -> dict:
    """The description as JSON would give it back (tuples as lists, other objects as strings)."""
    return json.loads(json.dumps(description, sort_keys=True, default=str))


def cache_description(encoder_description: dict, source_description: dict) -> dict:
    """What a cache folder is keyed by: the encoders' settings and the data's own description."""
    return normalised({"features": encoder_description, "data": source_description})


def _flatten(description: dict, prefix: str = "") -> dict:
    """Nested keys as dotted names ("features.text_length"), to name the ones that differ."""
    flat = {}
    for key, value in description.items():
        flat |= _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat


def _check_description(folder: Path, stored: dict, expected: dict) -> None:
    stored, expected = _flatten(normalised(stored)), _flatten(normalised(expected))
    differing = sorted(key for key in stored.keys() | expected.keys() if stored.get(key) != expected.get(key))
    if differing:
        details = "; ".join(
            f"{key}: cache has {stored.get(key)!r}, this run {expected.get(key)!r}" for key in differing
        )
        raise FeatureCacheError(
            f"The feature cache in {folder} was built for other models, data or settings ({details}). "
            "Delete the folder or pick another --feature-cache."
        )


def _check_fits(folder: Path, manifest: dict, description: dict, num_samples: int) -> None:
    _check_description(folder, manifest["description"], description)
    if manifest["num_samples"] != num_samples:
        raise FeatureCacheError(
            f"The feature cache in {folder} holds {manifest['num_samples']} samples, the data has "
            f"{num_samples}. Delete the folder or pick another --feature-cache."
        )


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype not in STORAGE:
        raise FeatureCacheError(f"Features in {tensor.dtype} cannot be cached; run the encoders in fp16, bf16 or fp32.")
    tensor = tensor.detach().cpu()
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _to_torch(array: np.ndarray, dtype_name: str) -> torch.Tensor:
    """Rows read from a memory map (copied, so the tensor owns its memory) -> a tensor of `dtype_name`."""
    tensor = torch.from_numpy(np.array(array))
    return tensor.view(torch.bfloat16) if dtype_name == "bfloat16" else tensor


def _spec(tensor: torch.Tensor) -> dict:
    return {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def create_feature_cache(encoder: FeatureEncoder, dataset, folder: Path, *, source_description: dict) -> dict:
    """Create the cache files in `folder` for len(dataset) samples, empty, and return the manifest; idempotent.

    Call it on one process only (process 0) and synchronise (barrier) before any process runs
    `build_feature_cache` on the folder; `build_feature_cache` calls it itself on process 0, so a
    single process needs nothing else. The manifest is written last, so a creation cut short is
    redone. Per-sample shapes and dtypes come from the empty prompt's features and the encoded
    pixels of sample 0, whatever the encoders are.

    Raises:
        FeatureCacheError: the folder holds a cache built for another description or sample count.
    """
    folder = Path(folder)
    description = cache_description(encoder.description, source_description)
    manifest = _read_manifest(folder)
    if manifest is not None:
        _check_fits(folder, manifest, description, len(dataset))
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    empty_text, empty_clip = encoder.empty_prompt()
    mean, std = encoder.encode_images(dataset[0]["pixel_values"][None])
    per_sample = {"text_features": empty_text[0], "latent_mean": mean[0], "latent_std": std[0]}
    if empty_clip is not None:
        per_sample["clip_features"] = empty_clip[0]
    for name, example in per_sample.items():
        shape = (len(dataset), *example.shape)
        np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=_to_numpy(example).dtype, shape=shape)
    np.lib.format.open_memmap(folder / DONE, mode="w+", dtype=np.bool_, shape=(len(dataset),))
    empty = {"empty_text_features": empty_text, "empty_clip_features": empty_clip}
    empty = {name: tensor for name, tensor in empty.items() if tensor is not None}
    for name, tensor in empty.items():
        np.save(folder / f"{name}.npy", _to_numpy(tensor), allow_pickle=False)
    arrays = {name: _spec(tensor) for name, tensor in {**per_sample, **empty}.items()}
    manifest = {"format": FORMAT_VERSION, "description": description, "num_samples": len(dataset), "arrays": arrays}
    temporary = folder / f"{MANIFEST}.partial"
    temporary.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(temporary, folder / MANIFEST)
    return manifest


def build_feature_cache(
    encoder: FeatureEncoder,
    dataset,
    folder: Path,
    *,
    source_description: dict,
    batch_size: int = 8,
    process_index: int = 0,
    num_processes: int = 1,
    progress: bool = True,
) -> FeatureCache:
    """Encode every sample of `dataset` (items: pixel_values (3, R, R) in [-1, 1], caption) into `folder`.

    Resumable: samples already marked done are skipped, so a rerun of a finished cache encodes
    nothing and a killed run loses at most one batch. Several processes (under accelerate) share
    the work: process i encodes the samples with index % num_processes == i into the same files.
    The caller synchronises: process 0 runs `create_feature_cache` (or this function), then a
    barrier, then every process runs this, then a barrier before reading. The processes meet in
    the same memory-mapped files, which the OS keeps coherent on one machine; processes on
    several machines over a network filesystem need a folder each.

    `source_description` describes the data (folder, resolution, ...); with `encoder.description`
    it keys the cache. Returns the cache, complete once every process has finished.
    """
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index must be from 0 to {num_processes - 1}, got {process_index}")
    folder = Path(folder)
    if process_index == 0:
        manifest = create_feature_cache(encoder, dataset, folder, source_description=source_description)
    elif (manifest := _read_manifest(folder)) is None:
        raise RuntimeError(f"No feature cache in {folder}: process 0 creates it; synchronise before building.")
    else:
        _check_fits(folder, manifest, cache_description(encoder.description, source_description), len(dataset))
    done = np.lib.format.open_memmap(folder / DONE, mode="r+")
    arrays = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="r+") for name in _sample_arrays(manifest)}
    todo = (np.flatnonzero(~done[process_index::num_processes]) * num_processes + process_index).tolist()
    chunks = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    for chunk in tqdm(chunks, desc="encoding features", unit="batch", disable=not progress or process_index != 0):
        encoded = encoder.encode(default_collate([dataset[index] for index in chunk]))
        for name, array in arrays.items():
            array[chunk] = _to_numpy(getattr(encoded, name))
            array.flush()
        # Only after the rows are on disk: a sample marked done is always complete.
        done[chunk] = True
        done.flush()
    return FeatureCache(folder, manifest)


def _sample_arrays(manifest: dict) -> list[str]:
    return [name for name in manifest["arrays"] if not name.startswith("empty_")]


class FeatureCache(torch.utils.data.Dataset):
    """The cached features of a dataset, read through memory maps.

    `cache[i]` is {"text_features": (L, C), "clip_features": (77, D) (only if cached),
    "latent_mean": (4, h, w), "latent_std": (4, h, w), "index": i}, which the default collate
    stacks. The maps open lazily in each process, so DataLoader workers never pickle the data.
    """

    def __init__(self, folder: Path, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest
        self.names = _sample_arrays(manifest)
        self._arrays: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, folder: Path, expected_description: dict) -> FeatureCache:
        """The complete cache in `folder`, checked against `expected_description` (see `cache_description`).

        Raises:
            FeatureCacheError: no cache there, one built for other models, data or settings
                (naming the keys that differ), or one with samples still missing.
        """
        folder = Path(folder)
        manifest = _read_manifest(folder)
        if manifest is None:
            raise FeatureCacheError(f"No feature cache in {folder}: run the cache step first.")
        _check_description(folder, manifest["description"], expected_description)
        cache = cls(folder, manifest)
        if cache.missing:
            raise FeatureCacheError(
                f"The feature cache in {folder} is incomplete: {cache.missing} of {len(cache)} samples are "
                "missing. Run the cache step again to finish it (it resumes where it stopped)."
            )
        return cache

    @property
    def missing(self) -> int:
        """How many samples are not encoded yet."""
        done = np.load(self.folder / DONE, mmap_mode="r", allow_pickle=False)
        return int(len(done) - np.count_nonzero(done))

    def __len__(self) -> int:
        return self.manifest["num_samples"]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": {}}

    def _rows(self, name: str, selection=slice(None)) -> torch.Tensor:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        return _to_torch(self._arrays[name][selection], self.manifest["arrays"][name]["dtype"])

    def __getitem__(self, index: int) -> dict:
        return {**{name: self._rows(name, index) for name in self.names}, "index": int(index)}

    def batch(self, indices: list[int]) -> EncodedBatch:
        """The samples at `indices`, in that order, as an EncodedBatch on the CPU."""
        selection = np.asarray(indices, dtype=np.int64)
        rows = {name: self._rows(name, selection) for name in self.names}
        return EncodedBatch(rows["text_features"], rows.get("clip_features"), rows["latent_mean"], rows["latent_std"])

    def empty_prompt(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The cached features of "": text (1, L, C) and CLIP (1, 77, D) or None."""
        clip = self._rows("empty_clip_features") if "empty_clip_features" in self.manifest["arrays"] else None
        return self._rows("empty_text_features"), clip
