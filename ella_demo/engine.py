"""One denoising loop for both sides: SD1.5 conditioned by CLIP, and by ELLA's connector.

Fairness holds by construction: both sides start from the same initial latents (one seeded
generator), use schedulers built from the same config with the same timesteps, the same guidance
scale and size, and are denoised by the same UNet call at every step. Stochastic schedulers
draw their per-step noise from a copy of the same generator on each side, so both sides also
receive the same injected noise.

UNet batch layout at each step, per side in the order (clip, ella): [uncond x N, cond x N]
with classifier-free guidance, [cond x N] without it. Conditionings of different lengths
(CLIP 77, ELLA 64, ella+clip 141) are zero-padded to the longest and masked.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .loading import LoadedModels
from .schedulers import make_scheduler
from .settings import GenerationSettings, validate
from .text_encoders import FLEXIBLE, TextEncoding
from .tracing import (
    CrossAttentionRecorder,
    SideTrace,
    StepBuffers,
    Trace,
    latents_to_preview,
    predicted_clean_latents,
    recording_cross_attention,
)

ProgressCallback = Callable[[int, int], None]


@dataclass
class GenerationResult:
    """The output of one generation.

    clip_images / ella_images: PIL images (empty for a side that was not run).
    clip_pixels / ella_pixels: the same as float32 arrays (N, H, W, 3) in [0, 1], or None.
    timesteps: (S,) the scheduler's timesteps. timings: seconds per phase (t5, clip, tsc, unet,
    vae, total). warnings: user-facing notes such as prompt truncation.
    """

    settings: GenerationSettings
    clip_images: list[Image.Image]
    ella_images: list[Image.Image]
    clip_pixels: np.ndarray | None
    ella_pixels: np.ndarray | None
    timesteps: np.ndarray
    timings: dict[str, float]
    trace: Trace | None
    random_weights: bool
    warnings: list[str] = field(default_factory=list)


def generate(
    models: LoadedModels,
    prompt: str,
    negative_prompt: str = "",
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 10.0,
    height: int = 512,
    width: int = 512,
    scheduler: str = "dpm++",
    num_images: int = 1,
    mode: str = "ella",
    t5_length: int | str = FLEXIBLE,
    trace: bool = False,
    sides: str = "both",
    progress: ProgressCallback | None = None,
) -> GenerationResult:
    """Generate with CLIP and with ELLA side by side (or one side: sides="clip" / "ella").

    Arguments use diffusers' names; see `settings.GenerationSettings` for ranges. Raises
    `settings.SettingsError` for a bad argument before any model work starts.
    """
    settings = GenerationSettings(
        prompt=prompt,
        negative_prompt=negative_prompt,
        seed=seed,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        scheduler=scheduler,
        num_images=num_images,
        mode=mode,
        t5_length=t5_length,
        sides=sides,
        trace=trace,
    )
    validate(settings, models.preset)
    return run(models, settings, progress)


class _Timer:
    """Wall-clock seconds per phase; synchronises CUDA so asynchronous work lands in its phase."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - started


@dataclass
class _Prompts:
    clip_cond: TextEncoding | None
    clip_uncond: TextEncoding | None
    t5_cond: TextEncoding | None
    t5_uncond: TextEncoding | None


def run(
    models: LoadedModels, settings: GenerationSettings, progress: ProgressCallback | None = None
) -> GenerationResult:
    """Run a validated generation. The numbered steps follow diffusers' pipelines."""
    started = time.perf_counter()
    timer = _Timer(models.device)
    sides = [side for side, runs in (("clip", settings.runs_clip), ("ella", settings.runs_ella)) if runs]
    count = settings.num_images
    guided = settings.uses_guidance

    # 1. Encode the prompts (cached; the empty negative prompt is computed once per model).
    prompts = _encode_prompts(models, settings, timer)

    # 2. A scheduler per side, each built from the shared config; identical timesteps.
    schedulers = {side: make_scheduler(settings.scheduler, models.pipe.scheduler.config) for side in sides}
    for scheduler in schedulers.values():
        scheduler.set_timesteps(settings.num_inference_steps, device=models.device)
    timesteps = next(iter(schedulers.values())).timesteps

    # 3. The initial latents, drawn once and shared; one noise generator per side, in the same state.
    generator = torch.Generator("cpu").manual_seed(settings.seed)
    unet = models.pipe.unet
    scale = 2 ** (len(models.pipe.vae.config.block_out_channels) - 1)
    latent_size = (settings.height // scale, settings.width // scale)
    shape = (count, unet.config.in_channels, *latent_size)
    initial = torch.randn(shape, generator=generator, dtype=models.dtype).to(models.device)
    latents = {side: initial * schedulers[side].init_noise_sigma for side in sides}
    step_options = {side: _step_options(schedulers[side], _copy_generator(generator)) for side in sides}

    # 4. Tracing set-up (nothing is allocated or installed when tracing is off).
    buffers = StepBuffers(len(timesteps), models.device) if settings.trace else None
    recorder = None
    if settings.trace:
        rows, offset = {}, 0
        for side in sides:
            rows[side] = (offset + (count if guided else 0), _condition_length(models, settings, prompts, side))
            offset += count * (2 if guided else 1)
        recorder = CrossAttentionRecorder(rows, latent_size, len(timesteps), models.device)

    # 5. Denoise.
    with torch.no_grad(), _maybe_recording(unet, recorder):
        for step, timestep in enumerate(timesteps):
            conditions = {
                side: _conditions(models, settings, prompts, side, timestep, step, buffers, timer) for side in sides
            }
            scaled = {side: schedulers[side].scale_model_input(latents[side], timestep) for side in sides}
            batch_latents = torch.cat([scaled[side].repeat(2 if guided else 1, 1, 1, 1) for side in sides])
            hidden, mask = _pad_and_stack([c for side in sides for c in conditions[side]], count)
            if recorder is not None:
                recorder.step = step
            with timer.phase("unet"):
                noise = unet(batch_latents, timestep, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
            for side, side_noise in zip(sides, noise.split(count * (2 if guided else 1)), strict=True):
                if guided:
                    uncond, cond = side_noise.chunk(2)
                    side_noise = uncond + settings.guidance_scale * (cond - uncond)
                if buffers is not None:
                    alpha_bar = float(schedulers[side].alphas_cumprod[round(float(timestep))])
                    clean = predicted_clean_latents(scaled[side], side_noise, alpha_bar)
                    buffers.store_preview(side, step, latents_to_preview(clean))
                latents[side] = schedulers[side].step(
                    side_noise, timestep, latents[side], return_dict=False, **step_options[side]
                )[0]
            if progress is not None:
                progress(step + 1, len(timesteps))

    # 6. Decode both sides in one VAE call.
    with torch.no_grad(), timer.phase("vae"):
        vae = models.pipe.vae
        decoded = vae.decode(torch.cat([latents[side] for side in sides]) / vae.config.scaling_factor).sample
        pixels = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    per_side = dict(zip(sides, np.split(pixels, len(sides)), strict=True))

    # 7. Package.
    timer.totals["total"] = time.perf_counter() - started
    trace = None
    if settings.trace:
        trace = _assemble_trace(settings, prompts, timesteps, buffers, recorder, models, timer.totals)
    return GenerationResult(
        settings=settings,
        clip_images=_to_pil(per_side.get("clip")),
        ella_images=_to_pil(per_side.get("ella")),
        clip_pixels=per_side.get("clip"),
        ella_pixels=per_side.get("ella"),
        timesteps=timesteps.cpu().numpy(),
        timings=timer.totals,
        trace=trace,
        random_weights=models.random_weights,
        warnings=_truncation_warnings(prompts),
    )


def _encode_prompts(models: LoadedModels, settings: GenerationSettings, timer: _Timer) -> _Prompts:
    needs_clip = settings.runs_clip or (settings.runs_ella and settings.mode == "ella+clip")
    clip_cond = clip_uncond = t5_cond = t5_uncond = None
    if needs_clip:
        with timer.phase("clip"):
            clip_cond = models.clip_encoder.encode(settings.prompt)
            clip_uncond = models.clip_encoder.encode(settings.negative_prompt)
    if settings.runs_ella:
        with timer.phase("t5"):
            t5_cond = models.t5_encoder.encode(settings.prompt, settings.t5_length)
            t5_uncond = models.t5_encoder.encode(settings.negative_prompt, settings.t5_length)
    return _Prompts(clip_cond, clip_uncond, t5_cond, t5_uncond)


def _condition_length(models: LoadedModels, settings: GenerationSettings, prompts: _Prompts, side: str) -> int:
    if side == "clip":
        return prompts.clip_cond.features.shape[1]
    queries = models.ella.config.num_latents
    return queries + (prompts.clip_cond.features.shape[1] if settings.mode == "ella+clip" else 0)


def _conditions(
    models: LoadedModels,
    settings: GenerationSettings,
    prompts: _Prompts,
    side: str,
    timestep: torch.Tensor,
    step: int,
    buffers: StepBuffers | None,
    timer: _Timer,
) -> list[torch.Tensor]:
    """The side's conditionings for this step, each (1, L, D): [uncond, cond] or [cond]."""
    guided = settings.uses_guidance
    if side == "clip":
        pairs = [prompts.clip_uncond, prompts.clip_cond] if guided else [prompts.clip_cond]
        return [encoding.features for encoding in pairs]
    with timer.phase("tsc"):
        features = prompts.t5_cond.features.to(models.dtype)
        if buffers is not None:
            cond, attention = models.ella(features, timestep, return_attention=True)
            buffers.store_tsc(step, attention)
        else:
            cond = models.ella(features, timestep)
        tokens = [cond]
        if guided:
            tokens.insert(0, _unconditional_tokens(models, settings, prompts.t5_uncond, timestep))
    if settings.mode == "ella+clip":
        clip = [prompts.clip_uncond, prompts.clip_cond] if guided else [prompts.clip_cond]
        tokens = [torch.cat([encoding.features, ella], dim=1) for encoding, ella in zip(clip, tokens, strict=True)]
    return tokens


def _unconditional_tokens(
    models: LoadedModels, settings: GenerationSettings, encoding: TextEncoding, timestep: torch.Tensor
) -> torch.Tensor:
    """TSC output for the negative prompt: depends only on (negative prompt, length, timestep), so cached."""
    key = (settings.negative_prompt, settings.t5_length, float(timestep), str(models.device), models.dtype)
    return models.condition_cache.get_or_compute(key, lambda: models.ella(encoding.features.to(models.dtype), timestep))


def _pad_and_stack(conditions: list[torch.Tensor], count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each (1, L_i, D) repeated `count` times and zero-padded to the longest L: (B, L, D), mask (B, L).

    The mask is None when every conditioning has the same length (nothing to hide).
    """
    longest = max(condition.shape[1] for condition in conditions)
    if all(condition.shape[1] == longest for condition in conditions):
        return torch.cat([condition.expand(count, -1, -1) for condition in conditions]), None
    padded, masks = [], []
    for condition in conditions:
        length = condition.shape[1]
        padded.append(torch.nn.functional.pad(condition, (0, 0, 0, longest - length)).expand(count, -1, -1))
        mask = torch.zeros(count, longest, device=condition.device, dtype=condition.dtype)
        mask[:, :length] = 1
        masks.append(mask)
    return torch.cat(padded), torch.cat(masks)


def _copy_generator(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator(generator.device)
    copy.set_state(generator.get_state())
    return copy


def _step_options(scheduler, generator: torch.Generator) -> dict:
    """The generator, and eta=0 (deterministic DDIM), for the schedulers whose step takes them."""
    accepted = inspect.signature(scheduler.step).parameters
    options = {}
    if "generator" in accepted:
        options["generator"] = generator
    if "eta" in accepted:
        options["eta"] = 0.0
    return options


def _maybe_recording(unet, recorder: CrossAttentionRecorder | None):
    return recording_cross_attention(unet, recorder) if recorder is not None else contextlib.nullcontext()


def _to_pil(pixels: np.ndarray | None) -> list[Image.Image]:
    if pixels is None:
        return []
    return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in pixels]


def _truncation_warnings(prompts: _Prompts) -> list[str]:
    notes = []
    for label, encoding in (("CLIP", prompts.clip_cond), ("T5", prompts.t5_cond)):
        if encoding is not None and encoding.truncation_message:
            notes.append(f"{label}: {encoding.truncation_message}")
    for label, encoding in (("CLIP", prompts.clip_uncond), ("T5", prompts.t5_uncond)):
        if encoding is not None and encoding.truncation_message:
            notes.append(f"{label} (negative prompt): {encoding.truncation_message}")
    return notes


def _assemble_trace(
    settings: GenerationSettings,
    prompts: _Prompts,
    timesteps: torch.Tensor,
    buffers: StepBuffers,
    recorder: CrossAttentionRecorder,
    models: LoadedModels,
    timings: dict[str, float],
) -> Trace:
    sides = {}
    for side, (maps, pooled) in recorder.results().items():
        if side == "clip":
            tokens = prompts.clip_cond.tokens
        else:
            queries = tuple(f"q{index}" for index in range(models.ella.config.num_latents))
            tokens = (prompts.clip_cond.tokens if settings.mode == "ella+clip" else ()) + queries
        sides[side] = SideTrace(
            cross_attention=maps, pooled=pooled, previews=buffers.previews_numpy(side), tokens=tokens
        )
    return Trace(
        timesteps=timesteps.cpu().numpy(),
        tsc_attention=buffers.tsc_numpy(),
        t5_tokens=prompts.t5_cond.tokens if prompts.t5_cond else (),
        t5_words=prompts.t5_cond.words if prompts.t5_cond else (),
        clip_tokens=prompts.clip_cond.tokens if prompts.clip_cond else (),
        clip_words=prompts.clip_cond.words if prompts.clip_cond else (),
        sides=sides,
        mode=settings.mode,
        settings=settings.to_dict(),
        timings=timings,
    )
