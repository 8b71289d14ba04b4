"""One denoising loop for both sides: SD1.5 conditioned by CLIP, and by ELLA's connector.

Fairness holds by construction: both sides start from the same initial latents (one seeded
generator), use schedulers built from the same config with the same timesteps, the same guidance
scale and size, and are denoised by the same UNet call at every step. Stochastic schedulers
draw their per-step noise from a copy of the same generator on each side, so both sides also
receive the same injected noise.

UNet batch layout at each step, per side in the order (clip, ella): [uncond x N, cond x N]
with classifier-free guidance, [cond x N] without it. Conditionings of different lengths
(CLIP 77, ELLA 64, ella+clip 141) are zero-padded to the longest and masked.

The loop has a diffusers pipeline's extension points: `cross_attention_kwargs` reach every
attention processor of the UNet, and `callback_on_step_end` sees the tensors it names after each
step. Tracing (core/tracing.py) and progress reporting plug in through them; the loop itself
knows neither.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ella_demo.core.adapters import resolve_lora_weights
from ella_demo.core.conditioning import EncodedPrompts, encode_prompts, pad_and_stack, side_conditions
from ella_demo.core.models import LoadedModels
from ella_demo.core.results import GenerationResult, StepCallback, StepEnd
from ella_demo.core.schedulers import make_scheduler
from ella_demo.core.seeding import Generators, check_generator, copy_generators, make_generators
from ella_demo.core.settings import GenerationSettings, SettingsError, validate
from ella_demo.core.text_encoding import FLEXIBLE
from ella_demo.core.timing import PhaseTimer
from ella_demo.core.tracing import Tracer

ProgressCallback = Callable[[int, int], None]
OUTPUT_TYPES = ("pil", "latent")
# What a step callback may ask for (diffusers' `callback_on_step_end_tensor_inputs`).
STEP_TENSORS = ("latents", "model_inputs", "noise_predictions", "connector_attention")


def generate(
    models: LoadedModels,
    prompt: str,
    negative_prompt: str = "",
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 10.0,
    height: int | None = None,
    width: int | None = None,
    scheduler: str = "dpm++",
    num_images: int = 1,
    mode: str = "ella",
    t5_length: int | str = FLEXIBLE,
    trace: bool = False,
    sides: str = "both",
    seeding: str = "cpu",
    generator: Generators | None = None,
    latents: torch.Tensor | None = None,
    output_type: str = "pil",
    progress: ProgressCallback | None = None,
    prompt_after: str | None = None,
    switch_at_step: int = 0,
    connector_timestep: int | None = None,
    loras: Mapping[str, float] | None = None,
) -> GenerationResult:
    """Generate with CLIP and with ELLA side by side (or one side: sides="clip" / "ella").

    Arguments use diffusers' names; see `settings.GenerationSettings` for ranges. A height or width
    of None is the model's native size (`models.native_size`, as in diffusers' pipelines); the
    result's settings hold the size made. `seeding` picks how `seed` becomes noise
    (settings.SEEDINGS); a `generator` (one torch.Generator, or a list with one per image, as in
    diffusers) replaces the seed altogether, and `latents` (N, 4, height/8, width/8 for SD1.5's
    VAE) replace the initial noise. output_type="latent" skips VAE decoding.
    `trace=True` records the run (core/tracing.py) into `result.trace`. `progress(done, total)` is
    called after every step; it may raise (e.g. `errors.GenerationCancelledError`) to stop the run.
    Two lesson modes (ella_demo/learn): a prompt schedule, `prompt` for the first `switch_at_step` steps and
    `prompt_after` for the rest, on both sides (0: `prompt_after` alone; num_inference_steps: `prompt`
    alone); and `connector_timestep`, fed to the connector at every step instead of the step's timestep.
    `loras` maps LoRAs loaded at start-up (`models.loras`) to this run's weight (0: off); those it does not name
    keep their start-up weight. The LoRAs change the shared UNet (both sides) and CLIP, for this run only.
    Raises `settings.SettingsError` for a bad argument before any model work starts.
    """
    settings = GenerationSettings(
        prompt, negative_prompt, seed, num_inference_steps, guidance_scale, height, width, scheduler,
        num_images, mode, t5_length, sides, trace, seeding, prompt_after, switch_at_step, connector_timestep,
        resolve_lora_weights(models.loras, loras),
    )  # fmt: skip
    settings = with_native_size(models, settings)
    validate(settings, models.preset)
    with models.adapters.active(settings.loras):
        return _generate(models, settings, generator, latents, output_type, progress)


def with_native_size(models: LoadedModels, settings: GenerationSettings) -> GenerationSettings:
    """`settings` with a height or width of None replaced by the model's native size."""
    native = models.native_size
    return replace(
        settings,
        height=native if settings.height is None else settings.height,
        width=native if settings.width is None else settings.width,
    )


def _generate(
    models: LoadedModels,
    settings: GenerationSettings,
    generator: Generators | None,
    latents: torch.Tensor | None,
    output_type: str,
    progress: ProgressCallback | None,
) -> GenerationResult:
    """`run`, with the tracer (when settings.trace) and the progress callback plugged in."""
    tracer = Tracer(models, settings) if settings.trace else None
    callbacks = [tracer.on_step_end] if tracer else []
    if progress is not None:
        callbacks.append(lambda state: progress(state.step + 1, state.num_steps))
    result = run(
        models,
        settings,
        generator=generator,
        latents=latents,
        output_type=output_type,
        cross_attention_kwargs=tracer.cross_attention_kwargs if tracer else None,
        callback_on_step_end=_in_turn(callbacks) if callbacks else None,
        callback_on_step_end_tensor_inputs=Tracer.TENSOR_INPUTS if tracer else (),
    )
    if tracer is not None:
        result.trace = tracer.finish(result)
    return result


def _in_turn(callbacks: list[StepCallback]) -> StepCallback:
    def call_each(state: StepEnd) -> None:
        for callback in callbacks:
            callback(state)

    return call_each


@dataclass
class _Sampling:
    """One run's moving parts: each side's scheduler, latents and step options."""

    settings: GenerationSettings
    prompts: EncodedPrompts
    prompts_after: EncodedPrompts  # what steps from settings.switch_at_step on read (`prompts` without a switch)
    schedulers: dict
    latents: dict[str, torch.Tensor]
    step_options: dict[str, dict]
    timer: PhaseTimer

    @property
    def sides(self) -> tuple[str, ...]:
        return self.settings.side_names

    def prompts_at(self, step: int) -> EncodedPrompts:
        """The encoded prompts step `step` (0-based) is conditioned on."""
        return self.prompts if step < self.settings.switch_at_step else self.prompts_after


def run(
    models: LoadedModels,
    settings: GenerationSettings,
    *,
    generator: Generators | None = None,
    latents: torch.Tensor | None = None,
    output_type: str = "pil",
    cross_attention_kwargs: dict | None = None,
    callback_on_step_end: StepCallback | None = None,
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
) -> GenerationResult:
    """Run validated settings; the numbered steps are those of a diffusers pipeline's `__call__`.

    `cross_attention_kwargs` go to every UNet attention processor; `callback_on_step_end` gets a
    `StepEnd` holding the `callback_on_step_end_tensor_inputs` (names from STEP_TENSORS). This
    loop records nothing by itself: `generate(trace=True)` plugs a tracer into these two points.
    A size of None is the model's native size, as in `generate`.
    """
    settings = with_native_size(models, settings)
    # 0. Check the inputs that settings do not cover, before any model work.
    _check_run_inputs(models, settings, generator, latents, output_type, callback_on_step_end_tensor_inputs)
    started = time.perf_counter()
    timer = PhaseTimer(models.device)

    # 1. Encode the prompts, and any prompt switched to (cached; the empty negative prompt is computed once per model).
    prompts, prompts_after = _encode_schedule(models, settings, timer)

    # 2. Prepare the timesteps: a scheduler per side, each built from the shared config.
    schedulers = _prepare_schedulers(models, settings)
    timesteps = next(iter(schedulers.values())).timesteps

    # 3. Prepare the initial latents, drawn once and shared.
    generators, seeding = make_generators(settings, generator, models.device)
    initial = _initial_latents(models, settings, generators, latents)

    # 4. Prepare the extra step arguments: each side steps with copies of the generators.
    sampling = _Sampling(
        settings,
        prompts,
        prompts_after,
        schedulers,
        latents={side: initial * schedulers[side].init_noise_sigma for side in schedulers},
        step_options={side: _step_options(schedulers[side], copy_generators(generators)) for side in schedulers},
        timer=timer,
    )

    # 5. Denoising loop.
    wanted = set(callback_on_step_end_tensor_inputs) if callback_on_step_end else set()
    with torch.no_grad():
        for step, timestep in enumerate(timesteps):
            tensors = _denoise_step(models, sampling, step, timestep, cross_attention_kwargs, wanted)
            if callback_on_step_end is not None:
                callback_on_step_end(StepEnd(step, len(timesteps), timestep, tensors))

    # 6. Decode both sides in one VAE call (unless the latents are the output).
    per_side = _decode(models, sampling) if output_type == "pil" else {}

    # 7. Package.
    return _package(models, sampling, per_side, timesteps, seeding, started)


def _encode_schedule(
    models: LoadedModels, settings: GenerationSettings, timer: PhaseTimer
) -> tuple[EncodedPrompts, EncodedPrompts]:
    """The prompt's encodings and those of the prompt switched to (the same object when there is no switch); each
    holds (1, L, d) features per encoder the run needs."""
    prompts = encode_prompts(models, settings, timer)
    if settings.prompt_after is None:
        return prompts, prompts
    return prompts, encode_prompts(models, settings, timer, settings.prompt_after)


def _package(
    models: LoadedModels,
    sampling: _Sampling,
    pixels: dict[str, np.ndarray],
    timesteps: torch.Tensor,
    seeding: str,
    started: float,
) -> GenerationResult:
    """The result: images and pixels per side (none for latent output), final latents, timings."""
    timings = sampling.timer.totals()
    timings["total"] = time.perf_counter() - started
    return GenerationResult(
        settings=sampling.settings,
        clip_images=_to_pil(pixels.get("clip")),
        ella_images=_to_pil(pixels.get("ella")),
        clip_pixels=pixels.get("clip"),
        ella_pixels=pixels.get("ella"),
        latents={side: value.float().cpu() for side, value in sampling.latents.items()},
        timesteps=timesteps.cpu().numpy(),
        timings=timings,
        provenance=models.provenance(),
        seeding=seeding,
        prompt_tokens=sampling.prompts.prompt_tokens(),
        warnings=_warnings(sampling),
    )


def _warnings(sampling: _Sampling) -> list[str]:
    """The encoders' truncation notes, for the prompt and, after a switch, for the prompt switched to."""
    notes = sampling.prompts.truncation_warnings()
    if sampling.prompts_after is not sampling.prompts:
        notes += [f"After the switch: {note}" for note in sampling.prompts_after.truncation_warnings()]
    return notes


def _check_run_inputs(
    models: LoadedModels,
    settings: GenerationSettings,
    generator,
    latents,
    output_type: str,
    tensor_inputs: Sequence[str],
) -> None:
    check_generator(generator, settings.num_images)
    shape = _latent_shape(models, settings)
    if latents is not None and (not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape):
        found = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise SettingsError("latents", f"must be a tensor of shape {shape} for these settings, got {found}.")
    if output_type not in OUTPUT_TYPES:
        raise SettingsError("output_type", f"must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}.")
    unknown = [name for name in tensor_inputs if name not in STEP_TENSORS]
    if unknown:
        raise SettingsError(
            "callback_on_step_end_tensor_inputs", f"has unknown names {unknown}; allowed: {', '.join(STEP_TENSORS)}."
        )


def _initial_latents(
    models: LoadedModels, settings: GenerationSettings, generators: Generators, latents: torch.Tensor | None
) -> torch.Tensor:
    """(N, 4, h, w) unscaled initial noise: drawn from the generators, or the caller's `latents`."""
    if latents is None:
        return randn_tensor(
            _latent_shape(models, settings), generator=generators, device=models.device, dtype=models.dtype
        )
    return latents.to(models.device, models.dtype)


def _latent_shape(models: LoadedModels, settings: GenerationSettings) -> tuple[int, int, int, int]:
    """(N, 4, height / 8, width / 8) for SD1.5; the divisor is the VAE's scale factor."""
    scale, channels = models.pipe.vae_scale_factor, models.pipe.unet.config.in_channels
    return (settings.num_images, channels, settings.height // scale, settings.width // scale)


def _prepare_schedulers(models: LoadedModels, settings: GenerationSettings) -> dict:
    """A scheduler per side, each built from the shared config, with identical timesteps."""
    schedulers = {
        side: make_scheduler(settings.scheduler, models.pipe.scheduler.config) for side in settings.side_names
    }
    for scheduler in schedulers.values():
        scheduler.set_timesteps(settings.num_inference_steps, device=models.device)
    return schedulers


def _denoise_step(
    models: LoadedModels,
    sampling: _Sampling,
    step: int,
    timestep: torch.Tensor,
    attention_kwargs: dict | None,
    wanted: set[str],
) -> dict:
    """One UNet call for every side, guidance, and each side's scheduler step; returns the `wanted` tensors."""
    settings, sides, timer = sampling.settings, sampling.sides, sampling.timer
    count, guided = settings.num_images, settings.uses_guidance
    conditions, connector_attention = {}, None
    prompts = sampling.prompts_at(step)
    for side in sides:
        conditions[side], attention = side_conditions(
            models, settings, prompts, side, timestep, timer, "connector_attention" in wanted
        )
        connector_attention = attention if attention is not None else connector_attention
    scaled = {side: sampling.schedulers[side].scale_model_input(sampling.latents[side], timestep) for side in sides}
    batch_latents = torch.cat([scaled[side].repeat(2 if guided else 1, 1, 1, 1) for side in sides])
    hidden, mask = pad_and_stack([condition for side in sides for condition in conditions[side]], count)
    with timer.phase("unet"):
        noise = models.pipe.unet(
            batch_latents,
            timestep,
            encoder_hidden_states=hidden,
            encoder_attention_mask=mask,
            cross_attention_kwargs=attention_kwargs,
        ).sample
    predictions = {}
    for side, side_noise in zip(sides, noise.split(count * (2 if guided else 1)), strict=True):
        if guided:
            uncond, cond = side_noise.chunk(2)
            side_noise = uncond + settings.guidance_scale * (cond - uncond)
        predictions[side] = side_noise
        sampling.latents[side] = sampling.schedulers[side].step(
            side_noise, timestep, sampling.latents[side], return_dict=False, **sampling.step_options[side]
        )[0]
    if not wanted:  # the usual untraced run: nothing to hand over
        return {}
    available = {
        "latents": dict(sampling.latents),
        "model_inputs": scaled,
        "noise_predictions": predictions,
        "connector_attention": connector_attention,
    }
    return {name: available[name] for name in wanted if available[name] is not None}


def _step_options(scheduler, generator: Generators) -> dict:
    """The generator, and eta=0 (deterministic DDIM), for the schedulers whose step takes them."""
    accepted = inspect.signature(scheduler.step).parameters
    options = {}
    if "generator" in accepted:
        options["generator"] = generator
    if "eta" in accepted:
        options["eta"] = 0.0
    return options


def _decode(models: LoadedModels, sampling: _Sampling) -> dict[str, np.ndarray]:
    """side -> (N, H, W, 3) float32 pixels in [0, 1], from one VAE call for every side."""
    with torch.no_grad(), sampling.timer.phase("vae"):
        vae = models.pipe.vae
        latents = torch.cat([sampling.latents[side] for side in sampling.sides])
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
        pixels = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    return dict(zip(sampling.sides, np.split(pixels, len(sampling.sides)), strict=True))


def _to_pil(pixels: np.ndarray | None) -> list[Image.Image]:
    if pixels is None:
        return []
    return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in pixels]
