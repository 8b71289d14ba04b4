"""The frozen encoders' features for connector training: online, cached on disk, and equal bit for bit."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ella_demo.train.features import (
    EncodedBatch,
    FeatureCache,
    FeatureCacheError,
    FeatureEncoder,
    build_feature_cache,
    cache_description,
    sample_latents,
)

TEXT_LENGTH = 16  # short, to keep the tiny encoders fast; the padding logic is the same as at 128
CAPTIONS = ["a red cube on a blue ball", "two cats", "", "a lighthouse at dusk, oil painting", "x", "dogs"]
SOURCE = {"data": "in-test", "resolution": 32}


class Pictures(Dataset):
    """Items as train/data.py yields them: pixel_values (3, 32, 32) in [-1, 1], caption, index.

    `fail_at` raises at that index, as a run killed mid-build would stop; `reads` counts the items read.
    """

    def __init__(self, count: int = 8, fail_at: int | None = None):
        self.pixels = torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.fail_at = fail_at
        self.reads = 0

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> dict:
        if index == self.fail_at:
            raise RuntimeError(f"killed at sample {index}")
        self.reads += 1
        return {"pixel_values": self.pixels[index], "caption": CAPTIONS[index % len(CAPTIONS)], "index": index}


class CountingEncoder(FeatureEncoder):
    """A FeatureEncoder that records the samples it encoded, batch by batch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []

    def encode(self, batch: dict) -> EncodedBatch:
        self.batches.append(len(batch["caption"]))
        return super().encode(batch)


@pytest.fixture
def encoder(tiny) -> CountingEncoder:
    return CountingEncoder(tiny, text_length=TEXT_LENGTH, with_clip=True)


def build(encoder, dataset, folder, **kwargs) -> FeatureCache:
    return build_feature_cache(encoder, dataset, folder, source_description=SOURCE, progress=False, **kwargs)


def expected(encoder) -> dict:
    return cache_description(encoder.description, SOURCE)


def assert_same(first: EncodedBatch, second: EncodedBatch) -> None:
    for name in ("text_features", "clip_features", "latent_mean", "latent_std"):
        a, b = getattr(first, name), getattr(second, name)
        assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), name


def online(encoder, dataset, indices) -> EncodedBatch:
    return encoder.encode(default_collate([dataset[index] for index in indices]))


def test_encode_gives_the_documented_shapes_and_dtypes(tiny, encoder):
    batch = default_collate([Pictures()[index] for index in range(3)])
    encoded = encoder.encode(batch)
    t5_width, clip_width = tiny.t5.config.d_model, tiny.pipe.text_encoder.config.hidden_size
    assert encoded.text_features.shape == (3, TEXT_LENGTH, t5_width)
    assert encoded.clip_features.shape == (3, 77, clip_width)
    assert encoded.latent_mean.shape == encoded.latent_std.shape == (3, 4, 4, 4)
    assert encoded.text_features.dtype == tiny.t5.dtype and encoded.latent_mean.dtype == tiny.pipe.vae.dtype
    assert (encoded.latent_std > 0).all()
    assert FeatureEncoder(tiny, TEXT_LENGTH).encode(batch).clip_features is None
    moved = encoded.to("meta")
    assert all(tensor.device.type == "meta" for tensor in vars(moved).values())
    assert moved.text_features.dtype == encoded.text_features.dtype
    without_clip = EncodedBatch(encoded.text_features, None, encoded.latent_mean, encoded.latent_std)
    assert without_clip.to("meta").clip_features is None


def test_caption_rows_equal_the_apps_per_prompt_encoding(tiny, encoder):
    """A batch pads every caption to text_length with its attention mask, as the app's fixed-length
    path does one prompt at a time. On the CPU the tiny encoders' rows come out bit-identical; the
    tolerance leaves room for kernels that depend on the batch size (1e-6 is fp32 rounding at the
    features' scale). Encoding sample by sample (`batch_invariant`) runs the very same shapes, so
    it must match exactly."""
    text, clip = encoder.encode_captions(CAPTIONS)
    exact_text, exact_clip = FeatureEncoder(tiny, TEXT_LENGTH, with_clip=True, batch_invariant=True).encode_captions(
        CAPTIONS
    )
    for row, caption in enumerate(CAPTIONS):
        app_text = tiny.t5_encoder.encode(caption, TEXT_LENGTH).features[0]
        app_clip = tiny.clip_encoder.encode(caption).features[0]
        torch.testing.assert_close(text[row], app_text, rtol=0, atol=1e-6)
        torch.testing.assert_close(clip[row], app_clip, rtol=0, atol=1e-6)
        assert torch.equal(exact_text[row], app_text) and torch.equal(exact_clip[row], app_clip)


def test_empty_prompt_is_computed_once(encoder):
    text, clip = encoder.empty_prompt()
    assert text.shape[:2] == (1, TEXT_LENGTH) and clip.shape[:2] == (1, 77)
    assert encoder.empty_prompt()[0] is text
    assert torch.equal(text, encoder.encode_captions([""])[0])


def test_sample_latents_equals_diffusers_sampling_bit_for_bit(tiny, encoder):
    pixels = Pictures().pixels[:3]
    vae = tiny.pipe.vae
    with torch.no_grad():
        reference = vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(7)) * vae.config.scaling_factor
    mean, std = encoder.encode_images(pixels)
    assert torch.equal(
        sample_latents(mean, std, vae.config.scaling_factor, torch.Generator().manual_seed(7)), reference
    )


def test_the_cache_returns_the_online_features_bit_for_bit(tiny, encoder, tmp_path):
    dataset = Pictures(count=7)
    cache = build(encoder, dataset, tmp_path / "cache", batch_size=3)
    assert encoder.batches == [3, 3, 1]
    opened = FeatureCache.open(tmp_path / "cache", expected(encoder))
    assert len(opened) == 7
    for chunk in ([0, 1, 2], [3, 4, 5], [6]):
        reference = online(encoder, dataset, chunk)
        assert_same(opened.batch(chunk), reference)
        for row, index in enumerate(chunk):
            item = opened[index]
            assert item["index"] == index and torch.equal(item["text_features"], reference.text_features[row])
    assert_same(cache.batch([6, 0]), opened.batch([6, 0]))
    for cached, fresh in zip(opened.empty_prompt(), encoder.empty_prompt(), strict=True):
        assert torch.equal(cached, fresh)
    collated = next(iter(DataLoader(opened, batch_size=4)))
    assert collated["latent_std"].shape == (4, 4, 4, 4) and collated["index"].tolist() == [0, 1, 2, 3]
    assert len(pickle.dumps(opened)) < 10_000, "DataLoader workers would copy the whole arrays"


def test_batch_invariant_encoding_is_independent_of_the_batch(tiny, tmp_path):
    """The cache encodes in chunks of batch_size, a training step in its own batch: sample by
    sample, a sample's features are the same either way."""
    encoder = FeatureEncoder(tiny, TEXT_LENGTH, with_clip=True, batch_invariant=True)
    dataset = Pictures(count=6)
    cache = build(encoder, dataset, tmp_path / "cache", batch_size=4)
    assert_same(cache.batch([5, 2, 0]), online(encoder, dataset, [5, 2, 0]))


def test_a_second_build_encodes_nothing(encoder, tmp_path):
    build(encoder, Pictures(), tmp_path / "cache", batch_size=4)
    times = {path.name: path.stat().st_mtime_ns for path in (tmp_path / "cache").iterdir()}
    encoder.batches.clear()
    dataset = Pictures()
    build(encoder, dataset, tmp_path / "cache", batch_size=4)
    assert encoder.batches == [] and dataset.reads == 0
    assert times == {path.name: path.stat().st_mtime_ns for path in (tmp_path / "cache").iterdir()}


def test_an_interrupted_build_resumes_and_finishes_correctly(encoder, tmp_path):
    folder = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed at sample 5"):
        build(encoder, Pictures(fail_at=5), folder, batch_size=2)
    assert encoder.batches == [2, 2]
    with pytest.raises(FeatureCacheError, match=r"4 of 8 samples are missing\. Run the cache step again"):
        FeatureCache.open(folder, expected(encoder))
    encoder.batches.clear()
    dataset = Pictures()
    build(encoder, dataset, folder, batch_size=2)
    assert encoder.batches == [2, 2]
    cache = FeatureCache.open(folder, expected(encoder))
    for chunk in ([0, 1], [2, 3], [4, 5], [6, 7]):
        assert_same(cache.batch(chunk), online(encoder, dataset, chunk))


def test_two_processes_fill_one_cache(encoder, tmp_path):
    folder, dataset = tmp_path / "cache", Pictures()
    first = build(encoder, dataset, folder, batch_size=2, process_index=0, num_processes=2)
    assert first.missing == 4 and dataset.reads == 1 + 4  # sample 0 once more for the shapes at creation
    build(encoder, dataset, folder, batch_size=2, process_index=1, num_processes=2)
    assert encoder.batches == [2, 2, 2, 2]
    cache = FeatureCache.open(folder, expected(encoder))
    for chunk in ([0, 2], [4, 6], [1, 3], [5, 7]):
        assert_same(cache.batch(chunk), online(encoder, dataset, chunk))


def test_a_process_other_than_the_first_needs_the_cache_created(encoder, tmp_path):
    with pytest.raises(RuntimeError, match="process 0 creates it"):
        build(encoder, Pictures(), tmp_path / "cache", process_index=1, num_processes=2)


def test_a_cache_for_other_settings_is_refused_naming_the_keys(tiny, encoder, tmp_path):
    folder = tmp_path / "cache"
    build(encoder, Pictures(), folder)
    other = FeatureEncoder(tiny, text_length=TEXT_LENGTH + 1, with_clip=True)
    with pytest.raises(FeatureCacheError, match=r"features\.text_length: cache has 16, this run 17.*--feature-cache"):
        FeatureCache.open(folder, cache_description(other.description, SOURCE))
    with pytest.raises(FeatureCacheError, match=r"data\.resolution"):
        build_feature_cache(encoder, Pictures(), folder, source_description={**SOURCE, "resolution": 64})
    with pytest.raises(FeatureCacheError, match="holds 8 samples, the data has 5"):
        build(encoder, Pictures(count=5), folder)
    with pytest.raises(FeatureCacheError, match="No feature cache"):
        FeatureCache.open(tmp_path / "nothing", expected(encoder))


class Bfloat16Encoder:
    """Stands in for encoders run in bf16 (the tiny models must not be converted): a fixed function
    of the pixels, in bf16, with FeatureEncoder's interface."""

    def __init__(self):
        self.description = {"encoder": "bf16 stand-in"}

    def empty_prompt(self):
        return torch.full((1, 2, 3), 0.1, dtype=torch.bfloat16), None

    def encode_images(self, pixels):
        return pixels[:, :2, :4, :4].to(torch.bfloat16), pixels[:, 2:, :4, :4].abs().to(torch.bfloat16)

    def encode(self, batch):
        mean, std = self.encode_images(batch["pixel_values"])
        return EncodedBatch(batch["pixel_values"][:, 0, :2, :3].to(torch.bfloat16) / 3, None, mean, std)


def test_bfloat16_features_are_stored_exactly(tmp_path):
    encoder, dataset = Bfloat16Encoder(), Pictures(count=3)
    build(encoder, dataset, tmp_path / "cache", batch_size=2)
    cache = FeatureCache.open(tmp_path / "cache", expected(encoder))
    assert_same(cache.batch([0, 1, 2]), online(encoder, dataset, [0, 1, 2]))
    assert cache.empty_prompt()[0].dtype == torch.bfloat16 and cache.empty_prompt()[1] is None
    assert np.load(tmp_path / "cache" / "text_features.npy", mmap_mode="r").dtype == np.int16
