"""The engine's two lesson modes: a prompt schedule (switch prompts at step k) and a fixed connector timestep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ella_demo import generate
from ella_demo.core.conditioning import encode_prompts, side_conditions
from ella_demo.core.settings import GenerationSettings, SettingsError
from ella_demo.core.timing import PhaseTimer

PROMPT_A = "a red cube left of a blue ball"
PROMPT_B = "a blue cube left of a red ball"
SMALL = {"num_inference_steps": 4, "height": 32, "width": 32, "guidance_scale": 5.0, "seed": 7}


def pixels(result) -> np.ndarray:
    return np.concatenate([result.clip_pixels, result.ella_pixels])


def test_a_switch_at_step_zero_equals_the_second_prompt_alone(tiny):
    switched = generate(tiny, PROMPT_A, prompt_after=PROMPT_B, switch_at_step=0, **SMALL)
    assert np.array_equal(pixels(switched), pixels(generate(tiny, PROMPT_B, **SMALL)))


def test_a_switch_at_the_last_step_equals_the_first_prompt_alone(tiny):
    steps = SMALL["num_inference_steps"]
    switched = generate(tiny, PROMPT_A, prompt_after=PROMPT_B, switch_at_step=steps, **SMALL)
    assert np.array_equal(pixels(switched), pixels(generate(tiny, PROMPT_A, **SMALL)))


def test_a_switch_midway_differs_from_both_prompts_on_both_sides(tiny):
    switched = generate(tiny, PROMPT_A, prompt_after=PROMPT_B, switch_at_step=2, **SMALL)
    for alone in (generate(tiny, PROMPT_A, **SMALL), generate(tiny, PROMPT_B, **SMALL)):
        assert not np.array_equal(switched.clip_pixels, alone.clip_pixels)
        assert not np.array_equal(switched.ella_pixels, alone.ella_pixels)


def test_the_switch_is_reported_with_the_settings(tiny):
    switched = generate(tiny, PROMPT_A, prompt_after=PROMPT_B, switch_at_step=1, **SMALL)
    recorded = switched.settings.to_dict()
    assert recorded["prompt_after"] == PROMPT_B and recorded["switch_at_step"] == 1


def test_the_connector_reads_the_fixed_timestep_at_every_step(tiny):
    """side_conditions with a fixed timestep equals calling the connector at that timestep, whatever the step's."""
    settings = GenerationSettings(prompt=PROMPT_A, connector_timestep=250, **SMALL)
    prompts = encode_prompts(tiny, settings, PhaseTimer(tiny.device))
    features = prompts.t5_cond.features
    expected_cond = tiny.ella(features, torch.tensor([250]))
    expected_uncond = tiny.ella(prompts.t5_uncond.features, torch.tensor([250]))
    unfixed = GenerationSettings(prompt=PROMPT_A, **SMALL)
    for step_timestep in (999, 500, 1):
        timestep, timer = torch.tensor(step_timestep), PhaseTimer(tiny.device)
        (uncond, cond), _ = side_conditions(tiny, settings, prompts, "ella", timestep, timer)
        assert torch.equal(cond, expected_cond) and torch.equal(uncond, expected_uncond)
        (_, own), _ = side_conditions(tiny, unfixed, prompts, "ella", timestep, timer)
        assert torch.equal(own, tiny.ella(features, torch.tensor([step_timestep])))


def test_a_fixed_timestep_changes_only_the_ella_side_and_equals_the_real_one_on_a_one_step_run(tiny):
    one_step = {**SMALL, "num_inference_steps": 1, "scheduler": "ddim"}
    plain = generate(tiny, PROMPT_A, **one_step)
    timestep = int(plain.timesteps[0])
    same = generate(tiny, PROMPT_A, connector_timestep=timestep, **one_step)
    other = generate(tiny, PROMPT_A, connector_timestep=(timestep + 500) % 1000, **one_step)
    assert np.array_equal(pixels(same), pixels(plain))
    assert np.array_equal(other.clip_pixels, plain.clip_pixels)
    assert not np.array_equal(other.ella_pixels, plain.ella_pixels)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"prompt_after": PROMPT_B, "switch_at_step": 5}, "switch_at_step must be a whole number from 0 to 4, got 5"),
        ({"prompt_after": PROMPT_B, "switch_at_step": -1}, "switch_at_step must be a whole number from 0 to 4"),
        ({"prompt_after": PROMPT_B, "switch_at_step": 1.5}, "switch_at_step must be a whole number"),
        ({"switch_at_step": 2}, "switch_at_step needs a prompt_after to switch to"),
        ({"prompt_after": 3}, "prompt_after must be text, got int"),
        ({"prompt_after": PROMPT_B, "trace": True}, "trace cannot follow a prompt switch"),
        ({"connector_timestep": 1000}, "connector_timestep must be a whole number from 0 to 999, got 1000"),
        ({"connector_timestep": 2.0}, "connector_timestep must be a whole number from 0 to 999, got 2.0"),
    ],
)
def test_bad_schedules_are_refused_by_name_before_any_model_work(tiny, arguments, message):
    misses = tiny.t5_encoder.cache.misses + tiny.clip_encoder.cache.misses
    with pytest.raises(SettingsError, match=message):
        generate(tiny, "a prompt nobody encoded", **{**SMALL, **arguments})
    assert tiny.t5_encoder.cache.misses + tiny.clip_encoder.cache.misses == misses
