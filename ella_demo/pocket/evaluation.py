"""`python -m ella_demo pocket eval`: both sides on the held-out prompt sets, scored by the detector through DPG-Bench.

For each set of captions.PROMPT_SETS: its prompts and question graphs are written as a DPG-Bench folder
(questions.py), both sides draw 4 images per prompt with the same seeds as DPG-Bench grids
(dpg/generation.py), the pixel detector answers every question on every tile (detector.PocketAnswerer
through dpg/vqa.py) and the DPG scorer scores them (dpg/scoring.py), all unchanged. The summary holds
the overall and per-category scores per set and side, the prompt and question counts and the wall time;
the chart puts them side by side.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ella_demo.core.models import LoadedModels
from ella_demo.core.settings import PRESET_GUIDANCE, GenerationSettings
from ella_demo.dpg.data import load_bench
from ella_demo.dpg.generation import MODEL_NAMES, generate_grids
from ella_demo.dpg.scoring import score, write_report
from ella_demo.dpg.vqa import answer_with_model
from ella_demo.inspect.figures import to_png
from ella_demo.inspect.pocket_figures import evaluation_figure
from ella_demo.pocket.captions import PROMPT_SETS, prompt_sets
from ella_demo.pocket.detector import PocketAnswerer, detector_accuracy
from ella_demo.pocket.questions import write_dpg_folder

SIDE_LABELS = {"clip": "CLIP (pocket SD)", "ella": "ELLA (MiniLM + connector)"}


@dataclass(frozen=True)
class EvaluationSettings:
    """prompts: per set; the generation settings are DPG-Bench's protocol at the pocket world's size."""

    prompts: int = 50
    seed: int = 0
    num_inference_steps: int = 25
    guidance_scale: float = PRESET_GUIDANCE["pocket"]
    scheduler: str = "dpm++"


def evaluate(models: LoadedModels, out: Path, settings: EvaluationSettings | None = None, progress=None) -> dict:
    """Generate, answer and score every prompt set into `out`; returns (and writes) `summary.json`.

    `progress(item_id, generated)` is called after each prompt (item ids start with the set's name).
    Layout: out/<set>/dpg/ (prompts, dpg_bench.csv), out/<set>/{clip,ella}/<item>.png (2x2 grids),
    out/<set>/{clip,ella}/report.json|csv, out/summary.json, out/scores.png.
    """
    settings = settings or EvaluationSettings()
    sets = prompt_sets(settings.seed, dict.fromkeys(PROMPT_SETS, settings.prompts))
    generation = GenerationSettings(prompt="", seed=settings.seed, num_inference_steps=settings.num_inference_steps,
                                    guidance_scale=settings.guidance_scale, scheduler=settings.scheduler,
                                    num_images=4)  # fmt: skip
    summary = {"settings": asdict(settings), "sets": {}, "models": models.provenance().sources,
               "vae_round_trip": vae_round_trip_accuracy(models, seed=settings.seed)}  # fmt: skip
    for name, prompts in sets.items():
        started = time.perf_counter()
        items = {f"{name}_{index:03d}": prompt for index, prompt in enumerate(prompts)}
        folder = write_dpg_folder(out / name / "dpg", items)
        bench = load_bench(folder)
        generate_grids(models, bench.prompts, out / name, generation, MODEL_NAMES, progress=progress)
        summary["sets"][name] = _score_set(bench, out / name) | {
            "prompts": len(items),
            "questions": sum(len(questions) for questions in bench.questions.values()),
            "wall_s": time.perf_counter() - started,
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "scores.png").write_bytes(to_png(evaluation_figure(summary, SIDE_LABELS)))
    return summary


def vae_round_trip_accuracy(models: LoadedModels, scenes: int = 300, seed: int = 0) -> dict:
    """The detector's accuracy on held-out renders passed through the world's VAE (encode, then decode the mean).

    No generated picture can be read better than its own VAE round trip, so this is the ceiling the
    DPG-style scores are read against. Returns detector.detector_accuracy's dict.
    """
    vae = models.pipe.vae

    def round_trip(picture: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(picture.copy()).permute(2, 0, 1)[None].to(vae.device, vae.dtype) / 127.5 - 1
        with torch.no_grad():
            decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample[0]
        return ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

    return detector_accuracy(scenes, seed, distort=round_trip)


def _score_set(bench, folder: Path) -> dict:
    """Each side's DPG report (written beside its grids), reduced to overall and per-category scores."""
    answerer, scores = PocketAnswerer(), {}
    for side in MODEL_NAMES:
        answers, notes = answer_with_model(bench, folder / side, answerer)
        report = score(bench, answers)
        report.warnings.extend(notes)
        write_report(report, folder / side / "report.json")
        scores[side] = {"overall": report.overall, "broad": report.categories_broad,
                        "detailed": report.categories_detailed, "warnings": report.warnings}  # fmt: skip
    return scores
