"""`python -m ella_demo pocket train STAGE`: each stage trained, resumable, then exported into the world folder.

Stages run in order (each reads what the ones before exported): vae, clip, unet, connector. Run
folders (checkpoints, train_log.csv, loss.png) are `<runs>/<stage>/`; the world folder receives each
stage's model. Defaults (STAGE_DEFAULTS) are the shipped world's settings; the tests pass tiny ones.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ella_demo.core.errors import InputError
from ella_demo.loading.pocket import load_autoencoder, load_pocket_clip, require_parts
from ella_demo.loading.toy_tokenizers import build_clip_tokenizer
from ella_demo.pocket.captions import prompt_sets, training_vocabulary
from ella_demo.pocket.stage_runner import StageResult, StageSettings, run_stage
from ella_demo.pocket.stages import ClipStage, UNetStage, VaeStage
from ella_demo.pocket.vocabulary import COLOURS, SHAPES
from ella_demo.pocket.world import export_clip, export_unet, export_vae

STAGES = ("vae", "clip", "unet", "connector")


@dataclass(frozen=True)
class StageDefaults:
    max_steps: int
    batch_size: int
    learning_rate: float


STAGE_DEFAULTS = {
    "vae": StageDefaults(max_steps=2500, batch_size=16, learning_rate=1e-3),
    "clip": StageDefaults(max_steps=2000, batch_size=64, learning_rate=5e-4),
    "unet": StageDefaults(max_steps=4500, batch_size=32, learning_rate=5e-4),  # then to 7,000 at 1e-4: README
    "connector": StageDefaults(max_steps=3000, batch_size=32, learning_rate=3e-4),
}


@dataclass(frozen=True)
class PocketRun:
    """Where a stage trains and what it exports into. configs: architecture overrides by stage part (tests)."""

    stage: str
    world: Path
    runs: Path
    settings: StageSettings
    configs: dict | None = None
    command: str | None = None  # the command line that ran it, kept in the stage's record


def stage_settings(stage: str, runs: Path, **overrides) -> StageSettings:
    """The stage's StageSettings: STAGE_DEFAULTS, then `overrides` (None values ignored)."""
    if stage not in STAGES:
        raise InputError("stage", f"must be one of {', '.join(STAGES)}, got {stage!r}.")
    if overrides.get("timesteps") is not None and stage != "unet":
        raise InputError("timesteps", f"sets the UNet stage's training timesteps; the {stage} stage has none.")
    defaults = STAGE_DEFAULTS[stage]
    settings = StageSettings(out=runs / stage, max_steps=defaults.max_steps, batch_size=defaults.batch_size,
                             learning_rate=defaults.learning_rate)  # fmt: skip
    return replace(settings, **{key: value for key, value in overrides.items() if value is not None})


def train_model_stage(run: PocketRun) -> StageResult:
    """Train the vae, clip or unet stage and export its model into the world folder; write the stage record."""
    configs = run.configs or {}
    seed = run.settings.seed
    if run.stage == "vae":
        stage = VaeStage(configs.get("vae"), seed)
    elif run.stage == "clip":
        tokenizer = build_clip_tokenizer(sorted(training_vocabulary()))
        stage = ClipStage(tokenizer, configs.get("text_encoder"), configs.get("vision"), seed)
    else:
        require_parts(run.world, ("vae", "text_encoder", "tokenizer"))
        text_encoder, tokenizer = load_pocket_clip(run.world)
        stage = UNetStage(load_autoencoder(run.world), text_encoder, tokenizer, configs.get("unet"), seed,
                          run.settings.timesteps)  # fmt: skip
    result = run_stage(stage, run.settings)
    run.world.mkdir(parents=True, exist_ok=True)
    exported = {"vae": export_vae, "clip": export_clip, "unet": export_unet}[run.stage](stage, run.world)
    write_stage_record(run, result.steps, result.wall_s, result.final_loss, _measures(run, stage, exported))
    return result


def _measures(run: PocketRun, stage, exported) -> dict:
    """What a stage's record adds: the VAE's latent scale; how well the CLIP's text finds its picture on held-out
    captions and on paraphrases (words it never saw), and how often a picture prefers its caption to the caption
    with one shape (or colour) word swapped."""
    if run.stage == "vae":
        return {"latent_scaling_factor": exported}
    if run.stage == "clip":
        held_out = prompt_sets(run.settings.seed, {"seen": 256, "paraphrase": 256})
        swaps = {f"prefers_own_caption_to_one_{kind}_swapped": stage.swap_preference(held_out["seen"], names)
                 for kind, names in (("shape", SHAPES), ("colour", tuple(COLOURS)))}  # fmt: skip
        return swaps | {f"retrieval_top1_of_64_{name}": stage.retrieval_accuracy(group) for name, group in
                        held_out.items()}  # fmt: skip
    return {}


def write_stage_record(run: PocketRun, steps: int, wall_s: float, last_loss: float | None, extra: dict) -> None:
    """`<runs>/<stage>/record.json`: the settings, steps, wall time, device and final loss of the stage, and every
    command line that trained it (a resumed run adds its own to those of the runs before)."""
    path = run.settings.out / "record.json"
    commands = json.loads(path.read_text()).get("commands", []) if path.is_file() else []
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(run.settings).items()}
    record = {
        "stage": run.stage,
        "settings": settings,
        "steps": steps,
        "wall_s": wall_s,
        "last_loss": last_loss,
        "device": f"cpu, {torch.get_num_threads()} torch threads, {platform.machine()}",
        "torch": torch.__version__,
        "commands": commands + ([run.command] if run.command else []),
        **extra,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
