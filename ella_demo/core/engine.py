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
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from ella_demo.core.models import LoadedModels, ModelProvenance
from ella_demo.core.schedulers import make_scheduler
from ella_demo.core.settings import GenerationSettings, SettingsError, validate
from ella_demo.core.text_encoding import FLEXIBLE, TextEncoding
from ella_demo.core.tracing import (
    CrossAttentionRecorder,
    SideTrace,
    StepBuffers,
    Trace,
    latents_to_preview,
    predicted_clean_latents,
    recording_cross_attention,
)

ProgressCallback = Callable[[int, int], None]
# One generator for every image, or one per image (diffusers' convention).
Generators = torch.Generator | list[torch.Generator]


@dataclass
class GenerationResult:
    """The output of one generation.

    clip_images / ella_images: PIL images (empty for a side that was not run).
    clip_pixels / ella_pixels: the same as float32 arrays (N, H, W, 3) in [0, 1], or None.
    timesteps: (S,) the timesteps actually run; S can differ from `num_inference_steps` (PNDM
    runs one more). timings: seconds per phase (t5, clip, tsc, unet, vae, total). provenance: which
    models made the run and where they ran. seeding: how
    the noise was drawn, in words. tokens: the prompt as each encoder split it (what meta.json
    records), so writers never re-encode. warnings: user-facing notes such as prompt truncation.
    """

    settings: GenerationSettings
    clip_images: list[Image.Image]
    ella_images: list[Image.Image]
    clip_pixels: np.ndarray | None
    ella_pixels: np.ndarray | None
    timesteps: np.ndarray
    timings: dict[str, float]
    trace: Trace | None
    provenance: ModelProvenance
    seeding: str = ""
    tokens: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def random_weights(self) -> bool:
        """True when the images come from a weightless preset: they are noise."""
        return self.provenance.random_weights


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
    seeding: str = "cpu",
    generator: Generators | None = None,
    progress: ProgressCallback | None = None,
) -> GenerationResult:
    """Generate with CLIP and with ELLA side by side (or one side: sides="clip" / "ella").

    Arguments use diffusers' names; see `settings.GenerationSettings` for ranges. `seeding` picks
    how `seed` becomes noise (settings.SEEDINGS); a `generator` (one torch.Generator, or a list
    with one per image, as in diffusers) replaces the seed altogether. `progress(done, total)` is
    called after every step; it may raise (e.g. `errors.GenerationCancelledError`) to stop the run.
    Raises `settings.SettingsError` for a bad argument before any model work starts.
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
        seeding=seeding,
    )
    validate(settings, models.preset)
    check_generator(generator, settings.num_images)
    return run(models, settings, progress, generator)


def check_generator(generator, num_images: int) -> None:
    """A torch.Generator, a list of exactly `num_images` of them, or None; else a SettingsError."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, list | tuple) and all(isinstance(item, torch.Generator) for item in generator):
        if len(generator) == num_images:
            return
        raise SettingsError("generator", f"must hold one generator per image: {num_images}, got {len(generator)}.")
    raise SettingsError("generator", f"must be a torch.Generator or a list of them, got {type(generator).__name__}.")


class _Timer:
    """Seconds per phase. On CUDA, events recorded around each phase are read once at the end.

    Synchronising at the end of every phase would stall the GPU queue at every step; CUDA events
    time the GPU work without waiting for it.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._seconds: dict[str, float] = {}
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((name, start, end))
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - started

    def totals(self) -> dict[str, float]:
        """Seconds per phase; on CUDA this waits once for the recorded work to finish."""
        if self._events:
            torch.cuda.synchronize(self.device)
            for name, start, end in self._events:
                self._seconds[name] = self._seconds.get(name, 0.0) + start.elapsed_time(end) / 1000
            self._events.clear()
        return dict(self._seconds)


@dataclass
class _Prompts:
    clip_cond: TextEncoding | None
    clip_uncond: TextEncoding | None
    t5_cond: TextEncoding | None
    t5_uncond: TextEncoding | None


def run(
    models: LoadedModels,
    settings: GenerationSettings,
    progress: ProgressCallback | None = None,
    generator: Generators | None = None,
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

    # 3. The initial latents, drawn once and shared; each side steps with copies of the generators.
    generators, seeding = _generators(settings, generator, models.device)
    unet = models.pipe.unet
    scale = 2 ** (len(models.pipe.vae.config.block_out_channels) - 1)
    latent_size = (settings.height // scale, settings.width // scale)
    shape = (count, unet.config.in_channels, *latent_size)
    initial = randn_tensor(shape, generator=generators, device=models.device, dtype=models.dtype)
    latents = {side: initial * schedulers[side].init_noise_sigma for side in sides}
    step_options = {side: _step_options(schedulers[side], _copy_generators(generators)) for side in sides}

    # 4. Tracing set-up (nothing is allocated or installed when tracing is off).
    buffers = StepBuffers(len(timesteps), models.device) if settings.trace else None
    recorder = None
    if settings.trace:
        rows, offset = {}, 0
        for side in sides:
            rows[side] = (offset + (count if guided else 0), _condition_length(models, settings, prompts, side))
            offset += count * (2 if guided else 1)
        recorder = CrossAttentionRecorder(
            rows, latent_size, len(timesteps), models.device, accumulator_dtype(models.dtype)
        )

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
    timings = timer.totals()
    timings["total"] = time.perf_counter() - started
    trace = None
    if settings.trace:
        trace = _assemble_trace(settings, prompts, timesteps, buffers, recorder, models, timings)
    return GenerationResult(
        settings=settings,
        clip_images=_to_pil(per_side.get("clip")),
        ella_images=_to_pil(per_side.get("ella")),
        clip_pixels=per_side.get("clip"),
        ella_pixels=per_side.get("ella"),
        timesteps=timesteps.cpu().numpy(),
        timings=timings,
        trace=trace,
        provenance=models.provenance(),
        seeding=seeding,
        tokens=_token_record(prompts),
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


def _generators(
    settings: GenerationSettings, generator: Generators | None, device: torch.device
) -> tuple[Generators, str]:
    """The generator(s) that draw this run's noise, and how they were made, in words."""
    if generator is not None:
        return (list(generator) if isinstance(generator, list | tuple) else generator), "the caller's generator(s)"
    if settings.seeding == "official":
        first, last = settings.seed, settings.seed + settings.num_images - 1
        seeds = f"seed {first}" if first == last else f"seeds {first} to {last}"
        made = [torch.Generator(device).manual_seed(settings.seed + index) for index in range(settings.num_images)]
        return made, f"official: one {device.type} generator per image, {seeds}"
    return torch.Generator("cpu").manual_seed(settings.seed), "cpu: one CPU generator for all images"


def _copy_generators(generators: Generators) -> Generators:
    """Generators in the same state, so each side draws the same per-step noise."""
    if isinstance(generators, list):
        return [_copy_generators(item) for item in generators]
    copy = torch.Generator(generators.device)
    copy.set_state(generators.get_state())
    return copy


def accumulator_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """Trace sums in the model's dtype where its precision allows: fp16 and fp32 do, bf16 (8 bits) does not."""
    return torch.float32 if model_dtype == torch.bfloat16 else model_dtype


def _step_options(scheduler, generator: Generators) -> dict:
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


def _token_record(prompts: _Prompts) -> dict:
    """The prompt as each encoder split it: tokens, and words as [text, token indices]."""
    record = {}
    for name, encoding in (("t5", prompts.t5_cond), ("clip", prompts.clip_cond)):
        if encoding is not None:
            record[name] = list(encoding.tokens)
            record[f"{name}_words"] = [[word.text, list(word.token_indices)] for word in encoding.words]
    return record


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
        prompt=settings.prompt,
        t5_offsets=prompts.t5_cond.offsets if prompts.t5_cond else (),
        clip_offsets=prompts.clip_cond.offsets if prompts.clip_cond else (),
    )
