"""Where each micro-batch's encoded features come from: the encoders as it runs, or the disk cache.

Both sources read the same samples for the same micro-batch number (`StepBatches`), so a run with a
feature cache takes exactly the steps an online run takes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from ella_demo.train.data import ImageCaptionDataset, StepBatches, batch_loader
from ella_demo.train.features import (
    EncodedBatch,
    FeatureCache,
    FeatureEncoder,
    build_feature_cache,
    cache_description,
    create_feature_cache,
)


class OnlineBatches:
    """Decode, resize and encode each micro-batch as it is needed (DataLoader workers prefetch images)."""

    def __init__(self, dataset: ImageCaptionDataset, encoder: FeatureEncoder, batches: StepBatches, num_workers: int):
        self.dataset, self.encoder, self.batches, self.num_workers = dataset, encoder, batches, num_workers

    def empty_prompt(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encoder.empty_prompt()

    def stream(self, start: int) -> Iterator[tuple[list[int], EncodedBatch]]:
        """(sample indices, encoded micro-batch) from micro-batch number `start` on, without end."""
        for batch in batch_loader(self.dataset, self.batches, start=start, num_workers=self.num_workers):
            yield batch["index"].tolist(), self.encoder.encode(batch)


class CachedBatches:
    """Read each micro-batch's features from a cache built once by `prepare_cache`."""

    def __init__(self, cache: FeatureCache, batches: StepBatches, device: torch.device):
        self.cache, self.batches, self.device = cache, batches, device

    def empty_prompt(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        text, clip = self.cache.empty_prompt()
        return text.to(self.device), None if clip is None else clip.to(self.device)

    def stream(self, start: int) -> Iterator[tuple[list[int], EncodedBatch]]:
        """(sample indices, encoded micro-batch) from micro-batch number `start` on, without end."""
        for indices in self.batches.iterate(start):
            yield indices, self.cache.batch(indices).to(self.device)


def prepare_cache(
    encoder: FeatureEncoder, dataset: ImageCaptionDataset, folder: Path, data: dict, accelerator, progress: bool
) -> FeatureCache:
    """Fill the cache in `folder` and open it, checked against the models and `data` (what describes the samples).

    Process 0 creates the files; then every process encodes its share (resumable: a rerun encodes
    only what is missing); the cache is read once all have finished.
    """
    if accelerator.is_main_process:
        create_feature_cache(encoder, dataset, folder, source_description=data)
    accelerator.wait_for_everyone()
    build_feature_cache(encoder, dataset, folder, source_description=data, process_index=accelerator.process_index,
                        num_processes=accelerator.num_processes, progress=progress)  # fmt: skip
    accelerator.wait_for_everyone()
    return FeatureCache.open(folder, cache_description(encoder.description, data))
