"""Schedulers by name, each built fresh per request from the model's own scheduler config.

The official ELLA demo loads SD1.5 (whose folder ships a PNDM scheduler config) and then builds
its sampler with `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`. Every
scheduler here is built the same way, with no overrides, so the timesteps do not depend on how
the model was loaded: a hub folder, a single file read with the shipped configs and the
weightless presets all start from SD1.5's config file as published.
"""

from __future__ import annotations

import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# DPM-Solver++ 2M (the class defaults: algorithm_type dpmsolver++, order 2) is the official demo's sampler.
SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "dpm++": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
    "pndm": PNDMScheduler,
}


def scheduler_from_config(config: dict) -> SchedulerMixin:
    """The scheduler a config file describes (its `_class_name`), e.g. SD1.5's PNDMScheduler.

    Raises ValueError when the class is not a diffusers scheduler.
    """
    name = config.get("_class_name", "")
    scheduler_class = getattr(diffusers, name, None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise ValueError(f"scheduler config names {name!r}, which is not a diffusers scheduler class")
    return scheduler_class.from_config(config)


def make_scheduler(name: str, base_config) -> SchedulerMixin:
    """A new scheduler of the named kind, built from the model's scheduler config with no overrides.

    Keys the config file did not set keep each class's own defaults (diffusers records them in
    `_use_default_values`), exactly as in `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`.
    The shared pipeline's scheduler is never stepped or reconfigured: every request gets its own.
    """
    return SCHEDULERS[name].from_config(base_config)
