"""What a run leaves beside its weights: `train_log.csv`, `loss.png` and the validation pairs."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ella_demo.core.connector import ELLA
from ella_demo.core.engine import generate
from ella_demo.core.models import LoadedModels
from ella_demo.inspect.figures import to_png
from ella_demo.inspect.training_figures import loss_curve_figure, validation_pairs_figure
from ella_demo.loading.sources import WEIGHTLESS_PRESETS

LOG_COLUMNS = ("step", "loss", "lr", "samples_per_s", "elapsed_s")


class TrainLog:
    """`train_log.csv`, one row per optimizer step. Resuming at step k drops the rows after k, which
    the resumed run writes again, so the file of a resumed run equals an uninterrupted one's."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = self.read(path) if path.is_file() and resume_step else []
        kept = [row for row in rows if int(row["step"]) <= resume_step]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        self.elapsed_before = float(kept[-1]["elapsed_s"]) if kept else 0.0

    def append(self, step: int, loss: float, lr: float, samples_per_s: float, elapsed_s: float) -> None:
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([step, f"{loss:.6g}", f"{lr:.6g}", f"{samples_per_s:.4g}", f"{elapsed_s:.2f}"])

    @staticmethod
    def read(path: Path) -> list[dict[str, str]]:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def write_plot(self, path: Path, **labels: str) -> None:
        """The loss curve of every row so far, as a PNG; `labels`: loss_curve_figure's title and loss_label."""
        rows = self.read(self.path)
        steps = np.array([int(row["step"]) for row in rows])
        losses = np.array([float(row["loss"]) for row in rows])
        path.write_bytes(to_png(loss_curve_figure(steps, losses, **labels)))


class Validator:
    """Generates the validation pairs through the app's engine: CLIP and the connector so far, same seed.

    It keeps its own copy of the connector (in the models' dtype, eval mode) inside a copy of the
    loaded-models container, so validating never touches the weights being trained and the text
    encoders' caches are kept from one validation to the next.
    """

    def __init__(
        self, models: LoadedModels, prompts: tuple[str, ...], resolution: int, steps: int, mode: str, seed: int
    ):
        connector = ELLA(models.ella.config).to(models.device, models.dtype).eval().requires_grad_(False)
        self.models = replace(models, ella=connector)
        self.prompts, self.resolution, self.steps, self.mode, self.seed = prompts, resolution, steps, mode, seed

    def write(self, weights: dict[str, torch.Tensor], step: int, folder: Path) -> Path:
        """Load `weights` into the validation copy, generate one pair per prompt, save the figure."""
        self.models.ella.load_state_dict(weights)
        self.models.condition_cache.clear()  # the negative prompt's tokens change with the weights
        clip_images, ella_images = [], []
        for prompt in self.prompts:
            result = generate(self.models, prompt, seed=self.seed, num_inference_steps=self.steps,
                              height=self.resolution, width=self.resolution, mode=self.mode)  # fmt: skip
            clip_images.append(result.clip_pixels[0])
            ella_images.append(result.ella_pixels[0])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{step:07d}.png"
        path.write_bytes(
            to_png(
                validation_pairs_figure(
                    self.prompts, clip_images, ella_images, step, self.seed, self.models.preset in WEIGHTLESS_PRESETS
                )
            )
        )
        return path
