"""Schedulers by name, each built fresh per request from the pipeline's stored config."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# name -> (class, config overrides). DPM-Solver++ 2M is the official ELLA demo's sampler.
SCHEDULERS = {
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
}


def make_scheduler(name: str, base_config) -> SchedulerMixin:
    """A new scheduler of the named kind sharing the base config's noise schedule.

    The shared pipeline's scheduler is never stepped or reconfigured: every request gets its own.
    """
    scheduler_class, overrides = SCHEDULERS[name]
    return scheduler_class.from_config(base_config, **overrides)
