"""The Gradio app through its public API (gradio_client), on the tiny preset."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from gradio_client import Client
from PIL import Image

from ella_demo import ui

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture
def client(server):
    return Client(server, verbose=False)


def test_generate_returns_both_images_and_the_trace_views(client):
    result = client.predict(prompt="a red cat on a blue chair", seed=7, api_name="/generate", **FAST)
    clip, ella, everything, notes, step, word = result[:6]
    clip_preview, ella_preview, query_map, highlight, word_maps, token_time, curves = result[6:]
    assert Image.open(clip).size == (64, 64) and Image.open(ella).size == (64, 64)
    assert [entry["caption"] for entry in everything] == ["CLIP 1", "ELLA 1"]
    assert "Seed used: 7" in notes and "Random weights" in notes
    assert step["maximum"] == 2
    assert [entry["token"] for entry in highlight] == ["a", "red", "cat", "on", "a", "blue", "chair"]
    assert word["value"] in [choice[0] for choice in word["choices"]]
    for path in (clip_preview, ella_preview, query_map, word_maps, token_time, curves):
        assert Image.open(path).width > 0


def test_probe_endpoint_draws_one_or_two_prompts(client):
    single = client.predict(prompt="a red cat", timesteps=5, api_name="/probe")
    assert single[0] and single[1] and single[2] is None
    double = client.predict(prompt="a red cat", prompt2="three white birds", timesteps=5, api_name="/probe")
    assert Image.open(double[2]).width <= 1280


def test_bad_input_returns_the_specific_error(client):
    with pytest.raises(Exception, match="width must be a multiple of 8 from 8 to 1024, got 100"):
        client.predict(prompt="a cat", steps=2, width=100, height=64, api_name="/generate")


def test_empty_prompt_is_allowed(client):
    result = client.predict(prompt="", api_name="/generate", **FAST)
    assert result[0] and result[1]


def test_very_long_prompt_is_truncated_with_a_visible_warning(client):
    prompt = ("a red cat sitting on a blue chair next to a green lamp " * 60)[:3000]
    notes = client.predict(prompt=prompt, t5_length="128", api_name="/generate", **FAST)[3]
    assert "CLIP: The prompt is" in notes and "T5: The prompt is" in notes
    assert "tokens were dropped" in notes


def test_concurrent_clients_get_their_own_results(server):
    prompts = {"a red cat on a blue chair": 1, "three white birds above a dark forest": 2}

    def run(prompt: str):
        return Client(server, verbose=False).predict(prompt=prompt, seed=prompts[prompt], api_name="/generate", **FAST)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(prompts, pool.map(run, prompts), strict=True))
    for prompt, result in results.items():
        assert " ".join(entry["token"] for entry in result[9]) == prompt
        assert f"Seed used: {prompts[prompt]}" in result[3]


def test_one_failing_request_does_not_break_the_next(client, monkeypatch):
    calls = []
    real_generate = ui.generate

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(ui, "generate", out_of_memory_once)
    with pytest.raises(Exception, match="ran out of memory for this request"):
        client.predict(prompt="a cat", api_name="/generate", **FAST)
    result = client.predict(prompt="a cat", api_name="/generate", **FAST)
    assert result[0] and result[1]


def test_serving_defaults_are_local_and_private():
    sys.path.insert(0, str(REPO_ROOT))
    import app

    args = app.parse_args([])
    assert (args.host, args.share, args.concurrency, args.preset) == ("127.0.0.1", False, 1, "sd15")


def test_views_need_a_run_first(tiny):
    explorer = ui.ExplorerUI(tiny)
    with pytest.raises(Exception, match="Generate an image pair first"):
        explorer.on_step(None, 1, "mean", "mean", "cat", "all")


def test_example_prompts_are_many_and_dense():
    prompts = ui.example_prompts()
    assert len(prompts) >= 12
    assert all(len(prompt.split()) >= 12 for prompt in prompts)
