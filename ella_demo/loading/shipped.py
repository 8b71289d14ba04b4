"""The config sets shipped inside the package (loading/configs), read without any download."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ella_demo.loading.presets import WeightlessConfigs

# Config folder of each weightless preset.
PRESET_CONFIG_DIRS = {"tiny": "tiny", "random-sd15": "sd15"}


def package_config_dir(name: str) -> Path:
    """Folder of a config set shipped in ella_demo/loading/configs ("sd15", "tiny", "flan_t5_xl_encoder")."""
    return Path(str(resources.files("ella_demo.loading").joinpath("configs", name)))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def read_weightless_configs(preset: str) -> WeightlessConfigs:
    """Every component's config for a weightless preset ("tiny" or "random-sd15")."""
    base = package_config_dir(PRESET_CONFIG_DIRS[preset])
    if preset == "tiny":
        t5_config, ella_config = read_json(base / "t5/config.json"), read_json(base / "ella.json")
    else:
        t5_config, ella_config = read_json(package_config_dir("flan_t5_xl_encoder") / "config.json"), {}
    return WeightlessConfigs(
        unet=read_json(base / "unet/config.json"),
        vae=read_json(base / "vae/config.json"),
        text_encoder=read_json(base / "text_encoder/config.json"),
        scheduler=read_json(base / "scheduler/scheduler_config.json"),
        t5=t5_config,
        ella=ella_config,
    )
