"""Shared fixtures: offline by default, the tiny preset, and tiny models saved in the hub layout."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from tests_support import free_port, train_toy_stage

# Tests never reach a model hub; without this a missing-file lookup can stall before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# The released connector checkpoint's tensor names and shapes, one "name<TAB>[shape]" a line.
MANIFEST = Path(__file__).resolve().parent / "data" / "ella_sd15_keys.tsv"


@pytest.fixture(scope="session")
def manifest() -> dict[str, tuple[int, ...]]:
    """The released checkpoint's tensor names and shapes (tests/data/ella_sd15_keys.tsv)."""
    entries = {}
    for line in MANIFEST.read_text().splitlines():
        name, shape = line.split("\t")
        entries[name] = tuple(int(size) for size in shape.strip("[]").split(","))
    return entries


def weights_digest(models) -> str:
    """One hash over every weight of the loaded models, bit for bit."""
    digest = hashlib.sha256()
    for module in (models.pipe.unet, models.pipe.vae, models.pipe.text_encoder, models.t5, models.ella):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def tiny():
    """The tiny preset, loaded once for the session. Tests must not modify it, and the session
    fails if one did (an in-place `.half()` once made later tests order-dependent)."""
    from ella_demo import load_models

    models = load_models("tiny", device="cpu")
    before = weights_digest(models)
    yield models
    assert weights_digest(models) == before, "a test changed the shared tiny models' weights"


@pytest.fixture(scope="session")
def hub_layout(tiny, tmp_path_factory) -> dict[str, Path]:
    """The tiny models saved the way the hub repos lay them out.

    sd15: a diffusers pipeline folder (like stable-diffusion-v1-5/stable-diffusion-v1-5);
    ella_repo: the connector file plus the T5 encoder subfolder (like QQGYLab/ELLA).
    """
    from ella_demo.loading.checkpoint import save_ella_checkpoint
    from ella_demo.loading.shipped import package_config_dir
    from ella_demo.loading.sources import ELLA_FILENAME, T5_SUBFOLDER

    root = tmp_path_factory.mktemp("hub_layout")
    sd15 = root / "sd15"
    tiny.pipe.save_pretrained(sd15)
    # The hub's scheduler file as published (save_pretrained would write every default into it).
    shutil.copy(package_config_dir("sd15") / "scheduler" / "scheduler_config.json", sd15 / "scheduler")
    ella_repo = root / "ella_repo"
    t5_folder = ella_repo / T5_SUBFOLDER
    tiny.t5.save_pretrained(t5_folder)
    tiny.t5_tokenizer.save_pretrained(t5_folder)
    save_ella_checkpoint(tiny.ella, ella_repo / ELLA_FILENAME)
    return {"sd15": sd15, "ella_repo": ella_repo, "ella_file": ella_repo / ELLA_FILENAME, "t5": t5_folder}


def serve(models):
    """The app on `models`, served on a free localhost port until the generator is closed."""
    from ella_demo.app import build_app, launch_app

    app = build_app(models)
    port = free_port()
    launch_app(app, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="session")
def server(tiny):
    """The app on the tiny preset, served on a free localhost port for the whole session."""
    yield from serve(tiny)


@pytest.fixture(scope="session")
def pocket_server():
    """The app on the pocket preset (the shipped trained world), for the whole session."""
    from ella_demo.loading.models import load_models

    yield from serve(load_models("pocket"))


@pytest.fixture(scope="session")
def pocket_world(tmp_path_factory) -> Path:
    """A toy pocket world: every stage trained a few steps by the pocket training code (vae, clip, unet 3 steps
    each; the connector 2 steps with the real MiniLM). Its pictures are not meaningful; its layout is the real one."""
    from ella_demo.pocket.connector_stage import ConnectorData, train_connector_stage
    from ella_demo.pocket.stage_runner import StageSettings

    root = tmp_path_factory.mktemp("pocket")
    for stage in ("vae", "clip", "unet"):
        train_toy_stage(stage, root / "runs", root / "world", max_steps=3)
    settings = StageSettings(out=root / "runs" / "connector", max_steps=2, batch_size=2, learning_rate=1e-4,
                             checkpoint_every=2, progress=False)  # fmt: skip
    train_connector_stage(root / "world", ConnectorData(root / "scenes", 8), settings)
    return root / "world"
