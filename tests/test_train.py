"""Connector training on the tiny preset (CPU): it learns, touches nothing else, resumes exactly,
splits data across processes, and its file loads where connectors load."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests_support import free_port, write_tiny_bert

from ella_demo import generate, load_models
from ella_demo.cli import main
from ella_demo.loading.checkpoint import read_safetensors
from ella_demo.train import TrainConfig, train
from ella_demo.train.loop import prepare_run
from ella_demo.train.objective import LossInputs, LossOptions, diffusion_loss

REPO_ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 32  # the tiny VAE makes 4x4 latents, the smallest the tiny UNet takes
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def write_pictures(folder: Path, count: int) -> Path:
    """`count` pictures of a coloured square on grey, with captions saying colour and side."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        name, rgb = list(COLOURS.items())[index % len(COLOURS)]
        side = "left" if index % 2 else "right"
        pixels = np.full((RESOLUTION, RESOLUTION, 3), 128, np.uint8)
        columns = slice(2, 14) if side == "left" else slice(18, 30)
        pixels[10:22, columns] = rgb
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
        lines.append(json.dumps({"file_name": f"{index:03d}.png", "text": f"a {name} square on the {side}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    return write_pictures(tmp_path_factory.mktemp("pictures"), 8)


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    settings = dict(
        train_data=str(data), out=out, preset="tiny", device="cpu", resolution=RESOLUTION, batch_size=4,
        max_steps=4, t5_length=16, validation_prompts=(), progress=False, checkpoint_every=1000,
        cache_dir=out.parent / "datasets-cache",
    )  # fmt: skip
    return TrainConfig(**{**settings, **changes})


def digest(module: torch.nn.Module) -> str:
    hasher = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def log_losses(out: Path) -> list[float]:
    lines = (out / "train_log.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[1]) for line in lines]


def fixed_loss(run, batch_seed: int = 123) -> float:
    """The loss of the first four samples under fixed noise and timesteps (no dropout): comparable across weights."""
    encoded = next(run.source.stream(0))
    empty = run.source.empty_prompt()
    generator = torch.Generator().manual_seed(batch_seed)
    inputs = LossInputs(encoded.latent_mean * run.models.pipe.vae.config.scaling_factor, encoded.text_features,
                        encoded.clip_features, *empty)  # fmt: skip
    with torch.no_grad():
        return diffusion_loss(run.models.pipe.unet, run.connector, run.noise_scheduler, inputs,
                              LossOptions(caption_dropout=0.0), generator).item()  # fmt: skip


# --- it learns -----------------------------------------------------------------------------------


def test_overfitting_a_fixed_batch_more_than_halves_its_loss(pictures, tmp_path, monkeypatch):
    """Four images with the same noise, timesteps and latent draws every step: the connector alone must
    steer the frozen (random) tiny UNet towards the targets through its tokens. Measured: 1.24 -> 0.46
    in 300 steps at lr 1e-3 (0.95 at the recipe's 1e-4, too slow for a test). Predicting zero scores
    about 1 (the noise's variance), so halving the loss means the tokens carry real information."""
    import itertools

    from ella_demo.train import loop

    monkeypatch.setattr(loop, "_seed_for", lambda *_: 0)  # the same draws every step: a fixed batch
    config = tiny_config(write_pictures(tmp_path / "four", 4), tmp_path / "out", caption_dropout=0.0,
                         learning_rate=1e-3)  # fmt: skip
    run = prepare_run(config)
    _, batch = next(run.source.stream(0))
    empty = run.source.empty_prompt()
    losses = [loop._optimizer_step(run, step, itertools.repeat(([0, 1, 2, 3], batch)), empty)[0]
              for step in range(1, 301)]  # fmt: skip
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


# --- only the connector trains ---------------------------------------------------------------------


def test_only_the_connector_changes_and_the_optimizer_holds_only_its_parameters(pictures, tmp_path):
    models = load_models("tiny", ella="scratch", device="cpu")
    frozen = {"unet": models.pipe.unet, "vae": models.pipe.vae, "clip": models.pipe.text_encoder, "t5": models.t5,
              "starting connector": models.ella}  # fmt: skip
    before = {name: digest(module) for name, module in frozen.items()}
    config = tiny_config(pictures, tmp_path / "out", max_steps=3)
    run = prepare_run(config, models)
    trained = {id(parameter) for parameter in run.connector.parameters()}
    in_optimizer = [id(parameter) for group in run.optimizer.param_groups for parameter in group["params"]]
    assert sorted(in_optimizer) == sorted(trained) and len(in_optimizer) == len(set(in_optimizer))
    assert not any(parameter.requires_grad for module in frozen.values() for parameter in module.parameters())

    result = train(config, models)
    assert {name: digest(module) for name, module in frozen.items()} == before
    saved, _ = read_safetensors(result.connector)
    changed = [name for name, tensor in saved.items() if not torch.equal(tensor, models.ella.state_dict()[name].half())]
    assert len(changed) > len(saved) // 2  # training moved most tensors away from the initialisation


def test_a_fresh_connector_starts_as_the_release_was_initialised(pictures, tmp_path):
    run = prepare_run(tiny_config(pictures, tmp_path / "out"))
    connector = run.accelerator.unwrap_model(run.connector)
    adaln = [tensor for name, tensor in connector.state_dict().items() if ".ln_" in name and ".linear." in name]
    assert adaln and all(not tensor.any() for tensor in adaln)
    width = connector.config.width
    assert abs(connector.connector.latents.std().item() - width**-0.5) < 0.25 * width**-0.5


# --- resume ------------------------------------------------------------------------------------------


def test_a_resumed_run_repeats_the_uninterrupted_one_exactly(pictures, tmp_path):
    """With EMA, gradient accumulation, Min-SNR and caption dropout, so that all their state is covered."""
    recipe = dict(max_steps=6, batch_size=2, gradient_accumulation=2, ema_decay=0.9, min_snr_gamma=5.0,
                  caption_dropout=0.5, checkpoint_every=3)  # fmt: skip
    whole = train(tiny_config(pictures, tmp_path / "whole", **recipe))
    stopped = tiny_config(pictures, tmp_path / "parts", **{**recipe, "max_steps": 3})
    train(stopped)
    resumed = train(replace(stopped, max_steps=6, resume="latest"))

    assert log_losses(resumed.out) == log_losses(whole.out) and len(log_losses(whole.out)) == 6
    for name in ("checkpoints/step-0000006/connector.safetensors", "checkpoints/step-0000006/ema.safetensors",
                 "ella.safetensors"):  # fmt: skip
        first, _ = read_safetensors(whole.out / name)
        second, _ = read_safetensors(resumed.out / name)
        assert all(torch.equal(first[key], second[key]) for key in first), name


def test_a_killed_run_resumes_from_its_last_checkpoint_as_if_never_stopped(pictures, tmp_path):
    """SIGKILL mid-run (no clean-up of any kind), then `--resume latest`: the log and weights equal an
    uninterrupted run's, and at most the steps since the last checkpoint were lost."""
    out = tmp_path / "killed"
    flags = ["--preset", "tiny", "--device", "cpu", "--train-data", str(pictures), "--resolution", "32",
             "--batch-size", "4", "--t5-length", "16", "--validation-prompt", "", "--checkpoint-every", "5",
             "--cache-dir", str(tmp_path / "hub-cache")]  # fmt: skip
    command = [sys.executable, "-m", "ella_demo", "train", *flags]
    process = subprocess.Popen([*command, "--max-steps", "100000", "--out", str(out)], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "step-0000010").is_dir() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    from ella_demo.train.checkpoints import list_checkpoints

    last = int(list_checkpoints(out)[-1].name.split("-")[1])
    assert last >= 10 and len(log_losses(out)) - last < 5 + 1  # lost: only the steps after the checkpoint
    end = last + 3
    resumed = subprocess.run([*command, "--max-steps", str(end), "--out", str(out), "--resume", "latest"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = train(tiny_config(pictures, tmp_path / "whole", max_steps=end, checkpoint_every=5))
    assert log_losses(out) == log_losses(whole.out) and len(log_losses(out)) == end
    first, _ = read_safetensors(out / "ella.safetensors")
    second, _ = read_safetensors(whole.out / "ella.safetensors")
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_resuming_with_another_recipe_or_without_a_checkpoint_is_refused(pictures, tmp_path, capsys):
    config = tiny_config(pictures, tmp_path / "out", max_steps=2, checkpoint_every=2)
    train(config)
    from ella_demo.train.checkpoints import ResumeError

    with pytest.raises(ResumeError, match=re.escape("learning_rate: 0.0001 then, 0.001 now")):
        train(replace(config, max_steps=4, resume="latest", learning_rate=1e-3))
    code, err = run_cli(["--train-data", str(pictures), "--out", str(tmp_path / "empty"), "--resume", "latest"],
                        capsys, tmp_path)  # fmt: skip
    assert code == 2 and "holds no checkpoint yet" in err
    # A new run into a folder holding another run's checkpoints would mix the two: refused.
    code, err = run_cli(["--train-data", str(pictures), "--out", str(config.out)], capsys, tmp_path)
    assert code == 2 and "already holds checkpoints of a run (the latest: step-0000002)" in err
    (tmp_path / "a-file").write_text("")
    code, err = run_cli(["--train-data", str(pictures), "--out", str(tmp_path / "a-file")], capsys, tmp_path)
    assert code == 2 and "--out" in err and "is a file" in err


# --- several processes -----------------------------------------------------------------------------


def test_two_processes_keep_identical_weights_and_read_different_samples(pictures, tmp_path):
    """torchrun with two CPU processes (gloo), as `accelerate launch` would start them on two devices."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "ella_demo", "train", "--preset", "tiny", "--device", "cpu",
               "--train-data", str(pictures), "--resolution", "32", "--batch-size", "2", "--max-steps", "2",
               "--t5-length", "16", "--validation-prompt", "", "--out", str(out),
               "--cache-dir", str(tmp_path / "hub-cache")]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2
    first, second = summary["weights_sha256_per_process"]
    assert first == second
    samples = summary["first_256_samples_read_per_process"]
    # 8 samples, 2 per process per step, 2 steps: one epoch, every sample read once, by one process.
    assert len(samples[0]) == len(samples[1]) == 4
    assert sorted(samples[0] + samples[1]) == list(range(8))


# --- the delivered file -------------------------------------------------------------------------------


def test_the_saved_connector_has_the_release_layout_and_loads_strictly_to_generate(pictures, tmp_path, manifest):
    result = train(tiny_config(pictures, tmp_path / "out", max_steps=2))
    saved, _ = read_safetensors(result.connector)
    # The released checkpoint's tensor names, for the tiny preset's two blocks (the release has six).
    layers = load_models("tiny", device="cpu").ella.config.layers
    released = {name for name in manifest if not re.search(rf"perceiver_blocks\.([{layers}-9])\.", name)}
    assert set(saved) == released and len(released) == len(manifest) - 4 * 14
    models = load_models("tiny", ella=str(result.connector), device="cpu")
    loaded = models.ella.state_dict()
    assert all(torch.equal(loaded[name], tensor.float()) for name, tensor in saved.items())
    image = generate(models, "a red square on the left", num_inference_steps=2, height=32, width=32).ella_images[0]
    assert image.size == (32, 32)
    code = main(["generate", "--preset", "tiny", "--device", "cpu", "--ella", str(result.connector), "--prompt",
                 "a red square", "--steps", "1", "--height", "32", "--width", "32",
                 "--out", str(tmp_path / "gen")])  # fmt: skip
    assert code == 0


def test_outputs_include_the_log_the_loss_plot_and_validation_pairs(pictures, tmp_path):
    config = tiny_config(pictures, tmp_path / "out", max_steps=4, validate_every=2, validation_steps=2,
                         validation_prompts=("a red square on the left", "a blue square"))  # fmt: skip
    result = train(config)
    header, *rows = (result.out / "train_log.csv").read_text().splitlines()
    assert header == "step,loss,lr,samples_per_s,elapsed_s"
    assert [row.split(",")[0] for row in rows] == ["1", "2", "3", "4"]
    assert all(float(row.split(",")[2]) == 1e-4 for row in rows)  # constant learning rate
    with Image.open(result.out / "loss.png") as plot:
        assert plot.size[0] >= 700
    validation = sorted(path.name for path in (result.out / "validation").iterdir())
    assert validation == ["step-0000002.png", "step-0000004.png"]
    with Image.open(result.out / "validation" / "step-0000004.png") as pairs:
        assert pairs.size[1] > pairs.size[0] * 0.8  # two rows of two images


# --- options -------------------------------------------------------------------------------------------


def test_cached_features_give_the_same_loss_as_online_encoding(pictures, tmp_path):
    from ella_demo.train.features import FeatureEncoder, build_feature_cache, cache_description

    run = prepare_run(tiny_config(pictures, tmp_path / "out"))
    encoder = FeatureEncoder(run.models, text_length=16, batch_invariant=True)
    dataset = run.source.dataset
    cache = build_feature_cache(encoder, dataset, tmp_path / "cache", source_description={"data": "pictures"},
                                progress=False)  # fmt: skip
    indices = [5, 2, 7, 0]
    online = encoder.encode(torch.utils.data.default_collate([dataset[index] for index in indices]))
    cached = cache.batch(indices)
    losses = []
    for encoded in (online, cached):
        generator = torch.Generator().manual_seed(7)
        inputs = LossInputs(encoded.latent_mean * 0.18215, encoded.text_features, None, *encoder.empty_prompt())
        losses.append(diffusion_loss(run.models.pipe.unet, run.connector, run.noise_scheduler, inputs,
                                     LossOptions(caption_dropout=0.5), generator))  # fmt: skip
    assert torch.equal(losses[0], losses[1])
    assert cache_description(encoder.description, {"data": "pictures"})


def test_a_run_from_the_feature_cache_takes_the_online_runs_steps(pictures, tmp_path):
    """Whole runs: the same losses to float rounding (a sample's VAE output can differ in its last bits
    between batches of different composition, see features.py)."""
    online = train(tiny_config(pictures, tmp_path / "online", max_steps=3))
    cached = train(tiny_config(pictures, tmp_path / "cached", max_steps=3, feature_cache=tmp_path / "cache"))
    assert np.allclose(log_losses(cached.out), log_losses(online.out), rtol=1e-5, atol=0)
    assert (tmp_path / "cache" / "manifest.json").is_file()


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(pictures, tmp_path):
    grads = []
    for checkpointing in (False, True):
        models = load_models("tiny", ella="scratch", device="cpu")
        run = prepare_run(tiny_config(pictures, tmp_path / f"out{checkpointing}", gradient_checkpointing=checkpointing),
                          models)  # fmt: skip
        _, encoded = next(run.source.stream(0))
        inputs = LossInputs(encoded.latent_mean, encoded.text_features, None, *run.source.empty_prompt())
        loss = diffusion_loss(models.pipe.unet, run.connector, run.noise_scheduler, inputs, LossOptions(),
                              torch.Generator().manual_seed(0))  # fmt: skip
        loss.backward()
        grads.append((loss.item(), [parameter.grad.clone() for parameter in run.connector.parameters()]))
    (loss_plain, grads_plain), (loss_checkpointed, grads_checkpointed) = grads
    assert loss_plain == loss_checkpointed
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_plain, grads_checkpointed, strict=True))
    assert any(grad.abs().sum() > 0 for grad in grads_plain)


def test_ella_plus_clip_mode_trains_with_clip_tokens_in_front(pictures, tmp_path):
    result = train(tiny_config(pictures, tmp_path / "out", max_steps=2, mode="ella+clip",
                               feature_cache=tmp_path / "cache"))  # fmt: skip
    assert len(log_losses(result.out)) == 2
    assert (tmp_path / "cache" / "clip_features.npy").is_file()


# --- the command line ------------------------------------------------------------------------------------


def run_cli(arguments: list[str], capsys, tmp_path: Path) -> tuple[int, str]:
    common = ["--preset", "tiny", "--device", "cpu", "--resolution", "32", "--cache-dir", str(tmp_path / "hub-cache")]
    code = main(["train", *common, *arguments])
    return code, capsys.readouterr().err


def test_the_command_trains_and_names_bad_flags(pictures, tmp_path, capsys):
    code, _ = run_cli(["--train-data", str(pictures), "--out", str(tmp_path / "out"), "--max-steps", "2",
                       "--batch-size", "4", "--t5-length", "16", "--validation-prompt", ""],
                      capsys, tmp_path)  # fmt: skip
    assert code == 0 and (tmp_path / "out" / "ella.safetensors").is_file()
    code, err = run_cli(
        ["--train-data", str(pictures), "--out", str(tmp_path / "x"), "--caption-dropout", "1.5"], capsys, tmp_path
    )
    assert code == 2 and "--caption-dropout must be in [0, 1)" in err
    code, err = run_cli(
        ["--train-data", str(pictures), "--out", str(tmp_path / "x"), "--resolution", "30"], capsys, tmp_path
    )
    assert code == 2 and "--resolution must be a multiple of 8" in err


def test_data_errors_reach_the_command_line_as_messages(tmp_path, capsys):
    folder = tmp_path / "no-metadata"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    code, err = run_cli(["--train-data", str(folder), "--out", str(tmp_path / "out")], capsys, tmp_path)
    assert code == 2 and "metadata.jsonl" in err
    broken = write_pictures(tmp_path / "broken", 4)
    (broken / "002.png").write_text("not an image")
    code, err = run_cli(["--train-data", str(broken), "--out", str(tmp_path / "out2"), "--batch-size", "4",
                         "--t5-length", "16", "--validation-prompt", ""], capsys, tmp_path)  # fmt: skip
    assert code == 2 and "002.png" in err


def test_a_connector_for_another_text_encoder_trains_and_generates_with_it(pictures, tmp_path):
    """--text-encoder: the connector's input width follows the encoder (a 48-wide BERT here)."""
    words = ["a", "red", "green", "blue", "yellow", "square", "on", "the", "left", "right"]
    bert = write_tiny_bert(tmp_path / "bert", words, width=48)
    result = train(tiny_config(pictures, tmp_path / "out", max_steps=2, text_encoder=str(bert)))
    models = load_models("tiny", text_encoder=str(bert), ella=str(result.connector), device="cpu")
    assert models.ella.config.input_dim == 48
    assert generate(models, "a red square", num_inference_steps=2, height=32, width=32).ella_images
