"""LoRAs on the shared models, chosen per run: which start-up LoRAs the UNet and CLIP apply, and how strongly.

LoRAs are loaded once at start-up (loading/lora.py) as named adapters of the one UNet and CLIP text encoder
every session shares. Each run asks for a weight per LoRA; `AdapterSwitch.active` sets those weights for
the length of the run. Runs asking for the same weights may overlap; a run asking for others waits until
they end, so no run ever sees another's setting. A LoRA fused at start-up is part of the weights and has
no per-run weight.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from ella_demo.core.settings import SettingsError

LORA_WEIGHT_RANGE = (-2.0, 2.0)
# One run's LoRA weights: (name, weight) for every LoRA loaded at start-up, in loading order.
LoraWeights = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class LoraInfo:
    """One LoRA given at start-up.

    name: its adapter name (from the file name). file: the file's name, never its folder (the UI shows it).
    weight: the weight runs use unless they ask for another (fused: the weight it was fused with).
    parts: the models it changes, of "unet" and "text_encoder" (CLIP). fused: merged into the weights at start-up.
    """

    name: str
    file: str
    weight: float
    parts: tuple[str, ...]
    fused: bool = False

    def describe(self) -> str:
        parts = " and ".join("UNet" if part == "unet" else "CLIP" for part in self.parts)
        how = f"fused at start-up at weight {self.weight:g}, on in every run" if self.fused else "weight chosen per run"
        return f"{self.file} ({parts}; {how})"


@dataclass(frozen=True)
class EmbeddingInfo:
    """A textual-inversion embedding CLIP learned at start-up: `token` in a prompt stands for `vectors` learned
    token vectors (CLIP side and ella+clip only; T5 never sees them). file: the file's name, never its folder."""

    token: str
    file: str
    vectors: int


def resolve_lora_weights(loras: tuple[LoraInfo, ...], requested: Mapping[str, float] | None) -> LoraWeights:
    """The weight of every switchable LoRA for one run: `requested` where it names one, else its start-up weight.

    Raises:
        SettingsError: `requested` names a LoRA that was not loaded or was fused, or a weight out of range.
    """
    switchable = {lora.name: lora for lora in loras if not lora.fused}
    requested = dict(requested or {})
    for name, weight in requested.items():
        if name not in switchable:
            fused = [lora.name for lora in loras if lora.fused]
            why = "was fused at start-up; its weight is fixed" if name in fused else "was not loaded at start-up"
            choices = ", ".join(switchable) or "none (start the app with --lora FILE[:WEIGHT])"
            raise SettingsError("loras", f"names {name!r}, which {why}. LoRAs with a per-run weight: {choices}.")
        low, high = LORA_WEIGHT_RANGE
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise SettingsError(
                "loras", f"weight of {name!r} must be a number from {low:g} to {high:g}, got {weight!r}."
            )
        if not low <= weight <= high:
            raise SettingsError("loras", f"weight of {name!r} must be from {low:g} to {high:g}, got {weight!r}.")
    return tuple((name, float(requested.get(name, lora.weight))) for name, lora in switchable.items())


class AdapterSwitch:
    """Sets the shared pipeline's LoRA weights for each run, so that concurrent runs never mix settings.

    `pipe` is the diffusers StableDiffusionPipeline whose UNet and text encoder hold the LoRAs as named
    adapters; `clip_encoder` caches CLIP features, which depend on the text encoder's LoRAs, so its
    `variant` follows the weights in force.
    """

    def __init__(self, pipe, clip_encoder):
        self._pipe = pipe
        self._clip_encoder = clip_encoder
        self._condition = threading.Condition()
        self._in_force: LoraWeights | None = None  # None: not set by any run yet
        self._running = 0
        self._waiting = 0

    @contextmanager
    def active(self, weights: LoraWeights) -> Iterator[None]:
        """Hold `weights` for the body's length: waits while runs with other weights are in progress.

        A run whose weights are already in force joins at once unless another run is waiting for its
        turn, so a stream of runs with one setting never starves a run with another.
        """
        live = tuple((name, weight) for name, weight in weights if weight != 0.0)
        with self._condition:
            if not (self._running == 0 or (self._in_force == live and self._waiting == 0)):
                self._waiting += 1
                self._condition.wait_for(lambda: self._running == 0 or self._in_force == live)
                self._waiting -= 1
            if self._in_force != live:
                self._apply(live)
            self._running += 1
        try:
            yield
        finally:
            with self._condition:
                self._running -= 1
                self._condition.notify_all()

    def reset(self) -> None:
        """Forget the weights in force, after LoRAs were loaded or removed: the next run sets its own again."""
        with self._condition:
            if self._running:
                raise RuntimeError("LoRAs can only be loaded or removed while no run is in progress")
            self._in_force = None

    def _apply(self, live: LoraWeights) -> None:
        """Make the pipeline apply exactly the LoRAs in `live` at their weights (none: the models as loaded)."""
        if self._has_adapters():
            if live:
                self._pipe.enable_lora()
                self._pipe.set_adapters([name for name, _ in live], [weight for _, weight in live])
            else:
                self._pipe.disable_lora()
        self._clip_encoder.variant = live
        self._in_force = live

    def _has_adapters(self) -> bool:
        return any(self._pipe.get_list_adapters().values())
