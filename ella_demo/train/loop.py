"""`train(config)`: fit an ELLA connector to a frozen SD1.5-family UNet, VAE and text encoder.

The steps, in order: 1 load the frozen models and the data; 2 build the trainable connector (fresh
or from a checkpoint) and AdamW over its parameters only; 3 resume; 4 for each optimizer step, run
the micro-batches (gradient accumulation), clip, step, update the EMA, log; 5 every N steps save a
checkpoint and the validation pairs; 6 write `ella.safetensors` and the loss plot.

accelerate handles devices, mixed precision and several processes (`accelerate launch -m ella_demo
train ...` or torchrun): the connector is wrapped for data parallelism, every process reads its own
share of each global batch, and only the main process writes files.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ella_demo.core.connector import ELLA
from ella_demo.core.devices import choose_placement
from ella_demo.core.errors import InputError
from ella_demo.core.models import LoadedModels
from ella_demo.loading.checkpoint import save_ella_checkpoint
from ella_demo.loading.models import load_models
from ella_demo.loading.sources import ELLA_SCRATCH
from ella_demo.train.batches import CachedBatches, OnlineBatches, prepare_cache
from ella_demo.train.checkpoints import (
    ResumeError,
    TrainingState,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from ella_demo.train.config import TrainConfig, validate
from ella_demo.train.data import ImageCaptionDataset, StepBatches, load_image_captions
from ella_demo.train.features import FeatureEncoder, sample_latents
from ella_demo.train.objective import LossInputs, LossOptions, diffusion_loss, noise_scheduler_for
from ella_demo.train.records import TrainLog, Validator

CONNECTOR_FILE = "ella.safetensors"
SAMPLES_READ_RECORDED = 256  # per process, in train_summary.json
MIXED_PRECISION = {torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class TrainResult:
    """Where the run's outputs are, and how it ended."""

    out: Path
    connector: Path
    log: Path
    steps: int
    final_loss: float
    wall_s: float


@dataclass
class TrainingRun:
    """Everything the step loop uses, built once by `prepare_run`."""

    config: TrainConfig
    accelerator: Accelerator
    models: LoadedModels
    connector: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMAModel | None
    source: OnlineBatches | CachedBatches
    noise_scheduler: object
    options: LossOptions
    samples_read: list[int] = field(default_factory=list)


def train(config: TrainConfig, models: LoadedModels | None = None) -> TrainResult:
    """Train a connector as `config` says; returns where its outputs are. See the module docstring.

    `models`: already loaded models to train against (their connector is the starting point; nothing
    of them is changed); by default they are loaded as `config` says.
    """
    started = time.perf_counter()
    run = prepare_run(config, models)
    start = _resume(run) if config.resume else 0
    log = TrainLog(config.out / "train_log.csv", start) if run.accelerator.is_main_process else None
    validator = _validator(run)
    loss = _loop(run, start, log, validator)
    return _finish(run, log, loss, time.perf_counter() - started)


def prepare_run(config: TrainConfig, models: LoadedModels | None = None) -> TrainingRun:
    """Check the config, then build the models, data source, trainable connector and optimizer of a run."""
    validate(config)
    _check_out(config)
    placement = choose_placement(config.device, config.dtype, config.t5_dtype)
    accelerator = Accelerator(
        cpu=placement.device.type == "cpu",
        # The frozen models run in their inference dtype; the connector keeps float32 master weights
        # and, when that dtype is a half type, autocast lowers its matmuls to it.
        mixed_precision=MIXED_PRECISION.get(placement.dtype, "no"),
        gradient_accumulation_steps=config.gradient_accumulation,
    )
    # Under several processes each one takes its own device (cuda:0, cuda:1, ...), which accelerate knows.
    device = str(accelerator.device) if placement.device.type != "cpu" else "cpu"
    models = models or load_models(
        config.preset, sd15=config.sd15, ella=config.ella or ELLA_SCRATCH, t5=config.t5,
        text_encoder=config.text_encoder, device=device, dtype=config.dtype, t5_dtype=config.t5_dtype,
        allow_pickle=config.allow_pickle, cache_dir=config.cache_dir, seed=config.seed,
    )  # fmt: skip
    if config.gradient_checkpointing:
        models.pipe.unet.enable_gradient_checkpointing()
    connector = copy.deepcopy(models.ella).float().train().requires_grad_(True)
    optimizer = torch.optim.AdamW(connector.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    ema = EMAModel(connector.parameters(), decay=config.ema_decay) if config.ema_decay else None
    connector, optimizer = accelerator.prepare(connector, optimizer)
    if accelerator.is_main_process:
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    source = _batch_source(config, models, accelerator)
    options = LossOptions(config.caption_dropout, config.min_snr_gamma, with_clip=config.mode == "ella+clip")
    noise_scheduler = noise_scheduler_for(models.pipe.scheduler.config)
    return TrainingRun(config, accelerator, models, connector, optimizer, ema, source, noise_scheduler, options)


def _check_out(config: TrainConfig) -> None:
    """Refuse an output folder that is a file, or that holds another run's checkpoints without --resume."""
    if config.out.exists() and not config.out.is_dir():
        raise InputError("out", f"{config.out} is a file: give a folder for the run's outputs.")
    found = list_checkpoints(config.out)
    if found and not config.resume:
        raise ResumeError(
            f"{config.out} already holds checkpoints of a run (the latest: {found[-1].name}). Pass --resume latest "
            "to continue it, or choose another --out for a new run."
        )


def _batch_source(config: TrainConfig, models: LoadedModels, accelerator: Accelerator) -> OnlineBatches | CachedBatches:
    data = load_image_captions(config.train_data, image_column=config.image_column,
                               caption_column=config.caption_column, cache_dir=config.cache_dir)  # fmt: skip
    dataset = ImageCaptionDataset(data, config.resolution)
    batches = StepBatches(len(dataset), config.batch_size, num_processes=accelerator.num_processes,
                          process_index=accelerator.process_index, seed=config.seed)  # fmt: skip
    encoder = FeatureEncoder(models, config.t5_length, with_clip=config.mode == "ella+clip")
    if config.feature_cache is None:
        return OnlineBatches(dataset, encoder, batches, config.num_workers)
    progress = config.progress and accelerator.is_main_process
    cache = prepare_cache(encoder, dataset, config.feature_cache, _data_description(config, len(dataset)),
                          accelerator, progress)  # fmt: skip
    # The text encoder is not needed next to the UNet any more; it stays on the CPU for validation prompts.
    models.t5.to("cpu")
    return CachedBatches(cache, batches, accelerator.device)


def _data_description(config: TrainConfig, num_samples: int) -> dict:
    return {"train_data": str(config.train_data), "num_samples": num_samples, "resolution": config.resolution,
            "image_column": config.image_column, "caption_column": config.caption_column}  # fmt: skip


def _resume(run: TrainingRun) -> int:
    config = run.config
    folder = find_checkpoint(config.out, config.resume)
    connector = run.accelerator.unwrap_model(run.connector)
    state = load_checkpoint(folder, _recipe(run), connector, run.optimizer, run.ema)
    if run.ema is not None:
        run.ema.to(run.accelerator.device)
    if state.scaler and run.accelerator.scaler is not None:
        run.accelerator.scaler.load_state_dict(state.scaler)
    if run.accelerator.is_main_process:
        print(f"Resuming from {folder} (step {state.step}).")
    return state.step


def _recipe(run: TrainingRun) -> dict:
    """What a resumed run must share with the one it continues (the process count decides what each step reads)."""
    return {**run.config.recipe(), "num_processes": run.accelerator.num_processes}


def _validator(run: TrainingRun) -> Validator | None:
    config = run.config
    if not config.validation_prompts or not run.accelerator.is_main_process:
        return None
    return Validator(run.models, config.validation_prompts, config.resolution, config.validation_steps,
                     config.mode, config.seed)  # fmt: skip


def _loop(run: TrainingRun, start: int, log: TrainLog | None, validator: Validator | None) -> float:
    config, accelerator = run.config, run.accelerator
    stream = run.source.stream(start * config.gradient_accumulation)
    empty = run.source.empty_prompt()
    samples_per_step = config.batch_size * accelerator.num_processes * config.gradient_accumulation
    bar = tqdm(total=config.max_steps, initial=start, desc="training", unit="step",
               disable=not (config.progress and accelerator.is_main_process))  # fmt: skip
    elapsed = log.elapsed_before if log else 0.0
    loss = float("nan")
    for step in range(start + 1, config.max_steps + 1):
        tick = time.perf_counter()
        loss, read = _optimizer_step(run, step, stream, empty)
        run.samples_read.extend(read[: max(0, SAMPLES_READ_RECORDED - len(run.samples_read))])
        seconds = time.perf_counter() - tick
        elapsed += seconds
        if log is not None:
            log.append(step, loss, run.optimizer.param_groups[0]["lr"], samples_per_step / seconds, elapsed)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            _checkpoint(run, step, log)
        if validator is not None and (step % config.validate_every == 0 or step == config.max_steps):
            validator.write(_final_weights(run), step, config.out / "validation")
        accelerator.wait_for_everyone()
    bar.close()
    return loss


def _optimizer_step(run: TrainingRun, step: int, stream, empty) -> tuple[float, list[int]]:
    """Run the step's micro-batches and update the connector.

    Returns the loss averaged over micro-batches and processes, and the sample indices this process read.
    """
    config, accelerator = run.config, run.accelerator
    vae_config = run.models.pipe.vae.config
    total = torch.zeros((), device=accelerator.device)
    read = []
    for micro in range(config.gradient_accumulation):
        number = (step - 1) * config.gradient_accumulation + micro
        generator = torch.Generator(accelerator.device).manual_seed(_seed_for(config.seed, number, accelerator))
        indices, encoded = next(stream)
        read.extend(indices)
        with accelerator.accumulate(run.connector), accelerator.autocast():
            inputs = LossInputs(
                latents=sample_latents(encoded.latent_mean, encoded.latent_std, vae_config.scaling_factor, generator),
                text_features=encoded.text_features, clip_features=encoded.clip_features,
                empty_text=empty[0], empty_clip=empty[1],
            )  # fmt: skip
            loss = diffusion_loss(run.models.pipe.unet, run.connector, run.noise_scheduler, inputs, run.options,
                                  generator)  # fmt: skip
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(run.connector.parameters(), config.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        total += loss.detach()
    if run.ema is not None:
        run.ema.step(run.connector.parameters())
    return accelerator.reduce(total / config.gradient_accumulation, reduction="mean").item(), read


def _seed_for(seed: int, micro_batch: int, accelerator: Accelerator) -> int:
    """A generator seed for each (run seed, micro-batch number, process): a step's draws never depend on history."""
    digest = hashlib.sha256(f"{seed}/{micro_batch}/{accelerator.process_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _final_weights(run: TrainingRun) -> dict[str, torch.Tensor]:
    """The weights the run delivers: the EMA's when it keeps one, else the trained ones."""
    connector = run.accelerator.unwrap_model(run.connector)
    if run.ema is None:
        return connector.state_dict()
    names = [name for name, _ in connector.named_parameters()]
    return dict(zip(names, run.ema.shadow_params, strict=True))


def _checkpoint(run: TrainingRun, step: int, log: TrainLog | None) -> None:
    if not run.accelerator.is_main_process:
        return
    scaler = run.accelerator.scaler.state_dict() if run.accelerator.scaler is not None else None
    state = TrainingState(step=step, recipe=_recipe(run), scaler=scaler)
    connector = run.accelerator.unwrap_model(run.connector)
    save_checkpoint(run.config.out, state, connector, run.optimizer, run.ema, run.config.keep_checkpoints)
    log.write_plot(run.config.out / "loss.png")


def _finish(run: TrainingRun, log: TrainLog | None, loss: float, wall_s: float) -> TrainResult:
    """Write the delivered connector, the loss plot and `train_summary.json` (main process)."""
    out = run.config.out
    # Every process's weights and first samples, so a reader can check that data parallelism kept the
    # copies identical and gave each process its own samples.
    digests = gather_object([_weights_digest(run.accelerator.unwrap_model(run.connector))])
    samples = gather_object([run.samples_read])
    if run.accelerator.is_main_process:
        delivered = ELLA(run.models.ella.config)
        delivered.load_state_dict(_final_weights(run))
        save_ella_checkpoint(delivered, out / CONNECTOR_FILE)
        log.write_plot(out / "loss.png")
        summary = {"steps": run.config.max_steps, "final_loss": loss, "wall_s": round(wall_s, 2),
                   "processes": run.accelerator.num_processes, "weights_sha256_per_process": digests,
                   f"first_{SAMPLES_READ_RECORDED}_samples_read_per_process": samples}  # fmt: skip
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    run.accelerator.wait_for_everyone()
    return TrainResult(out, out / CONNECTOR_FILE, out / "train_log.csv", run.config.max_steps, loss, wall_s)


def _weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every float32 weight of `module`, in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
