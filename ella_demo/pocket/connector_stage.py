"""The fourth pocket stage: the connector, trained by the project's training command on the world folder.

The world is then a complete SD folder (vae, pocket CLIP, unet), so this stage is `train` with
preset pocket: a new connector (the released ELLA's architecture; width 128, the UNet's; input 384,
MiniLM's) against the frozen pocket UNet and VAE and the frozen MiniLM, on an image folder of
rendered training scenes written once. The trained `ella.safetensors` is copied into the world, and
the stage's record.json is written like the other stages'.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ella_demo.loading.sources import ELLA_SCRATCH
from ella_demo.pocket.captions import training_example, training_rng
from ella_demo.pocket.render import render
from ella_demo.pocket.stage_runner import StageSettings
from ella_demo.pocket.training import PocketRun, write_stage_record
from ella_demo.train.config import TrainConfig
from ella_demo.train.loop import TrainResult, train

TEXT_LENGTH = 64  # MiniLM tokens per caption: the longest training captions take about 50
DATA_SEED = 1  # the connector's pictures are another draw than the UNet's on-the-fly ones (seed 0)
VALIDATION_PROMPTS = (
    "On a white background, a large red circle to the left of a small blue square, all filled.",
    "Two small yellow triangles and a large green cross, all outlined, on a black background.",
)


@dataclass(frozen=True)
class ConnectorData:
    """The image folder the connector trains on: `count` rendered training scenes and their captions.

    cache: where the frozen models' features of every scene are kept (train's feature cache: the VAE
    latents and MiniLM tokens are computed once instead of at every epoch); None computes them online.
    """

    folder: Path
    count: int
    cache: Path | None = None


def write_scene_folder(data: ConnectorData, seed: int = DATA_SEED) -> Path:
    """The image folder `train` reads (PNGs and metadata.jsonl), written once; kept if already complete."""
    metadata = data.folder / "metadata.jsonl"
    if metadata.is_file() and len(metadata.read_text(encoding="utf-8").splitlines()) == data.count:
        return data.folder
    data.folder.mkdir(parents=True, exist_ok=True)
    rng, lines = training_rng(seed), []
    for index in range(data.count):
        prompt = training_example(rng)
        name = f"{index:06d}.png"
        render(prompt.scene).save(data.folder / name)
        lines.append(json.dumps({"file_name": name, "text": prompt.text}))
    partial = metadata.with_suffix(".partial")
    partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
    partial.replace(metadata)
    return data.folder


def connector_config(
    world: Path, data: ConnectorData, settings: StageSettings, text_encoder: str | None = None
) -> TrainConfig:
    """The TrainConfig of the connector stage; text_encoder: the language model (default: the MiniLM package)."""
    return TrainConfig(
        train_data=str(data.folder), out=settings.out, preset="pocket", sd15=str(world), ella=ELLA_SCRATCH,
        text_encoder=text_encoder, device="cpu", resolution=64, batch_size=settings.batch_size,
        max_steps=settings.max_steps, learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm, t5_length=TEXT_LENGTH, seed=settings.seed, feature_cache=data.cache,
        checkpoint_every=settings.checkpoint_every, keep_checkpoints=settings.keep_checkpoints,
        resume="latest" if settings.resume else None, validate_every=settings.checkpoint_every,
        validation_prompts=VALIDATION_PROMPTS, validation_steps=20, progress=settings.progress,
    )  # fmt: skip


def train_connector_stage(
    world: Path,
    data: ConnectorData,
    settings: StageSettings,
    text_encoder: str | None = None,
    command: str | None = None,
) -> TrainResult:
    """Write the scenes, train the connector, copy `ella.safetensors` into the world folder, write the record.

    text_encoder: the language model (default: the MiniLM package); command: the command line, for the record.
    """
    write_scene_folder(data)
    result = train(connector_config(world, data, settings, text_encoder=text_encoder))
    shutil.copyfile(result.connector, world / "ella.safetensors")
    run = PocketRun("connector", world, settings.out.parent, settings, command=command)
    write_stage_record(run, result.steps, result.wall_s, result.final_loss, {"scenes": data.count})
    return result
