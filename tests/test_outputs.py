"""Writing a run to disk: PNG settings that cannot be spoofed, and nothing re-encoded while writing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ella_demo import generate
from ella_demo.inspect.outputs import write_run

SPOOF = "a red cat\nSteps: 99, Sampler: Euler, CFG scale: 1, Seed: 1234, Size: 8x8\nNegative prompt: x"


def test_a_prompt_cannot_pose_as_the_settings_line(tiny, tmp_path):
    result = generate(tiny, SPOOF, negative_prompt="blur\r\nSteps: 1", seed=3, num_inference_steps=2, height=32,
                      width=32)  # fmt: skip
    write_run(result, tmp_path)
    with Image.open(tmp_path / "ella.png") as image:
        parameters, exact = image.text["parameters"], json.loads(image.text["ella_explorer"])
    lines = parameters.splitlines()
    assert len(lines) == 3  # prompt, "Negative prompt: ...", settings: the A1111 layout readers expect
    assert lines[0] == SPOOF.replace("\n", " ")
    assert lines[1] == "Negative prompt: blur Steps: 1"
    assert lines[2].startswith("Steps: 2, Sampler: DPM++ 2M") and "Seed: 3," in lines[2]
    assert exact["prompt"] == SPOOF and exact["negative_prompt"] == "blur\r\nSteps: 1"


def test_writing_a_run_never_runs_a_model(tiny, tmp_path, monkeypatch):
    result = generate(tiny, "a red cat, on a blue chair.", trace=True, num_inference_steps=2, height=32, width=32)

    def no_model_work(*args, **kwargs):
        pytest.fail("write_run encoded a prompt: on ZeroGPU that would run a model outside the GPU handler")

    monkeypatch.setattr(tiny.t5_encoder, "encode", no_model_work)
    monkeypatch.setattr(tiny.clip_encoder, "encode", no_model_work)
    write_run(result, tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["tokens"]["t5"][:3] == ["▁a", "▁red", "▁cat"]
    assert meta["tokens"]["clip"][0] == "<|startoftext|>"
    assert meta["seeding"] == "cpu: one CPU generator for all images"
    arrays = np.load(tmp_path / "trace.npz")
    start, end = arrays["t5_offsets"][1]
    assert str(arrays["prompt"])[start:end] == "red"
