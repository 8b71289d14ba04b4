"""Choosing the device and dtypes a run uses, with clear errors for combinations we do not support."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ella_demo.core.errors import ExplorerError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# Which dtypes each device type runs. fp16 on CPU is missing kernels or very slow in PyTorch.
SUPPORTED_DTYPES = {
    "cuda": ("fp16", "bf16", "fp32"),
    "mps": ("fp16", "fp32"),
    "cpu": ("fp32", "bf16"),
}
DEFAULT_DTYPE = {"cuda": "fp16", "mps": "fp16", "cpu": "fp32"}


class DeviceError(ExplorerError, ValueError):
    """The requested device or dtype cannot be used on this machine."""


@dataclass(frozen=True)
class Placement:
    """Where the models run.

    `dtype` is for the UNet, VAE, CLIP and the connector; `t5_dtype` is for the T5 encoder, which
    ELLA was trained against in fp16, so by default it stays fp16 on a GPU whatever `dtype` says
    (`choose_placement`'s `t5_dtype` overrides that).
    """

    device: torch.device
    dtype: torch.dtype
    t5_dtype: torch.dtype

    def describe(self) -> str:
        names = {value: key for key, value in DTYPES.items()}
        return f"{self.device} ({names[self.dtype]}, T5 in {names[self.t5_dtype]})"


def available_device() -> torch.device:
    """cuda if present, then Apple's mps, then cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_placement(device: str | None = None, dtype: str | None = None, t5_dtype: str | None = None) -> Placement:
    """Resolve user choices (None = automatic) into a checked `Placement`.

    Raises:
        DeviceError: the device is unknown or absent, or a dtype is not supported on it.
    """
    resolved = available_device() if device in (None, "auto") else _parse_device(device)
    kind = resolved.type
    dtype_name = dtype or DEFAULT_DTYPE[kind]
    t5_name = t5_dtype or ("fp16" if kind in ("cuda", "mps") else dtype_name)
    for label, name in (("dtype", dtype_name), ("T5 dtype", t5_name)):
        if name not in DTYPES:
            raise DeviceError(f"Unknown {label} {name!r}: choose one of {', '.join(DTYPES)}.")
        if name not in SUPPORTED_DTYPES[kind]:
            raise DeviceError(
                f"{label} {name} is not supported on {kind}: choose one of {', '.join(SUPPORTED_DTYPES[kind])}."
            )
    return Placement(resolved, DTYPES[dtype_name], DTYPES[t5_name])


def _parse_device(name: str) -> torch.device:
    try:
        parsed = torch.device(name)
    except RuntimeError as error:
        raise DeviceError(f"Unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps.") from error
    if parsed.type not in SUPPORTED_DTYPES:
        raise DeviceError(f"Unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps.")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("Device cuda was requested but PyTorch sees no CUDA GPU: use --device cpu.")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise DeviceError(f"Device {name} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("Device mps was requested but it is not available here: use --device cpu.")
    return parsed
