"""Choosing the device and dtypes a run uses, with clear errors for combinations we do not support."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ella_demo.core.errors import ExplorerError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}

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
    (`choose_placement`'s `t5_dtype` overrides that). `t5_device` is where T5 runs: `device` unless it was
    moved to the CPU to spare GPU memory (`--t5-device cpu`).
    """

    device: torch.device
    dtype: torch.dtype
    t5_dtype: torch.dtype
    t5_device: torch.device | None = None

    def __post_init__(self) -> None:
        if self.t5_device is None:
            object.__setattr__(self, "t5_device", self.device)

    def describe(self) -> str:
        where = "" if self.t5_device == self.device else f" on {self.t5_device}"
        return f"{self.device} ({DTYPE_NAMES[self.dtype]}, T5 in {DTYPE_NAMES[self.t5_dtype]}{where})"

    @property
    def t5_caveat(self) -> str | None:
        """What the user should know about where T5 runs, or None when it runs with the rest in the usual way."""
        if self.t5_device == self.device or self.t5_device.type != "cpu":
            return None
        return (
            f"T5 runs on the CPU in {DTYPE_NAMES[self.t5_dtype]}, not in the fp16 ELLA was trained with (PyTorch "
            "has no usable fp16 on CPUs): its features, and so the ELLA images, can differ slightly from a GPU's. "
            "A new prompt is encoded at CPU speed (README, 'Small GPUs', gives a measurement); a repeated one "
            "comes from the cache."
        )


def available_device() -> torch.device:
    """cuda if present, then Apple's mps, then cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_placement(
    device: str | None = None, dtype: str | None = None, t5_dtype: str | None = None, t5_device: str | None = None
) -> Placement:
    """Resolve user choices (None = automatic) into a checked `Placement`; `t5_device` None: T5 runs on `device`.

    Raises:
        DeviceError: the device is unknown or absent, or a dtype is not supported on it.
    """
    resolved = available_device() if device in (None, "auto") else _parse_device(device)
    t5_resolved = resolved if t5_device in (None, "auto") else _parse_device(t5_device)
    dtype_name = dtype or DEFAULT_DTYPE[resolved.type]
    t5_name = t5_dtype or _default_t5_dtype(t5_resolved, resolved, dtype_name)
    for label, name, kind in (("dtype", dtype_name, resolved.type), ("T5 dtype", t5_name, t5_resolved.type)):
        if name not in DTYPES:
            raise DeviceError(f"Unknown {label} {name!r}: choose one of {', '.join(DTYPES)}.")
        if name not in SUPPORTED_DTYPES[kind]:
            raise DeviceError(
                f"{label} {name} is not supported on {kind}: choose one of {', '.join(SUPPORTED_DTYPES[kind])}."
            )
    return Placement(resolved, DTYPES[dtype_name], DTYPES[t5_name], t5_resolved)


def _default_t5_dtype(t5_device: torch.device, device: torch.device, dtype_name: str) -> str:
    """fp16 on a GPU (as ELLA was trained); on the CPU, the run's dtype when everything is there, else fp32."""
    if t5_device.type in ("cuda", "mps"):
        return "fp16"
    return dtype_name if t5_device == device else DEFAULT_DTYPE["cpu"]


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
