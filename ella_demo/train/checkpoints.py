"""Training checkpoints: everything a run needs to continue exactly where it stopped, in safetensors.

A checkpoint is a folder `checkpoints/step-NNNNNNN/` under the run's output folder:
- `connector.safetensors`: the connector in float32, released key layout (loads with `--ella`);
- `optimizer.safetensors`: AdamW's moments and step counts, its hyperparameters in the metadata;
- `ema.safetensors`: the EMA weights, when the run keeps an EMA;
- `state.json`: the step, the recipe the run was started with, the gradient scaler's state.
Nothing is pickled, so a checkpoint from someone else cannot run code. A checkpoint is written to a
temporary folder and renamed when complete: an interrupted save leaves the previous one intact.
Random draws are a function of (seed, step), so no random-generator state needs saving.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from diffusers.training_utils import EMAModel

from ella_demo.core.connector import ELLA
from ella_demo.core.errors import ExplorerError
from ella_demo.loading.checkpoint import read_safetensors, save_ella_checkpoint

CHECKPOINTS = "checkpoints"
_STEP_FOLDER = re.compile(r"^step-(\d+)$")


class ResumeError(ExplorerError):
    """A checkpoint that cannot be resumed: missing, incomplete, or from a different recipe."""


@dataclass(frozen=True)
class TrainingState:
    """What `state.json` holds: the optimizer steps done, the recipe, and the gradient scaler's state."""

    step: int
    recipe: dict
    scaler: dict | None = None


def save_checkpoint(
    out: Path,
    state: TrainingState,
    connector: ELLA,
    optimizer: torch.optim.Optimizer,
    ema: EMAModel | None,
    keep: int,
) -> Path:
    """Write the checkpoint of `state.step` and delete all but the newest `keep`. Returns its folder."""

    def write(folder: Path) -> None:
        save_ella_checkpoint(connector, folder / "connector.safetensors", dtype=torch.float32)
        save_optimizer_state(optimizer, folder / "optimizer.safetensors")
        if ema is not None:
            _save_ema(ema, connector, folder / "ema.safetensors")

    return write_checkpoint(out, state, write, keep)


def write_checkpoint(out: Path, state: TrainingState, write: Callable[[Path], None], keep: int) -> Path:
    """The folder of `state.step`: `write(folder)` fills it, then `state.json` is added and it is renamed into place.

    Written under a `.partial` name first, so an interrupted save leaves the previous checkpoints intact;
    all but the newest `keep` are deleted afterwards.
    """
    folder = out / CHECKPOINTS / f"step-{state.step:07d}"
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    state_json = {"step": state.step, "recipe": state.recipe, "scaler": state.scaler}
    (partial / "state.json").write_text(json.dumps(state_json, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old)
    return folder


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoint folders under `out`, oldest first."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if _STEP_FOLDER.match(path.name) and (path / "state.json").is_file()]
    return sorted(found, key=lambda path: int(_STEP_FOLDER.match(path.name).group(1)))


def find_checkpoint(out: Path, resume: str) -> Path:
    """`resume` is "latest" (the newest checkpoint under `out`) or a checkpoint folder."""
    if resume == "latest":
        found = list_checkpoints(out)
        if not found:
            raise ResumeError(f"--resume latest: {out / CHECKPOINTS} holds no checkpoint yet. Drop --resume to start.")
        return found[-1]
    folder = Path(resume)
    if not (folder / "state.json").is_file():
        raise ResumeError(f"--resume {resume}: not a checkpoint folder (it has no state.json). Use 'latest' or a "
                          f"folder such as {out / CHECKPOINTS / 'step-0000500'}.")  # fmt: skip
    return folder


def load_checkpoint(
    folder: Path, recipe: dict, connector: ELLA, optimizer: torch.optim.Optimizer, ema: EMAModel | None
) -> TrainingState:
    """Restore the connector, optimizer and EMA in place from `folder`; check it was made with `recipe`."""
    state = read_state(folder, recipe)
    tensors, _ = read_safetensors(folder / "connector.safetensors")
    connector.load_state_dict(tensors, strict=True)
    load_optimizer_state(optimizer, folder / "optimizer.safetensors")
    if ema is not None:
        if not (folder / "ema.safetensors").is_file():
            raise ResumeError(f"{folder} has no EMA weights: it was saved by a run without --ema-decay.")
        _load_ema(ema, connector, folder / "ema.safetensors")
    return state


def read_state(folder: Path, recipe: dict) -> TrainingState:
    """The checkpoint's `state.json`; ResumeError naming every setting of `recipe` it was not made with."""
    state_json = json.loads((folder / "state.json").read_text())
    differing = sorted(key for key in recipe if state_json["recipe"].get(key) != recipe[key])
    if differing:
        details = ", ".join(f"{key}: {state_json['recipe'].get(key)!r} then, {recipe[key]!r} now" for key in differing)
        raise ResumeError(f"{folder} was trained with other settings ({details}). Resume with the same settings, "
                          "or start a new run in another --out folder.")  # fmt: skip
    return TrainingState(step=state_json["step"], recipe=state_json["recipe"], scaler=state_json.get("scaler"))


def save_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Per-parameter state as `state.{index}.{name}` tensors; the param groups as JSON metadata."""
    state_dict = optimizer.state_dict()
    tensors = {
        f"state.{index}.{name}": torch.as_tensor(value).detach().to("cpu").contiguous()
        for index, entries in state_dict["state"].items()
        for name, value in entries.items()
    }
    metadata = {"param_groups": json.dumps(state_dict["param_groups"])}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    tensors, metadata = read_safetensors(path)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})


def _save_ema(ema: EMAModel, connector: ELLA, path: Path) -> None:
    """The EMA's shadow weights under the connector's parameter names; its counters as metadata."""
    names = [name for name, _ in connector.named_parameters()]
    tensors = {
        name: shadow.detach().to("cpu").contiguous() for name, shadow in zip(names, ema.shadow_params, strict=True)
    }
    counters = {key: value for key, value in ema.state_dict().items() if key != "shadow_params"}
    safetensors.torch.save_file(tensors, str(path), metadata={"ema": json.dumps(counters)})


def _load_ema(ema: EMAModel, connector: ELLA, path: Path) -> None:
    tensors, metadata = read_safetensors(path)
    shadow = [tensors[name] for name, _ in connector.named_parameters()]
    ema.load_state_dict({**json.loads(metadata["ema"]), "shadow_params": shadow})
