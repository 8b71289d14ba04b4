"""The full figure set of a traced run or a probe, written as PNG files (and a GIF).

A run whose prompt has no words still gets every figure that needs none (the x0 previews); the
figures it cannot have are listed, with the reason, in `skipped.txt` beside the others.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ella_demo.core.engine import GenerationResult
from ella_demo.core.errors import InputError
from ella_demo.core.probe import ProbeResult
from ella_demo.core.text_encoding import has_words
from ella_demo.inspect import analysis, figures

MAX_PREVIEW_STEPS = 8
MAP_WORDS = 3


def _write(figure, path: Path, written: list[Path]) -> None:
    path.write_bytes(figures.to_png(figure))
    written.append(path)


def write_tsc_figures(
    attention: np.ndarray, timesteps: np.ndarray, words, tokens, out: Path, written: list[Path]
) -> None:
    """Token x timestep maps (every normalisation), word-share curves, per-block text share."""
    for normalisation in analysis.NORMALISATIONS:
        time_map = analysis.token_time_map(attention, timesteps, words, normalisation, tokens=tokens)
        _write(figures.token_time_figure(time_map), out / f"token_time_{normalisation}.png", written)
    shares, columns = analysis.word_shares(attention, words)
    figure = figures.word_share_figure(
        shares, columns, timesteps, analysis.top_words(shares), analysis.text_share_per_block(attention)
    )
    _write(figure, out / "word_shares.png", written)


def write_trace_figures(result: GenerationResult, out_dir: str | Path) -> list[Path]:
    """Every view of a traced run that its sides and its prompt allow; `skipped.txt` says what was left out."""
    trace = result.trace
    if trace is None:
        raise ValueError("figures need a traced run: generate with trace=True (--trace)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: list[str] = []
    steps = len(trace.timesteps)
    if trace.tsc_attention is not None and not has_words(trace.t5_words):
        skipped.append("connector figures (token_time, word_shares, query_words, tsc_animation): the prompt is empty")
    elif trace.tsc_attention is not None:
        attention = trace.tsc_attention
        write_tsc_figures(attention, trace.timesteps, trace.t5_words, trace.t5_tokens, out, written)
        middle = steps // 2
        matrix, order, columns = analysis.query_word_matrix(attention[middle], trace.t5_words)
        _write(
            figures.query_word_figure(
                matrix, columns, order, middle, trace.timesteps[middle], analysis.Aggregation().label()
            ),
            out / f"query_words_step{middle}.png",
            written,
        )
        matrices = [analysis.query_word_matrix(attention[step], trace.t5_words)[0] for step in range(steps)]
        shares, share_columns = analysis.word_shares(attention, trace.t5_words)
        vmax = max(float(matrix.max()) for matrix in matrices)
        frames = figures.animation_frames(matrices, shares, share_columns, trace.timesteps, vmax)
        figures.save_gif(frames, out / "tsc_animation.gif")
        written.append(out / "tsc_animation.gif")
    if {"clip", "ella"} <= set(trace.sides):
        _write_spatial_figures(result, out, written, skipped)
    if skipped:
        note = "Figures not written for this run:\n" + "".join(f"- {line}\n" for line in skipped)
        (out / "skipped.txt").write_text(note, encoding="utf-8")
        written.append(out / "skipped.txt")
    return written


def _write_spatial_figures(result: GenerationResult, out: Path, written: list[Path], skipped: list[str]) -> None:
    trace = result.trace
    maps = analysis.spatial_word_maps(trace)
    if not maps.labels:
        reason = "the prompt is empty" if not trace.prompt.strip() else "the prompt has no words, only symbols"
        skipped.append(f"word maps (word_maps_*): {reason}")
    chosen = analysis.words_by_attention(trace.tsc_attention, maps.words)[:MAP_WORDS]
    for index in chosen:
        present = maps.presence(index)
        figure = figures.word_maps_figure(
            np.asarray(result.clip_images[0]),
            np.asarray(result.ella_images[0]),
            None if present == "T5 only" else maps.clip[index],
            None if present == "CLIP only" else maps.ella[index],
            maps.labels[index],
            maps.window,
        )
        safe = "".join(char if char.isalnum() else "_" for char in maps.labels[index])
        _write(figure, out / f"word_maps_{safe}.png", written)
    steps = len(trace.timesteps)
    shown = np.unique(np.linspace(0, steps - 1, min(MAX_PREVIEW_STEPS, steps)).round().astype(int))
    clip, ella = trace.sides["clip"], trace.sides["ella"]
    _write(
        figures.preview_strip_figure(clip.previews, ella.previews, shown, trace.timesteps),
        out / "previews.png",
        written,
    )


def write_probe(results: list[ProbeResult], out_dir: str | Path) -> list[Path]:
    """probe.npz and the probe figures; with two prompts also their side-by-side comparison."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for number, result in enumerate(results, start=1):
        if not has_words(result.words):
            field = "prompt" if number == 1 else f"prompt{number}"
            raise InputError(field, "is empty: a probe needs words to attend to (leave a second prompt out instead).")
    arrays = {}
    for number, result in enumerate(results, start=1):
        suffix = "" if number == 1 else f"_{number}"
        arrays[f"attention{suffix}"] = result.attention.astype(np.float16)
        arrays[f"timesteps{suffix}"] = result.timesteps
        arrays[f"tokens{suffix}"] = np.array(result.tokens)
        arrays[f"prompt{suffix}"] = np.array(result.prompt)
        folder = out if number == 1 else out / f"prompt{number}"
        folder.mkdir(exist_ok=True)
        write_tsc_figures(result.attention, result.timesteps, result.words, result.tokens, folder, written)
    np.savez_compressed(out / "probe.npz", **arrays)
    written.append(out / "probe.npz")
    if len(results) == 2:
        maps = [analysis.token_time_map(result.attention, result.timesteps, result.words) for result in results]
        figure = figures.compare_token_time_figure(maps[0], maps[1], results[0].prompt, results[1].prompt)
        _write(figure, out / "compare.png", written)
    return written
