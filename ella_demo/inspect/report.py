"""The full figure set of a traced run or a probe, written as PNG files (and a GIF).

Every figure comes from views.py; this module only chooses which to write and writes them. A run
whose prompt has no words still gets every figure that needs none (the x0 previews); the figures
it cannot have are listed, with the reason, in `skipped.txt` beside the others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ella_demo.core.errors import InputError
from ella_demo.core.probe import ProbeResult
from ella_demo.core.results import GenerationResult
from ella_demo.inspect import figures
from ella_demo.inspect.connector_attention import NORMALISATIONS
from ella_demo.inspect.views import ConnectorViews, RunViews, compare_probes

MAP_WORDS = 3


def _save(image: Image.Image, path: Path, written: list[Path]) -> None:
    image.save(path)
    written.append(path)


def _write_connector_figures(connector: ConnectorViews, out: Path, written: list[Path]) -> None:
    """Token x timestep maps (every normalisation), word-share curves, per-block text share."""
    for normalisation in NORMALISATIONS:
        _save(connector.token_time(normalisation), out / f"token_time_{normalisation}.png", written)
    _save(connector.share_curves(), out / "word_shares.png", written)


def write_trace_figures(result: GenerationResult, out_dir: str | Path) -> list[Path]:
    """Every view of a traced run that its sides and its prompt allow; `skipped.txt` says what was left out."""
    trace = result.trace
    if trace is None:
        raise ValueError("figures need a traced run: generate with trace=True (--trace)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    views = RunViews(result)
    written: list[Path] = []
    skipped: list[str] = []
    if trace.tsc_attention is not None and not views.has_words:
        skipped.append("connector figures (token_time, word_shares, query_words, tsc_animation): the prompt is empty")
    elif trace.tsc_attention is not None:
        _write_connector_figures(views.connector, out, written)
        middle = views.steps // 2
        _save(views.connector.query_heatmap(middle), out / f"query_words_step{middle}.png", written)
        figures.save_gif(views.animation_frames(), out / "tsc_animation.gif")
        written.append(out / "tsc_animation.gif")
    if {"clip", "ella"} <= set(trace.sides):
        _write_spatial_figures(views, out, written, skipped)
    if skipped:
        note = "Figures not written for this run:\n" + "".join(f"- {line}\n" for line in skipped)
        (out / "skipped.txt").write_text(note, encoding="utf-8")
        written.append(out / "skipped.txt")
    return written


def _write_spatial_figures(views: RunViews, out: Path, written: list[Path], skipped: list[str]) -> None:
    """Word maps of the words the connector reads most, over all steps, and the x0 preview strip."""
    maps = views.spatial("all")
    if not maps.labels:
        reason = "the prompt is empty" if not views.trace.prompt.strip() else "the prompt has no words, only symbols"
        skipped.append(f"word maps (word_maps_*): {reason}")
    for index in views.ranked_words()[:MAP_WORDS]:
        label = maps.labels[index]
        safe = "".join(char if char.isalnum() else "_" for char in label)
        _save(views.word_maps(label, "all", 0), out / f"word_maps_{safe}.png", written)
    _save(views.preview_strip(), out / "previews.png", written)


def write_probe(results: list[ProbeResult], out_dir: str | Path) -> list[Path]:
    """probe.npz and the probe figures; with two prompts also their side-by-side comparison."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    connectors = [ConnectorViews.of_probe(result) for result in results]
    for number, connector in enumerate(connectors, start=1):
        if not connector.has_words:
            field = "prompt" if number == 1 else f"prompt{number}"
            raise InputError(field, "is empty: a probe needs words to attend to (leave a second prompt out instead).")
    arrays = {}
    for number, (result, connector) in enumerate(zip(results, connectors, strict=True), start=1):
        suffix = "" if number == 1 else f"_{number}"
        arrays[f"attention{suffix}"] = result.attention.astype(np.float16)
        arrays[f"timesteps{suffix}"] = result.timesteps
        arrays[f"tokens{suffix}"] = np.array(result.tokens)
        arrays[f"prompt{suffix}"] = np.array(result.prompt)
        folder = out if number == 1 else out / f"prompt{number}"
        folder.mkdir(exist_ok=True)
        _write_connector_figures(connector, folder, written)
    np.savez_compressed(out / "probe.npz", **arrays)
    written.append(out / "probe.npz")
    if len(connectors) == 2:
        _save(compare_probes(*connectors), out / "compare.png", written)
    return written
