"""LoRAs on the shared models, chosen per run: which start-up LoRAs the UNet and CLIP apply, and how strongly.

LoRAs are loaded once at start-up (loading/lora.py) as named adapters of the one UNet and CLIP text encoder
every session shares. Each run asks for a weight per LoRA; `AdapterSwitch.active` sets those weights for
the length of the run. Runs asking for the same weights may overlap; a run asking for others waits until
they end, so no run ever sees another's setting, and runs start in the order they asked. A LoRA fused at
start-up is part of the weights and has no per-run weight.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
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

    def describe(self) -> str:
        return f"{self.file}, {self.vectors} vector{'s' * (self.vectors > 1)}"


def check_lora_weight(name: str, weight) -> float:
    """`weight` as a float if it is a finite number in LORA_WEIGHT_RANGE (ints and numpy floats too)."""
    low, high = LORA_WEIGHT_RANGE
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise SettingsError("loras", f"weight of {name!r} must be a number from {low:g} to {high:g}, got {weight!r}.")
    try:
        value = float(weight)
    except OverflowError:
        value = math.inf
    if not (math.isfinite(value) and low <= value <= high):
        raise SettingsError("loras", f"weight of {name!r} must be from {low:g} to {high:g}, got {weight!r}.")
    return value


def resolve_lora_weights(loras: tuple[LoraInfo, ...], requested: Mapping[str, float] | None) -> LoraWeights:
    """The weight of every switchable LoRA for one run: `requested` where it names one, else its start-up weight.

    Raises:
        SettingsError: `requested` names a LoRA that was not loaded or was fused, or a weight out of range.
    """
    switchable = {lora.name: lora for lora in loras if not lora.fused}
    chosen = {name: lora.weight for name, lora in switchable.items()}
    for name, weight in (requested or {}).items():
        if name not in switchable:
            fused = [lora.name for lora in loras if lora.fused]
            why = "was fused at start-up; its weight is fixed" if name in fused else "was not loaded at start-up"
            choices = ", ".join(switchable) or "none (start the app with --lora FILE[:WEIGHT])"
            raise SettingsError("loras", f"names {name!r}, which {why}. LoRAs with a per-run weight: {choices}.")
        chosen[name] = check_lora_weight(name, weight)
    return tuple(chosen.items())


class AdapterSwitch:
    """Sets the shared pipeline's LoRA weights for each run, so that concurrent runs never mix settings.

    `pipe` is the diffusers StableDiffusionPipeline whose UNet and text encoder hold the LoRAs as named
    adapters; `loras()` lists them (`LoadedModels.loras`). `clip_encoder` caches CLIP features, which depend
    on the weights of the LoRAs with a CLIP part: its `variant` (part of every cache key) follows those
    weights. Runs queue in the order they ask; the run at the head starts when nothing runs or when the
    weights in force are its own, so a run with other weights is never overtaken.
    """

    def __init__(self, pipe, clip_encoder, loras: Callable[[], tuple[LoraInfo, ...]]):
        self._pipe = pipe
        self._clip_encoder = clip_encoder
        self._loras = loras
        self._clip_loras: frozenset[str] = frozenset()
        # Not re-entrant: a run started inside an exclusive change would deadlock instead of slipping in.
        self._condition = threading.Condition(threading.Lock())
        self._queue: deque[object] = deque()
        self._in_force: LoraWeights | None = None  # None: unknown, set again by the next run
        self._running = 0

    @contextmanager
    def active(self, weights: LoraWeights) -> Iterator[None]:
        """Hold `weights` for the body's length, after every run that asked earlier has started."""
        live = tuple((name, weight) for name, weight in weights if weight != 0.0)
        with self._turn(lambda: self._running == 0 or self._in_force == live):
            if removed := {name for name, _ in live} - {lora.name for lora in self._loras()}:
                raise SettingsError("loras", f"names LoRAs removed while the run waited: {', '.join(sorted(removed))}.")
            if self._in_force != live:
                self._apply(live)
            self._running += 1
        try:
            yield
        finally:
            with self._condition:
                self._running -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Change the adapters themselves (load, fuse, remove LoRAs) with no run in progress or starting; after
        the body, CLIP's cached features are dropped (its weights may have changed) and `loras()` read again."""
        with self._turn(lambda: self._running == 0):
            self._in_force = None
            try:
                yield
            finally:
                self._clip_loras = frozenset(lora.name for lora in self._loras() if "text_encoder" in lora.parts)
                self._clip_encoder.cache.clear()

    @contextmanager
    def _turn(self, may_start) -> Iterator[None]:
        """Wait, holding the lock, until this caller heads the queue and `may_start()`; then leave the queue."""
        ticket = object()
        with self._condition:
            self._queue.append(ticket)
            try:
                self._condition.wait_for(lambda: self._queue[0] is ticket and may_start())
            finally:
                self._queue.remove(ticket)
                self._condition.notify_all()
            yield

    def _apply(self, live: LoraWeights) -> None:
        """Make the pipeline apply exactly the LoRAs in `live` at their weights (none: the models as loaded)."""
        self._in_force = None  # until the pipeline holds `live` in full
        if any(self._pipe.get_list_adapters().values()):
            if live:
                self._pipe.enable_lora()
                self._pipe.set_adapters([name for name, _ in live], [weight for _, weight in live])
            else:
                self._pipe.disable_lora()
        self._clip_encoder.variant = tuple((name, weight) for name, weight in live if name in self._clip_loras)
        self._in_force = live
