"""The command line: generate writes what it promises, bench reports every number, errors are clear."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ella_demo import generate
from ella_demo.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
GENERATE = ["generate", "--preset", "tiny", "--device", "cpu", "--prompt", "a red cat on a blue chair", "--seed", "0"]
SMALL = ["--steps", "4", "--height", "64", "--width", "64", "--scheduler", "ddim"]


def test_generate_writes_images_meta_and_trace(tmp_path, tiny):
    assert main([*GENERATE, *SMALL, "--out", str(tmp_path), "--trace"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.png", "ella.png", "meta.json", "trace.npz"]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["settings"]["scheduler"] == "ddim" and meta["settings"]["num_inference_steps"] == 4
    assert meta["random_weights"] is True
    assert meta["timesteps"] == [751, 501, 251, 1]
    assert meta["tokens"]["t5"][:3] == ["▁a", "▁red", "▁cat"]
    assert set(meta["timings_s"]) == {"t5", "clip", "tsc", "unet", "vae", "total"}
    # The files hold what the Python API returns for the same settings.
    expected = generate(
        tiny, "a red cat on a blue chair", num_inference_steps=4, height=64, width=64, scheduler="ddim", trace=True
    )
    ella_png = np.asarray(Image.open(tmp_path / "ella.png").convert("RGB"))
    assert np.array_equal(ella_png, np.asarray(expected.ella_images[0]))
    trace = np.load(tmp_path / "trace.npz")
    assert trace["tsc_attention"].shape[:1] == (4,)
    assert trace["ella_previews"].shape == (4, 1, 8, 8, 3)
    assert "clip_cross_attention_8x8_pooled" in trace.files


def test_png_embeds_the_settings_as_a_parameters_chunk(tmp_path):
    assert main([*GENERATE, *SMALL, "--negative-prompt", "blurry", "--out", str(tmp_path)]) == 0
    parameters = Image.open(tmp_path / "ella.png").text["parameters"]
    assert parameters.startswith("a red cat on a blue chair\nNegative prompt: blurry\n")
    assert "Steps: 4, Sampler: DDIM, CFG scale: 10.0, Seed: 0, Size: 64x64" in parameters
    assert "RANDOM WEIGHTS" in parameters


def test_several_images_are_written_as_one_row(tmp_path):
    assert main([*GENERATE, *SMALL, "--num-images", "3", "--out", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "clip.png").size == (192, 64)


def test_one_side_only(tmp_path):
    assert main([*GENERATE, *SMALL, "--sides", "ella", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "clip.png").exists() and (tmp_path / "ella.png").exists()


def test_bad_argument_is_an_error_message_not_a_traceback(tmp_path, capsys):
    assert main([*GENERATE, "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "error: num_inference_steps must be a whole number from 1 to 150, got 0" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_bench_reports_every_number(tmp_path):
    report_path = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "ella_demo", "bench", "--preset", "tiny", "--device", "cpu", "--steps", "2",
         "--height", "32", "--width", "32", "--repeats", "1", "--json", str(report_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    for key in ("diffusers_clip_s", "clip_s", "ella_s", "side_by_side_s", "sequential_s", "trace_overhead",
                "t5_encode_s", "t5_cached_s", "peak_memory_mb"):  # fmt: skip
        assert report[key] > 0, key
        assert key in result.stdout
    assert report["preset"] == "tiny" and "torch" in report["versions"]
    assert report["ratios"]["ella_over_clip"] == pytest.approx(report["ella_s"] / report["clip_s"])
