"""The pocket world's training stages at toy size: each runs end to end, exports its part, and resumes exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ella_demo.cli import main
from ella_demo.loading.models import load_models
from ella_demo.loading.pocket import minilm_folder
from ella_demo.loading.toy_tokenizers import build_clip_tokenizer
from ella_demo.pocket import architecture
from ella_demo.pocket.captions import training_vocabulary
from ella_demo.pocket.connector_stage import ConnectorData, train_connector_stage
from ella_demo.pocket.stage_runner import StageSettings
from ella_demo.pocket.training import PocketRun, stage_settings, train_model_stage
from ella_demo.train.checkpoints import ResumeError

TOY_UNET = {"block_out_channels": [16, 16, 16], "norm_num_groups": 4, "cross_attention_dim": 32,
            "attention_head_dim": 2}  # fmt: skip
SMALL_TRANSFORMER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "projection_dim": 32}  # fmt: skip


def toy_configs() -> dict:
    """Architecture overrides that make every stage take well under a second a step."""
    vocab = len(build_clip_tokenizer(sorted(training_vocabulary())))
    return {
        "vae": architecture.vae_config() | {"block_out_channels": [8, 8, 8], "norm_num_groups": 4},
        "text_encoder": architecture.clip_text_config(vocab) | SMALL_TRANSFORMER,
        "vision": architecture.clip_vision_config() | SMALL_TRANSFORMER,
        "unet": architecture.unet_config() | TOY_UNET,
    }


def train_stage(stage: str, root: Path, world: Path, max_steps: int, resume: bool = False):
    settings = stage_settings(stage, root, max_steps=max_steps, batch_size=4, checkpoint_every=2,
                              resume=resume, progress=False)  # fmt: skip
    return train_model_stage(PocketRun(stage, world, root, settings, toy_configs()))


def state_of(folder: Path) -> dict[str, torch.Tensor]:
    from ella_demo.loading.checkpoint import read_safetensors

    return {path.name: read_safetensors(path)[0] for path in sorted(folder.rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory) -> Path:
    """A world folder with every model stage trained 3 steps (vae, clip, unet), in order."""
    root = tmp_path_factory.mktemp("pocket")
    for stage in ("vae", "clip", "unet"):
        train_stage(stage, root / "runs", root / "world", max_steps=3)
    return root / "world"


def test_each_model_stage_exports_its_part_and_the_world_is_an_sd_folder(toy_world):
    expected = ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    assert sorted(path.name for path in toy_world.iterdir()) == expected
    vae_config = json.loads((toy_world / "vae" / "config.json").read_text())
    assert vae_config["block_out_channels"] == [8, 8, 8] and 0.05 < vae_config["scaling_factor"] < 50
    record = json.loads((toy_world.parent / "runs" / "unet" / "record.json").read_text())
    assert record["steps"] == 3 and record["settings"]["batch_size"] == 4 and record["wall_s"] > 0
    assert (toy_world.parent / "runs" / "unet" / "loss.png").stat().st_size > 1000
    # The weights are written in float16, to keep the shipped world small.
    unet_weights = state_of(toy_world / "unet")["diffusion_pytorch_model.safetensors"]
    assert all(tensor.dtype == torch.float16 for tensor in unet_weights.values())


@pytest.mark.parametrize("stage", ["vae", "clip", "unet"])
def test_a_stopped_stage_resumes_to_the_same_losses_and_weights(stage, toy_world, tmp_path):
    world = tmp_path / "world"
    if stage == "unet":  # the unet stage reads the trained vae and clip
        for part in ("vae", "text_encoder", "tokenizer"):
            (world / part).mkdir(parents=True)
            for file in (toy_world / part).iterdir():
                (world / part / file.name).write_bytes(file.read_bytes())
    whole = train_stage(stage, tmp_path / "whole", world, max_steps=4)
    train_stage(stage, tmp_path / "split", world, max_steps=2)
    with pytest.raises(ResumeError, match="already holds checkpoints"):
        train_stage(stage, tmp_path / "split", world, max_steps=4)
    resumed = train_stage(stage, tmp_path / "split", world, max_steps=4, resume=True)
    assert resumed.losses == whole.losses[2:]
    final = state_of(tmp_path / "whole" / stage / "checkpoints" / "step-0000004")
    again = state_of(tmp_path / "split" / stage / "checkpoints" / "step-0000004")
    assert final.keys() == again.keys()
    for name in final:
        assert all(torch.equal(final[name][key], again[name][key]) for key in final[name]), name


def test_the_connector_stage_trains_on_the_world_and_the_pocket_preset_loads_it(toy_world, tmp_path):
    world = tmp_path / "world"
    for part in toy_world.iterdir():
        target = world / part.name
        if part.is_dir():
            target.mkdir(parents=True)
            for file in part.iterdir():
                (target / file.name).write_bytes(file.read_bytes())
        else:
            target.write_bytes(part.read_bytes())
    data = ConnectorData(tmp_path / "scenes", 12)
    settings = StageSettings(out=tmp_path / "runs" / "connector", max_steps=2, batch_size=2, learning_rate=1e-4,
                             checkpoint_every=1, progress=False)  # fmt: skip
    first = train_connector_stage(world, data, settings)
    resumed = train_connector_stage(world, data, replace(settings, max_steps=3, resume=True))
    assert first.steps == 2 and resumed.steps == 3
    assert len((data.folder / "metadata.jsonl").read_text().splitlines()) == 12
    models = load_models("pocket", sd15=str(world))
    assert models.ella.config.input_dim == 384 and models.ella.config.width == 32  # MiniLM in, the UNet's width out
    assert models.sources["t5"] == str(minilm_folder()) and not models.random_weights
    result = models_generate(models)
    assert result.clip_images[0].size == (64, 64) and result.ella_images[0].size == (64, 64)


def models_generate(models):
    from ella_demo.core.engine import generate

    return generate(models, "a red circle", num_inference_steps=2, height=64, width=64)


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
