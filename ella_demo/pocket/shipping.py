"""`python -m ella_demo pocket ship`: the trained world into the package, with its checksums and training record.

The world folder's files (configs, tokenizer, float16 safetensors; nothing else) are copied to the
shipped world (loading/pocket.py's `shipped_world()`), with `SHA256SUMS` beside them, which loading
checks. Each stage's `record.json`, `train_log.csv` and `loss.png` go to the record folder
(assets/pocket/record in the repository), with `record.json` gathering every stage's settings, steps,
wall time and device, and the files' sizes and hashes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ella_demo.core.errors import InputError
from ella_demo.loading.pocket import CHECKSUMS, require_parts
from ella_demo.pocket.training import STAGES

MAX_SHIPPED_BYTES = 30 * 10**6  # the budget for the shipped weights
SHIPPED_SUFFIXES = (".json", ".safetensors", ".txt")
RECORD_FILES = ("record.json", "train_log.csv", "loss.png", "train_config.json", "train_summary.json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def world_files(world: Path) -> list[Path]:
    """The files a world folder ships: configs, tokenizer files and weights, relative paths sorted."""
    return sorted(path.relative_to(world) for path in world.rglob("*") if path.is_file() and path.suffix in
                  SHIPPED_SUFFIXES)  # fmt: skip


def ship_world(world: Path, runs: Path, target: Path, record: Path) -> dict:
    """Copy `world` into `target` with SHA256SUMS, and the stages' records into `record`; returns the record.

    Refuses (InputError) a world that lacks a part, or whose weights exceed MAX_SHIPPED_BYTES.
    """
    require_parts(world, ("vae", "text_encoder", "tokenizer", "unet", "ella.safetensors"))
    files = world_files(world)
    weights = sum((world / name).stat().st_size for name in files if name.suffix == ".safetensors")
    if weights > MAX_SHIPPED_BYTES:
        raise InputError("world", f"holds {weights / 1e6:.1f} MB of weights, over the {MAX_SHIPPED_BYTES / 1e6:.0f} "
                         "MB the package ships: train smaller models.")  # fmt: skip
    if world.resolve() != target.resolve():  # shipping the package's own world only rewrites its checksums
        shutil.rmtree(target, ignore_errors=True)
        for name in files:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(world / name, target / name)
    sums = [f"{sha256_of(target / name)}  {name.as_posix()}" for name in files]
    (target / CHECKSUMS).write_text("\n".join(sums) + "\n")
    return _write_record(runs, record, {line.split("  ")[1]: line.split("  ")[0] for line in sums}, weights)


def _write_record(runs: Path, record: Path, hashes: dict[str, str], weights: int) -> dict:
    """Copy each stage's record files into `record`/STAGE and gather them into `record`/record.json."""
    stages = {}
    for stage in STAGES:
        source = runs / stage
        if not source.is_dir():
            raise InputError("runs", f"{source} does not exist: every stage's run folder is part of the record.")
        (record / stage).mkdir(parents=True, exist_ok=True)
        for name in RECORD_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, record / stage / name)
        stages[stage] = json.loads((source / "record.json").read_text()) if (source / "record.json").is_file() else None
    gathered = {"stages": stages, "weights_bytes": weights, "sha256": hashes}
    (record / "record.json").write_text(json.dumps(gathered, indent=2) + "\n")
    return gathered
