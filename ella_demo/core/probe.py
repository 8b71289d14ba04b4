"""Probe: the connector's attention on a dense timestep grid, without the UNet.

The connector's output depends only on (T5 features, timestep), never on the latents, so its
attention can be computed for any timesteps in one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ella_demo.core.errors import InputError
from ella_demo.core.models import LoadedModels
from ella_demo.core.text_encoding import FLEXIBLE, Word, has_words

DEFAULT_PROBE_TIMESTEPS = 50
PROBE_BATCH = 25  # timesteps per connector call: bounds memory for long prompts


@dataclass(frozen=True)
class ProbeResult:
    """attention: (T, layers, heads, Q, Q + L) float32; timesteps: (T,) high noise first."""

    prompt: str
    attention: np.ndarray
    timesteps: np.ndarray
    tokens: tuple[str, ...]
    words: tuple[Word, ...]


def timestep_grid(count: int = DEFAULT_PROBE_TIMESTEPS) -> np.ndarray:
    """`count` integer timesteps evenly from 999 down to 0."""
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= 1000:
        raise InputError("timesteps", f"must be a whole number from 2 to 1000, got {count!r}")
    return np.linspace(999, 0, count).round().astype(np.int64)


def probe(models: LoadedModels, prompt: str, timesteps: int = DEFAULT_PROBE_TIMESTEPS,
          t5_length: int | str = FLEXIBLE) -> ProbeResult:  # fmt: skip
    """Connector attention for `prompt` at every timestep of the grid, batched over timesteps.

    An empty prompt is an InputError: the connector has no words to attend to.
    """
    grid = timestep_grid(timesteps)
    encoding = models.t5_encoder.encode(prompt, t5_length)
    if not has_words(encoding.words):
        raise InputError("prompt", "is empty: type the prompt whose words the connector should read.")
    features = encoding.features.to(models.dtype)
    chunks = []
    with torch.no_grad():
        for start in range(0, len(grid), PROBE_BATCH):
            batch = torch.as_tensor(grid[start : start + PROBE_BATCH], device=models.device)
            _, attention = models.ella(features.expand(len(batch), -1, -1), batch, return_attention=True)
            chunks.append(attention.float().cpu().numpy())
    return ProbeResult(prompt, np.concatenate(chunks), grid, encoding.tokens, encoding.words)
