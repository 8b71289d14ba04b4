"""The pocket world's training stages at toy size: each runs end to end, exports its part, and resumes exactly."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler
from tests_support import copy_world, train_toy_stage

from ella_demo.cli import main
from ella_demo.core.errors import InputError
from ella_demo.loading.models import load_models
from ella_demo.loading.pocket import minilm_folder
from ella_demo.pocket.connector_stage import ConnectorData, train_connector_stage
from ella_demo.pocket.stage_runner import StageSettings
from ella_demo.train.checkpoints import ResumeError
from ella_demo.train.objective import LossInputs, LossOptions, diffusion_loss


def state_of(folder: Path) -> dict[str, torch.Tensor]:
    from ella_demo.loading.checkpoint import read_safetensors

    return {path.name: read_safetensors(path)[0] for path in sorted(folder.rglob("*.safetensors"))}


def test_each_model_stage_exports_its_part_and_the_world_is_an_sd_folder(pocket_world):
    toy_world = pocket_world
    expected = ["ella.safetensors", "model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    assert sorted(path.name for path in toy_world.iterdir()) == expected
    vae_config = json.loads((toy_world / "vae" / "config.json").read_text())
    assert vae_config["block_out_channels"] == [8, 8, 8] and 0.05 < vae_config["scaling_factor"] < 50
    record = json.loads((toy_world.parent / "runs" / "unet" / "record.json").read_text())
    assert record["steps"] == 3 and record["settings"]["batch_size"] == 4 and record["wall_s"] > 0
    assert (toy_world.parent / "runs" / "unet" / "loss.png").stat().st_size > 1000
    clip = json.loads((toy_world.parent / "runs" / "clip" / "record.json").read_text())
    assert 0.0 <= clip["retrieval_top1_of_64_seen"] <= 1.0 and 0.0 <= clip["retrieval_top1_of_64_paraphrase"] <= 1.0
    assert all(0.0 <= clip[f"prefers_own_caption_to_one_{kind}_swapped"] <= 1.0 for kind in ("shape", "colour"))
    # The weights are written in float16, to keep the shipped world small.
    unet_weights = state_of(toy_world / "unet")["diffusion_pytorch_model.safetensors"]
    assert all(tensor.dtype == torch.float16 for tensor in unet_weights.values())


@pytest.mark.parametrize("stage", ["vae", "clip", "unet"])
def test_a_stopped_stage_resumes_to_the_same_losses_and_weights(stage, pocket_world, tmp_path):
    world = tmp_path / "world"
    if stage == "unet":  # the unet stage reads the trained vae and clip
        copy_world(pocket_world, world, ("vae", "text_encoder", "tokenizer"))
    whole = train_toy_stage(stage, tmp_path / "whole", world, max_steps=4)
    train_toy_stage(stage, tmp_path / "split", world, max_steps=2)
    with pytest.raises(ResumeError, match="already holds checkpoints"):
        train_toy_stage(stage, tmp_path / "split", world, max_steps=4)
    resumed = train_toy_stage(stage, tmp_path / "split", world, max_steps=4, resume=True)
    assert resumed.losses == whole.losses[2:]
    final = state_of(tmp_path / "whole" / stage / "checkpoints" / "step-0000004")
    again = state_of(tmp_path / "split" / stage / "checkpoints" / "step-0000004")
    assert final.keys() == again.keys()
    for name in final:
        assert all(torch.equal(final[name][key], again[name][key]) for key in final[name]), name


def test_the_connector_stage_trains_on_the_world_and_the_pocket_preset_loads_it(pocket_world, tmp_path):
    world = copy_world(pocket_world, tmp_path / "world", ("vae", "text_encoder", "tokenizer", "unet", "scheduler",
                                                           "model_index.json"))  # fmt: skip
    data = ConnectorData(tmp_path / "scenes", 12, cache=tmp_path / "cache")  # as the CLI trains it
    settings = StageSettings(out=tmp_path / "runs" / "connector", max_steps=2, batch_size=2, learning_rate=1e-4,
                             checkpoint_every=1, progress=False)  # fmt: skip
    first = train_connector_stage(world, data, settings)
    resumed = train_connector_stage(world, data, replace(settings, max_steps=3, resume=True))
    assert first.steps == 2 and resumed.steps == 3
    assert len((data.folder / "metadata.jsonl").read_text().splitlines()) == 12 and any(data.cache.iterdir())
    models = load_models("pocket", sd15=str(world))
    assert models.ella.config.input_dim == 384 and models.ella.config.width == 32  # MiniLM in, the UNet's width out
    assert models.sources["t5"] == str(minilm_folder()) and not models.random_weights
    result = models_generate(models)
    assert result.clip_images[0].size == (64, 64) and result.ella_images[0].size == (64, 64)


def models_generate(models):
    from ella_demo.core.engine import generate

    return generate(models, "a red circle", num_inference_steps=2, height=64, width=64)


def test_the_unet_stage_resumes_into_a_phase_on_a_range_of_timesteps(pocket_world, tmp_path):
    """A resume may narrow the timesteps (like the learning rate): the run continues, on other draws."""
    world = copy_world(pocket_world, tmp_path / "world", ("vae", "text_encoder", "tokenizer"))
    whole = train_toy_stage("unet", tmp_path / "whole", world, max_steps=4)
    train_toy_stage("unet", tmp_path / "split", world, max_steps=2)
    phase = train_toy_stage("unet", tmp_path / "split", world, max_steps=4, resume=True, timesteps=(990, 1000))
    assert phase.steps == 4 and phase.losses != whole.losses[2:]
    with pytest.raises(InputError, match="the vae stage has none"):
        train_toy_stage("vae", tmp_path / "vae", world, max_steps=1, timesteps=(990, 1000))


def test_diffusion_loss_draws_timesteps_from_the_range_given():
    seen = []

    class RecordingUNet(torch.nn.Module):
        dtype = torch.float32

        def forward(self, sample, timesteps, encoder_hidden_states):
            seen.append(timesteps)
            return SimpleNamespace(sample=torch.zeros_like(sample))

    inputs = LossInputs(torch.zeros(256, 4, 2, 2), torch.zeros(256, 3, 8), None, torch.zeros(1, 3, 8), None)
    for timesteps in ((300, 310), None):
        diffusion_loss(RecordingUNet(), lambda text, _: text, DDPMScheduler(), inputs, LossOptions(timesteps=timesteps),
                       torch.Generator().manual_seed(0))  # fmt: skip
    assert int(seen[0].min()) >= 300 and int(seen[0].max()) < 310 and len(set(seen[0].tolist())) == 10
    assert int(seen[1].min()) < 100 and int(seen[1].max()) >= 900


def test_the_pocket_cli_trains_a_stage_and_names_the_stage_a_world_lacks(tmp_path, capsys):
    code = main(["pocket", "train", "unet", "--world", str(tmp_path / "world"), "--runs", str(tmp_path / "runs")])
    assert code == 2
    error = capsys.readouterr().err
    assert "lacks vae, text_encoder, tokenizer" in error and "for vae, clip first" in error
    code = main(["pocket", "train", "vae", "--world", str(tmp_path / "world"), "--runs", str(tmp_path / "runs"),
                 "--max-steps", "1", "--batch-size", "2"])  # fmt: skip
    assert code == 0 and (tmp_path / "world" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert "vae: 1 steps" in capsys.readouterr().out
    code = main(["pocket", "train", "vae", "--world", str(tmp_path / "world"), "--runs", str(tmp_path / "runs"),
                 "--max-steps", "0"])  # fmt: skip
    assert code == 2 and "--max-steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pocket", "train", "unet", "--timesteps", "750:300"])
    assert "0 <= LOW < HIGH <= 1000, as in 300:750; got '750:300'" in capsys.readouterr().err


def test_a_stage_resumes_in_another_process(tmp_path):
    """Each process hashes strings differently: a recipe must not depend on anything set-ordered."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "ella_demo", "pocket", "train", "vae", "--world", str(tmp_path / "world"),
               "--runs", str(tmp_path / "runs"), "--batch-size", "2", "--checkpoint-every", "1"]  # fmt: skip
    resumed = ["--max-steps", "2", "--learning-rate", "2e-4", "--resume"]  # a resume may lower the rate
    for extra, seed in ((["--max-steps", "1"], "1"), (resumed, "2")):
        done = subprocess.run(command + extra, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONHASHSEED": seed})  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
    assert "vae: 2 steps" in done.stdout
    log = (tmp_path / "runs" / "vae" / "train_log.csv").read_text().splitlines()
    rates = [float(row.split(",")[log[0].split(",").index("lr")]) for row in log[1:]]
    assert rates == [1e-3, 2e-4]
    # The record keeps both command lines: the first run's and the resume's.
    commands = json.loads((tmp_path / "runs" / "vae" / "record.json").read_text())["commands"]
    assert [command.split()[-1] for command in commands] == ["1", "--resume"]
    assert all(command.startswith("python -m ella_demo pocket train vae --world ") for command in commands)


def test_shipping_copies_the_world_with_checksums_that_loading_checks(pocket_world, tmp_path):
    from ella_demo.loading.hub import ModelSourceError
    from ella_demo.pocket.shipping import ship_world

    runs = pocket_world.parent / "runs"
    record = ship_world(pocket_world, runs, tmp_path / "shipped", tmp_path / "record")
    shipped = tmp_path / "shipped"
    assert {"unet/diffusion_pytorch_model.safetensors", "ella.safetensors", "tokenizer/tokenizer.json"} <= set(
        record["sha256"])  # fmt: skip
    assert len((shipped / "SHA256SUMS").read_text().splitlines()) == len(record["sha256"])
    assert record["stages"]["unet"]["steps"] == 3 and (tmp_path / "record" / "vae" / "loss.png").is_file()
    assert record["stages"]["connector"]["steps"] == 2 and record["stages"]["connector"]["scenes"] == 8
    assert load_models("pocket", sd15=str(shipped)).preset == "pocket"
    again = ship_world(shipped, runs, shipped, tmp_path / "record")  # the package's own world: checksums only
    assert again["sha256"] == record["sha256"]
    weights = shipped / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelSourceError, match="is missing or damaged"):
        load_models("pocket", sd15=str(shipped))
