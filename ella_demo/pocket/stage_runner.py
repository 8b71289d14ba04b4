"""The loop every pocket training stage runs: AdamW steps with seeded draws, checkpoints, resume, log and curve.

A stage (stages.py) owns its models and says what one step's loss is; this module does the rest, the
same way for each: every random draw of step k comes from generators seeded with (seed, k), so a run
stopped after a checkpoint and resumed with `resume=True` repeats the uninterrupted run's losses and
weights exactly. A resume may change the learning rate (a schedule set by hand: train_log.csv records
the rate of every step) and the UNet stage's range of timesteps. Checkpoints are the connector
training's (train/checkpoints.py): safetensors only, written whole or not at all, the newest
`keep_checkpoints` kept.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import safetensors.torch
import torch
from tqdm.auto import tqdm

from ella_demo.core.errors import InputError
from ella_demo.loading.checkpoint import read_safetensors
from ella_demo.train.checkpoints import (
    ResumeError,
    TrainingState,
    find_checkpoint,
    list_checkpoints,
    load_optimizer_state,
    read_state,
    save_optimizer_state,
    write_checkpoint,
)
from ella_demo.train.records import TrainLog


@dataclass(frozen=True)
class StageSettings:
    """How long and how a stage trains. out: the stage's run folder (checkpoints, train_log.csv, loss.png)."""

    out: Path
    max_steps: int
    batch_size: int
    learning_rate: float
    seed: int = 0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    resume: bool = False
    progress: bool = True
    timesteps: tuple[int, int] | None = None  # the UNet stage's [low, high) of training timesteps; None: all


class Stage(Protocol):
    """One pocket model's training: its trainable modules, a step's loss, and its export."""

    name: str

    def trainable(self) -> dict[str, torch.nn.Module]:
        """Name -> module whose parameters the optimizer updates (saved in checkpoints under that name)."""

    def recipe(self) -> dict:
        """The settings that make a run what it is; a resume with other values is refused."""

    def loss(self, batch_size: int, rng: np.random.Generator, generator: torch.Generator) -> torch.Tensor:
        """One step's scalar loss on a fresh batch, every draw from `rng` (data) and `generator` (noise)."""


def stage_plot_labels(stage: Stage) -> dict[str, str]:
    """The loss curve's title and axis label for a stage (its `loss_label`, else "loss")."""
    return {"title": f"Pocket world: {stage.name} training loss", "loss_label": getattr(stage, "loss_label", "loss")}


@dataclass(frozen=True)
class StageResult:
    """steps: optimizer steps done in all; losses: this call's, one per step; wall_s: seconds in all runs;
    final_loss: the last step's loss, from the log when this call ran no step (a resume at max_steps)."""

    steps: int
    losses: list[float]
    wall_s: float
    final_loss: float | None


def run_stage(stage: Stage, settings: StageSettings) -> StageResult:
    """Train `stage` to `settings.max_steps` optimizer steps, from its latest checkpoint when resuming."""
    _check(settings)
    modules = stage.trainable()
    parameters = [parameter for module in modules.values() for parameter in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    # As state.json will hold it (JSON turns tuples into lists and int keys into strings), to compare like with like.
    recipe = json.loads(json.dumps({"stage": stage.name, **stage.recipe(), **_settings_recipe(settings)}))
    start = _resume(settings, recipe, modules, optimizer) if settings.resume else 0
    log = TrainLog(settings.out / "train_log.csv", start)
    losses = []
    bar = tqdm(total=settings.max_steps, initial=start, desc=stage.name, disable=not settings.progress)
    started = time.perf_counter()
    for step in range(start + 1, settings.max_steps + 1):
        step_started = time.perf_counter()
        loss = _step(stage, settings, step, parameters, optimizer)
        losses.append(loss)
        elapsed = log.elapsed_before + time.perf_counter() - started
        samples_per_s = settings.batch_size / (time.perf_counter() - step_started)
        log.append(step, loss, settings.learning_rate, samples_per_s, elapsed)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if step % settings.checkpoint_every == 0 or step == settings.max_steps:
            _checkpoint(settings, recipe, step, modules, optimizer)
            log.write_plot(settings.out / "loss.png", **stage_plot_labels(stage))
    bar.close()
    logged = TrainLog.read(log.path)
    final_loss = float(logged[-1]["loss"]) if logged else None
    return StageResult(settings.max_steps, losses, log.elapsed_before + time.perf_counter() - started, final_loss)


def _check(settings: StageSettings) -> None:
    for name in ("max_steps", "batch_size", "checkpoint_every", "keep_checkpoints"):
        if getattr(settings, name) < 1:
            raise InputError(name, f"must be at least 1, got {getattr(settings, name)}.")
    if settings.out.exists() and not settings.out.is_dir():
        raise InputError("out", f"{settings.out} is a file: give a folder for the stage's run.")
    found = list_checkpoints(settings.out)
    if found and not settings.resume:
        raise ResumeError(f"{settings.out} already holds checkpoints of a run (the latest: {found[-1].name}). "
                          "Pass --resume to continue it, or choose another --out.")  # fmt: skip
    settings.out.mkdir(parents=True, exist_ok=True)


def _settings_recipe(settings: StageSettings) -> dict:
    """The settings a resumed run must share (max_steps may grow, the learning rate and the timesteps may change,
    and progress is cosmetic)."""
    changeable = ("out", "max_steps", "learning_rate", "timesteps", "resume", "progress", "checkpoint_every",
                  "keep_checkpoints")  # fmt: skip
    return {name: value for name, value in asdict(settings).items() if name not in changeable}


def _step(stage: Stage, settings: StageSettings, step: int, parameters, optimizer: torch.optim.Optimizer) -> float:
    rng = np.random.default_rng([settings.seed, step])
    generator = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
    optimizer.zero_grad(set_to_none=True)
    loss = stage.loss(settings.batch_size, rng, generator)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"step {step}: the loss is {loss.item()}; lower the learning rate.")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
    optimizer.step()
    return float(loss.detach())


def _checkpoint(settings: StageSettings, recipe: dict, step: int, modules: dict, optimizer) -> None:
    def write(folder: Path) -> None:
        for name, module in modules.items():
            tensors = {key: value.detach().contiguous() for key, value in module.state_dict().items()}
            safetensors.torch.save_file(tensors, str(folder / f"{name}.safetensors"))
        save_optimizer_state(optimizer, folder / "optimizer.safetensors")

    write_checkpoint(settings.out, TrainingState(step=step, recipe=recipe), write, settings.keep_checkpoints)


def _resume(settings: StageSettings, recipe: dict, modules: dict, optimizer: torch.optim.Optimizer) -> int:
    folder = find_checkpoint(settings.out, "latest")
    state = read_state(folder, recipe)
    for name, module in modules.items():
        tensors, _ = read_safetensors(folder / f"{name}.safetensors")
        module.load_state_dict(tensors, strict=True)
    load_optimizer_state(optimizer, folder / "optimizer.safetensors")
    for group in optimizer.param_groups:  # the checkpoint's rate gives way to this run's
        group["lr"] = settings.learning_rate
    if state.step > settings.max_steps:
        raise ResumeError(f"{folder} is at step {state.step}, past --max-steps {settings.max_steps}: raise it.")
    return state.step
