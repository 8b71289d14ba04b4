"""Do the app's word maps point at the right things? Pointing accuracy against the detector's object masks.

For single- and two-object prompts, each side generates one traced picture; the detector finds every
object in it. For each object the prompt names whose shape the detector found in that picture, the
word map of its shape noun ("circle") peaks somewhere: a hit when the peak's map cell overlaps the
object's mask. CLIP's maps are the UNet's cross-attention to the word's CLIP tokens; ELLA's are the
attention flow pixel -> connector query -> the word's language-model tokens (inspect/spatial_maps.py),
exactly what the app shows. Reported per step window with the chance rate (a uniformly random peak
cell's chance of touching the mask), so a score is read against what guessing would give.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ella_demo.core.engine import generate
from ella_demo.core.models import LoadedModels
from ella_demo.inspect.spatial_maps import WINDOWS, spatial_word_maps
from ella_demo.pocket.captions import PocketPrompt, describe
from ella_demo.pocket.detector import Detection, detect
from ella_demo.pocket.scenes import Scene, sample_scene

SIDES = ("clip", "ella")


@dataclass
class PointingTally:
    """Hits and trials of one side in one step window, and the chance rates of those trials."""

    hits: int = 0
    trials: int = 0
    chance: list[float] = field(default_factory=list)

    def add(self, hit: bool, chance: float) -> None:
        self.hits += int(hit)
        self.trials += 1
        self.chance.append(chance)

    def summary(self) -> dict:
        return {
            "accuracy": self.hits / self.trials if self.trials else None,
            "trials": self.trials,
            "chance": float(np.mean(self.chance)) if self.chance else None,
        }


def pointing_prompts(count: int, seed: int) -> list[PocketPrompt]:
    """`count` training-distribution prompts whose scenes hold one or two single objects (no groups)."""
    rng, prompts = np.random.default_rng([2, seed]), []
    while len(prompts) < count:
        scene = sample_scene(rng, max_entities=2)
        if all(entity.count == 1 for entity in scene.entities):
            prompts.append(describe(scene, rng))
    return prompts


def cell_hits_mask(word_map: np.ndarray, mask: np.ndarray) -> tuple[bool, float]:
    """Whether the (h, w) map's peak cell overlaps the (H, W) boolean mask, and the chance a random cell does."""
    rows, cols = word_map.shape
    row_edges = np.linspace(0, mask.shape[0], rows + 1).round().astype(int)
    col_edges = np.linspace(0, mask.shape[1], cols + 1).round().astype(int)
    cells = np.array([[mask[row_edges[r] : row_edges[r + 1], col_edges[c] : col_edges[c + 1]].any()
                       for c in range(cols)] for r in range(rows)])  # fmt: skip
    peak = np.unravel_index(int(np.argmax(word_map)), word_map.shape)
    return bool(cells[peak]), float(cells.mean())


def _score_picture(maps, detection: Detection, scene: Scene, side: str, tally: PointingTally) -> None:
    """Add one trial per named object whose shape the detector found once in this side's picture."""
    word_maps = maps.clip if side == "clip" else maps.ella
    for entity in scene.entities:
        found = detection.of_shape(entity.shape)
        index = maps.find(entity.shape)
        if len(found) != 1 or index is None:
            continue
        tally.add(*cell_hits_mask(word_maps[index], found[0].mask))


def measure_pointing(models: LoadedModels, prompts: list[PocketPrompt], seed: int = 0, steps: int = 25) -> dict:
    """Pointing accuracy per side and step window over `prompts`; also how many objects the detector missed."""
    tallies = {side: {window: PointingTally() for window in WINDOWS} for side in SIDES}
    missed = dict.fromkeys(SIDES, 0)
    for prompt in prompts:
        result = generate(models, prompt.text, seed=seed, num_inference_steps=steps, trace=True)
        detections = {"clip": detect(result.clip_images[0]), "ella": detect(result.ella_images[0])}
        for side in SIDES:
            missed[side] += sum(len(detections[side].of_shape(e.shape)) != 1 for e in prompt.scene.entities)
        for window in WINDOWS:
            maps = spatial_word_maps(result.trace, window)
            for side in SIDES:
                _score_picture(maps, detections[side], prompt.scene, side, tallies[side][window])
    windows = {side: {window: tally.summary() for window, tally in tallies[side].items()} for side in SIDES}
    objects = sum(len(prompt.scene.entities) for prompt in prompts)
    return {"prompts": len(prompts), "objects": objects, "not_found_once": missed, "windows": windows}
