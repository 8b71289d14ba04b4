"""The connector's checkpoint format: safetensors tensors, the architecture in the file's metadata."""

from __future__ import annotations

import json
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from ella_demo.core.connector import ELLA, EllaConfig
from ella_demo.loading.hub import ModelSourceError, fetch, missing_files
from ella_demo.loading.sources import ELLA_CONFIG_METADATA_KEY, ELLA_FILENAME, HubLocation


class CheckpointMismatchError(ModelSourceError):
    """A checkpoint's tensors do not match the model it is loaded into."""


def save_ella_checkpoint(model: ELLA, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
    """Write the connector as safetensors (fp16 like the release), its config in the metadata."""
    tensors = {name: tensor.detach().to("cpu", dtype).contiguous() for name, tensor in model.state_dict().items()}
    metadata = {ELLA_CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a `.safetensors` file, on the CPU as stored, and the file's metadata ({} if none).

    The one reader of safetensors files outside the model libraries' own loaders: the connector's
    checkpoints and the training command's state files both come through here.

    Raises:
        ModelSourceError: the name does not end in .safetensors (pickle files are never read), or
            the file is not a readable safetensors file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelSourceError(f"{path.name}: this loads from .safetensors files only (pickle files can run code).")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except Exception as error:
        raise ModelSourceError(f"{path} is not a readable safetensors file: {error}") from error
    return tensors, metadata


def load_ella_checkpoint(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ELLA:
    """Build the connector a checkpoint describes and load it strictly.

    The architecture comes from the file's metadata when we wrote it, else it is the released SD1.5
    default. Tensors are cast to `dtype` (the release is stored in fp16).

    Raises:
        ModelSourceError: not a readable .safetensors file.
        CheckpointMismatchError: missing, unexpected or wrongly shaped tensors, all listed.
    """
    state_dict, metadata = read_safetensors(path)
    config_json = metadata.get(ELLA_CONFIG_METADATA_KEY)
    config = EllaConfig(**json.loads(config_json)) if config_json else EllaConfig()
    with torch.device("meta"):
        model = ELLA(config)
    check_state_dict(model, state_dict, source=str(path))
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


def check_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise one error listing every missing, unexpected and wrongly shaped tensor."""
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in state_dict.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = sorted(
        f"{name} (file {found[name]}, model {expected[name]})"
        for name in set(expected) & set(found)
        if expected[name] != found[name]
    )
    if missing or unexpected or wrong_shape:
        lines = [f"{source} does not match the ELLA connector it is loaded into."]
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if names:
                lines.append(f"{label} ({len(names)}): {', '.join(names)}")
        raise CheckpointMismatchError("\n".join(lines))


def resolve_ella_file(source: Path | HubLocation, cache_dir: str | Path | None) -> Path:
    if isinstance(source, HubLocation):
        filename = source.path or ELLA_FILENAME
        folder = fetch(
            HubLocation(source.repo_id),
            [filename],
            "ELLA connector",
            cache_dir,
            lambda folder: missing_files(folder, [filename]),
        )
        return folder / filename
    path = source / ELLA_FILENAME if source.is_dir() else source
    if not path.is_file():
        raise ModelSourceError(f"No ELLA checkpoint at {path}: pass the .safetensors file itself.")
    return path
