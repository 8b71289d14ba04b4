"""Everything `pocket eval` measures, written into one folder: DPG scores, attention pointing, token x time maps.

out/summary.json + scores.png (evaluation.py), out/pointing.json + pointing.png (attention_check.py),
out/token_time.png: the connector's token x timestep attention for two pocket prompts (the paper's
Fig. 8 in miniature, through the app's own probe and figure).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ella_demo.core.models import LoadedModels
from ella_demo.core.probe import probe
from ella_demo.inspect.figures import to_png
from ella_demo.inspect.pocket_figures import pointing_figure
from ella_demo.inspect.views import ConnectorViews, compare_probes
from ella_demo.pocket.attention_check import measure_pointing, pointing_prompts
from ella_demo.pocket.evaluation import SIDE_LABELS, EvaluationSettings, evaluate

TOKEN_TIME_PROMPTS = (
    "On a black background, a large red circle sits to the left of a small blue square, all filled.",
    "Two small yellow triangles above a large green cross, all outlined, on a white background.",
)


def write_pocket_report(models: LoadedModels, out: Path, settings: EvaluationSettings, pointing_count: int,
                        progress=None) -> dict:  # fmt: skip
    """Run every measurement into `out`; returns {"scores", "pointing", "wall_s"} (also written as report.json)."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    scores = evaluate(models, out, settings, progress)
    pointing = measure_pointing(models, pointing_prompts(pointing_count, settings.seed), settings.seed,
                                settings.num_inference_steps)  # fmt: skip
    (out / "pointing.json").write_text(json.dumps(pointing, indent=2) + "\n")
    (out / "pointing.png").write_bytes(to_png(pointing_figure(pointing, SIDE_LABELS)))
    views = [ConnectorViews.of_probe(probe(models, prompt)) for prompt in TOKEN_TIME_PROMPTS]
    compare_probes(*views).save(out / "token_time.png")
    report = {"scores": scores, "pointing": pointing, "wall_s": time.perf_counter() - started}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def markdown_tables(report: dict) -> str:
    """The README's tables: DPG scores per set and side, then pointing accuracy per window and side."""
    lines = ["| prompt set | prompts | questions | side | overall | entity | attribute | relation | other | global |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, result in report["scores"]["sets"].items():
        for side, label in SIDE_LABELS.items():
            broad = result[side]["broad"]
            cells = " | ".join(f"{broad[c]:.1f}" if c in broad else "-" for c in
                               ("entity", "attribute", "relation", "other", "global"))  # fmt: skip
            lines.append(f"| {name} | {result['prompts']} | {result['questions']} | {label} | "
                         f"{result[side]['overall']:.1f} | {cells} |")  # fmt: skip
    ceiling = report["scores"]["vae_round_trip"]
    lines += ["", f"Detector accuracy on VAE round trips of {ceiling['scenes']} held-out renders (the ceiling): "
              f"{100 * ceiling['overall']['all']:.1f}% of {ceiling['questions']} questions."]  # fmt: skip
    windows = report["pointing"]["windows"]
    lines += ["", "| side | " + " | ".join(f"{window} steps" for window in windows["clip"]) + " |",
              "| --- |" + " --- |" * len(windows["clip"])]  # fmt: skip
    for side, label in SIDE_LABELS.items():
        cells = [f"{100 * row['accuracy']:.0f}% (chance {100 * row['chance']:.0f}%, n={row['trials']})"
                 if row["accuracy"] is not None else "n=0" for row in windows[side].values()]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
