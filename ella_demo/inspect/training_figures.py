"""Figures of a training run: the loss curve and the validation pairs (CLIP vs the connector so far)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

from ella_demo.inspect.figures import new_figure, plain_text

SMOOTHING_WINDOW = 50


def loss_curve_figure(steps: np.ndarray, losses: np.ndarray, title: str = "Connector training loss",
                      loss_label: str = "diffusion loss (MSE)"):  # fmt: skip
    """Per-step loss (faint) and its running mean over up to 50 steps, against the optimizer step.

    steps, losses: (S,) arrays in step order.
    """
    figure = new_figure(8.0, 4.0)
    axes = figure.add_subplot()
    axes.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="per step")
    window = max(1, min(SMOOTHING_WINDOW, len(losses) // 5))
    if len(losses) >= window > 1:
        smoothed = np.convolve(losses, np.ones(window) / window, mode="valid")
        axes.plot(steps[window - 1 :], smoothed, color="tab:blue", linewidth=1.8, label=f"mean of {window} steps")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(loss_label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(loc="upper right", fontsize=8)
    axes.set_title(title)
    return plain_text(figure)


def validation_pairs_figure(
    prompts: Sequence[str],
    clip_images: Sequence[np.ndarray],
    ella_images: Sequence[np.ndarray],
    step: int,
    seed: int,
    random_weights: bool = False,
):
    """One row per prompt: SD1.5 with CLIP beside the same UNet with the connector, same seed and noise.

    clip_images, ella_images: one (H, W, 3) float array in [0, 1] per prompt. `random_weights` says the
    UNet has learned nothing, so the title says the images are noise.
    """
    rows = len(prompts)
    figure = new_figure(7.0, 3.4 * rows + 0.6)
    title = f"Validation at step {step} (seed {seed}): CLIP vs connector, same initial noise"
    if random_weights:
        title += "\nRandom-weight UNet and VAE: these images are noise, not a result"
    figure.suptitle(title)
    for row, (prompt, clip, ella) in enumerate(zip(prompts, clip_images, ella_images, strict=True)):
        for column, (image, label) in enumerate(((clip, "CLIP"), (ella, "ELLA connector"))):
            axes = figure.add_subplot(rows, 2, 2 * row + column + 1)
            axes.imshow(np.clip(image, 0, 1))
            axes.set_axis_off()
            # The prompt goes over the left image only, wrapped to its half of the width.
            axes.set_title(textwrap.fill(f"{label}: {prompt}", 48) if column == 0 else label, fontsize=8)
    return plain_text(figure)
