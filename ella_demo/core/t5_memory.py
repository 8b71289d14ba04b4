"""Keeping FLAN-T5-XL's memory off a small GPU: offloading it between prompts, a features store on disk, releasing it.

FLAN-T5-XL's encoder is the largest model an ELLA run holds (1.2 B parameters against the UNet's 0.86 B).
Three ways to spare GPU memory, each usable alone or together:
- `offload_between_encodings`: T5 lives in CPU memory and visits the GPU only while it encodes
  (accelerate's `cpu_offload_with_hook`); a prompt found in a cache never moves it.
- a features store on disk (loading/feature_store.py), keyed by (prompt, length, dtype, kind of device,
  model), shared by processes and runs, so a prompt is encoded once ever.
- `release_t5`: once every prompt a job needs is in the store (DPG-Bench's 1,065), T5 is
  dropped; what it would have encoded comes from the store.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from ella_demo.core.models import LoadedModels


class OffloadedWhileIdle:
    """A model kept on the CPU and moved to `device` only while it runs: `with offloaded.running(): model(...)`.

    accelerate's `cpu_offload_with_hook` moves it (and its inputs) to `device` on the first call; leaving the
    block moves it back. One run at a time: a second thread waits rather than see it leave mid-run.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device):
        from accelerate import cpu_offload_with_hook

        _, self._hook = cpu_offload_with_hook(model, execution_device=device)
        self.device = device
        self._lock = threading.Lock()

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._lock:
            try:
                yield
            finally:
                self._hook.offload()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # so other processes can use what T5 held

    def remove(self) -> None:
        """Take the hook off the model, so that nothing here keeps it alive."""
        self._hook.remove()


def offload_between_encodings(encoder, device: torch.device) -> None:
    """Keep `encoder`'s model (core/text_encoding.py) in CPU memory, on `device` only while it encodes."""
    offloaded = OffloadedWhileIdle(encoder.model, device)
    encoder.execution_device = device
    encoder.running = offloaded.running
    encoder.offloaded = offloaded


def release_t5(models: LoadedModels) -> None:
    """Drop the T5 encoder (or --text-encoder) and free its memory; from now on the ELLA side's prompts come from
    the encoder's caches and store only, and any other prompt is refused with text_encoding.TextEncoderReleasedError."""
    encoder = models.t5_encoder
    encoder.execution_device = encoder.device
    if encoder.offloaded is not None:
        encoder.offloaded.remove()
    encoder.running, encoder.offloaded = nullcontext, None
    encoder.model = models.t5 = None
    gc.collect()
    if encoder.execution_device.type == "cuda":
        torch.cuda.empty_cache()
