"""Capture during sampling: TSC attention, UNet cross-attention maps, x0 previews, all as plain arrays.

Capture is opt-in and plugs into the denoising loop through its two extension points, as in a
diffusers pipeline: the UNet's attention processors receive the run's recorder through
`cross_attention_kwargs`, and a per-step callback (`Tracer.on_step_end`) stores the connector's
attention and the x0 previews. Nothing is set on shared objects during a run, so a traced run
never disturbs another request running at the same time. Buffers are allocated once per run on the
model's device, written in place at every step, and copied to the CPU once at the end.

Shapes: S steps, N images, Q connector queries, L tokens, h x w latent size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional

from ella_demo.core.schedulers import make_scheduler
from ella_demo.core.settings import GenerationSettings
from ella_demo.core.text_encoding import PromptTokens, Word

if TYPE_CHECKING:
    from ella_demo.core.engine import GenerationResult, StepEnd
    from ella_demo.core.models import LoadedModels

# SD1.5 latent channels -> approximate RGB, the linear map community tools use for cheap latent
# previews (ComfyUI's `latent_rgb_factors` for SD1.x). Applied to the predicted clean latents.
LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)

# Layers at the full latent resolution are stored average-pooled 2x2 (a 64x64 map at 512 px per
# step would dominate the trace's memory).
POOLED_FACTOR = 1


@dataclass
class SideTrace:
    """What was recorded for one side (CLIP or ELLA).

    cross_attention: native resolution name ("32x32") -> (S, h', w', L) float16, the head- and
        layer-mean cross-attention of the first image's conditional branch; layers at the full
        latent resolution are pooled 2x2 (see `pooled`).
    previews: (S, N, h, w, 3) uint8, the x0 estimate after each step, linearly decoded.
    tokens/words: the key axis L of the cross-attention (for ELLA: the 64 queries, or CLIP's 77
        tokens followed by the queries in ella+clip mode).
    """

    cross_attention: dict[str, np.ndarray]
    pooled: tuple[str, ...]
    previews: np.ndarray
    tokens: tuple[str, ...]


@dataclass
class Trace:
    """Everything recorded in one traced run; plain CPU arrays with documented axes.

    timesteps: (S,) the scheduler's timesteps, high noise first.
    tsc_attention: (S, layers, heads, Q, Q + L_t5) float16, the connector's attention for the
        conditional prompt at each step; key axis = [Q latents, then the L_t5 T5 tokens].
    t5_tokens/t5_words and clip_tokens/clip_words: the prompt as each encoder split it.
    prompt: the prompt as typed. t5_offsets/clip_offsets: each token's (start, end) characters in
        it, (0, 0) for start, end and padding tokens; they match both encoders' tokens word by word.
    timings: wall-clock seconds per phase of the run (t5, clip, tsc, unet, vae, total).
    """

    timesteps: np.ndarray
    tsc_attention: np.ndarray | None
    t5_tokens: tuple[str, ...]
    t5_words: tuple[Word, ...]
    clip_tokens: tuple[str, ...]
    clip_words: tuple[Word, ...]
    sides: dict[str, SideTrace] = field(default_factory=dict)
    mode: str = "ella"
    settings: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    prompt: str = ""
    t5_offsets: tuple[tuple[int, int], ...] = ()
    clip_offsets: tuple[tuple[int, int], ...] = ()


# ---------------------------------------------------------------------------------------------
# UNet cross-attention


class CrossAttentionRecorder:
    """Accumulates head-mean cross-attention maps of chosen batch rows, per step and resolution.

    rows: side name -> (row index in the UNet batch, number of real key tokens). Sums are kept in
    `dtype` (the model's, where its precision allows: see accumulator_dtype); at most
    16 maps with values in [0, 1] are added per step and resolution.
    """

    def __init__(
        self,
        rows: dict[str, tuple[int, int]],
        latent_size: tuple[int, int],
        steps: int,
        device,
        dtype: torch.dtype = torch.float32,
    ):
        self.rows = rows
        self.latent_size = latent_size
        self.steps = steps
        self.device = device
        self.dtype = dtype
        self.step = 0
        self._sums: dict[tuple[str, int], torch.Tensor] = {}
        self._counts: dict[int, torch.Tensor] = {}
        self._pixels: dict[int, int] = {}

    def record(self, attn, hidden_states: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None) -> None:
        """hidden_states (B, h*w, C) queries, context (B, L, D) keys, bias (B, 1, L) or None."""
        row_index = torch.tensor([row for row, _ in self.rows.values()], device=hidden_states.device)
        queries = attn.to_q(hidden_states.index_select(0, row_index))
        keys_in = context.index_select(0, row_index)
        if attn.norm_cross:
            keys_in = attn.norm_encoder_hidden_states(keys_in)
        keys = attn.to_k(keys_in)
        batch, pixels, _ = queries.shape
        heads = attn.heads
        queries = queries.view(batch, pixels, heads, -1).transpose(1, 2).float()
        keys = keys.view(batch, keys.shape[1], heads, -1).transpose(1, 2).float()
        scores = queries @ keys.transpose(-1, -2) * attn.scale
        if bias is not None:
            scores = scores + bias.index_select(0, row_index).float().view(batch, 1, 1, -1)
        maps = scores.softmax(dim=-1).mean(dim=1)  # (sides, h*w, L)
        factor, height, width = self._grid(pixels)
        maps = maps.view(batch, height, width, -1)
        if factor == POOLED_FACTOR:
            maps = functional.avg_pool2d(maps.permute(0, 3, 1, 2), 2, ceil_mode=True).permute(0, 2, 3, 1)
        for position, (side, (_, length)) in enumerate(self.rows.items()):
            key = (side, factor)
            if key not in self._sums:
                self._sums[key] = torch.zeros(
                    self.steps, *maps.shape[1:3], length, device=self.device, dtype=self.dtype
                )
            self._sums[key][self.step] += maps[position, ..., :length].to(self.dtype)
        self._pixels[factor] = pixels
        counts = self._counts.setdefault(factor, torch.zeros(self.steps, device=self.device))
        counts[self.step] += 1

    def _grid(self, pixels: int) -> tuple[int, int, int]:
        """(downsampling factor, height, width) of a layer with `pixels` query positions."""
        factor = 1
        while factor <= max(self.latent_size):
            height, width = -(-self.latent_size[0] // factor), -(-self.latent_size[1] // factor)
            if height * width == pixels:
                return factor, height, width
            factor *= 2
        raise ValueError(f"no UNet level of a {self.latent_size} latent has {pixels} positions")

    def results(self) -> dict[str, tuple[dict[str, np.ndarray], tuple[str, ...]]]:
        """side -> (resolution name -> (S, h', w', L) float16 layer means, pooled names)."""
        out: dict[str, tuple[dict[str, np.ndarray], tuple[str, ...]]] = {}
        for side in self.rows:
            maps, pooled = {}, []
            for (map_side, factor), total in sorted(self._sums.items(), key=lambda item: -item[0][1]):
                if map_side != side:
                    continue
                _, height, width = self._grid(self._pixels[factor])
                name = f"{height}x{width}"
                mean = total.float() / self._counts[factor].clamp(min=1).view(-1, 1, 1, 1)
                maps[name] = mean.half().cpu().numpy()
                if factor == POOLED_FACTOR:
                    pooled.append(name)
            out[side] = (maps, tuple(pooled))
        return out


class RecordingAttnProcessor:
    """Wraps an attention layer's processor; records into the `recorder` a call passes, if any.

    The recorder arrives per call through the UNet's `cross_attention_kwargs`, so concurrent runs
    on one shared UNet each record only their own batch, and an untraced call passes straight through.
    """

    def __init__(self, original):
        self.original = original

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        *args,
        recorder: CrossAttentionRecorder | None = None,
        **kwargs,
    ):
        if recorder is not None and encoder_hidden_states is not None:
            recorder.record(attn, hidden_states, encoder_hidden_states, attention_mask)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)


def install_recording_processors(unet) -> None:
    """Wrap every attention processor of `unet` once, so a traced call can pass its recorder.

    Done when the models are assembled, before any request: a run never changes the shared UNet.
    Every layer is wrapped (self-attention too) so that each accepts the `recorder` argument.
    """
    processors = unet.attn_processors
    if all(isinstance(processor, RecordingAttnProcessor) for processor in processors.values()):
        return
    unet.set_attn_processor(
        {
            name: processor if isinstance(processor, RecordingAttnProcessor) else RecordingAttnProcessor(processor)
            for name, processor in processors.items()
        }
    )


# ---------------------------------------------------------------------------------------------
# Previews and TSC attention


def predicted_clean_latents(scaled_latents: torch.Tensor, noise: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a), from the scheduler-scaled model input x_t (N, 4, h, w)."""
    return (scaled_latents - (1 - alpha_bar) ** 0.5 * noise) / alpha_bar**0.5


def latents_to_preview(latents: torch.Tensor) -> torch.Tensor:
    """(N, 4, h, w) latents -> (N, h, w, 3) uint8 RGB through the linear approximation."""
    factors = LATENT_RGB_FACTORS.to(latents.device, torch.float32)
    rgb = torch.einsum("nchw,cr->nhwr", latents.float(), factors)
    return ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8)


class StepBuffers:
    """Per-step buffers on the device: TSC attention and previews, copied to the CPU once."""

    def __init__(self, steps: int, device):
        self.steps = steps
        self.device = device
        self.tsc_attention: torch.Tensor | None = None
        self.previews: dict[str, torch.Tensor] = {}

    def store_tsc(self, step: int, attention: torch.Tensor) -> None:
        """attention (1, layers, heads, Q, Q + L) for the conditional prompt."""
        if self.tsc_attention is None:
            self.tsc_attention = torch.empty(self.steps, *attention.shape[1:], dtype=torch.float16, device=self.device)
        self.tsc_attention[step] = attention[0]

    def store_preview(self, side: str, step: int, preview: torch.Tensor) -> None:
        """preview (N, h, w, 3) uint8."""
        if side not in self.previews:
            self.previews[side] = torch.empty(self.steps, *preview.shape, dtype=torch.uint8, device=self.device)
        self.previews[side][step] = preview

    def tsc_numpy(self) -> np.ndarray | None:
        return None if self.tsc_attention is None else self.tsc_attention.cpu().numpy()

    def previews_numpy(self, side: str) -> np.ndarray:
        return self.previews[side].cpu().numpy()


# ---------------------------------------------------------------------------------------------
# The tracer: one traced run, plugged into the loop


def accumulator_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """Trace sums in the model's dtype where its precision allows: fp16 and fp32 do, bf16 (8 bits) does not."""
    return torch.float32 if model_dtype == torch.bfloat16 else model_dtype


class Tracer:
    """Records one run through the loop's extension points, then assembles its `Trace`.

    Give `engine.run` `cross_attention_kwargs=tracer.cross_attention_kwargs`,
    `callback_on_step_end=tracer.on_step_end` and `callback_on_step_end_tensor_inputs=TENSOR_INPUTS`;
    after the run, `tracer.finish(result)` is the trace. The UNet rows recorded are the first
    image's conditional branch of each side, in the engine's batch layout (engine module docstring).
    """

    TENSOR_INPUTS = ("model_inputs", "noise_predictions", "connector_attention")

    def __init__(self, models: LoadedModels, settings: GenerationSettings):
        self.settings = settings
        self.num_latents = models.ella.config.num_latents
        # The schedulers' own count (PNDM runs one step more) and noise levels, from the shared config.
        scheduler = make_scheduler(settings.scheduler, models.pipe.scheduler.config)
        scheduler.set_timesteps(settings.num_inference_steps)
        self.alphas_cumprod = scheduler.alphas_cumprod
        steps = len(scheduler.timesteps)
        scale = models.pipe.vae_scale_factor
        latent_size = (settings.height // scale, settings.width // scale)
        self.buffers = StepBuffers(steps, models.device)
        self.recorder = CrossAttentionRecorder(
            self._rows(models.pipe.tokenizer.model_max_length),
            latent_size,
            steps,
            models.device,
            accumulator_dtype(models.dtype),
        )

    def _rows(self, clip_length: int) -> dict[str, tuple[int, int]]:
        """side -> (its first conditional row in the UNet batch, its number of key tokens)."""
        settings = self.settings
        per_side = settings.num_images * (2 if settings.uses_guidance else 1)
        first_conditional = settings.num_images if settings.uses_guidance else 0
        lengths = {"clip": clip_length, "ella": self.num_latents + (clip_length if settings.mode == "ella+clip" else 0)}
        return {
            side: (index * per_side + first_conditional, lengths[side])
            for index, side in enumerate(settings.side_names)
        }

    @property
    def cross_attention_kwargs(self) -> dict:
        """What the UNet's recording processors read on every call of this run."""
        return {"recorder": self.recorder}

    def on_step_end(self, state: StepEnd) -> None:
        """Store the connector's attention and each side's x0 preview for the step just run."""
        tensors = state.tensors
        if "connector_attention" in tensors:
            self.buffers.store_tsc(state.step, tensors["connector_attention"])
        alpha_bar = float(self.alphas_cumprod[round(float(state.timestep))])
        for side, noise in tensors["noise_predictions"].items():
            clean = predicted_clean_latents(tensors["model_inputs"][side], noise, alpha_bar)
            self.buffers.store_preview(side, state.step, latents_to_preview(clean))
        self.recorder.step = state.step + 1

    def finish(self, result: GenerationResult) -> Trace:
        """The run's trace: plain CPU arrays, with the prompt as each encoder split it."""
        t5 = result.prompt_tokens.get("t5", PromptTokens())
        clip = result.prompt_tokens.get("clip", PromptTokens())
        queries = tuple(f"q{index}" for index in range(self.num_latents))
        keys = {"clip": clip.tokens, "ella": (clip.tokens if self.settings.mode == "ella+clip" else ()) + queries}
        sides = {
            side: SideTrace(
                cross_attention=maps, pooled=pooled, previews=self.buffers.previews_numpy(side), tokens=keys[side]
            )
            for side, (maps, pooled) in self.recorder.results().items()
        }
        return Trace(
            timesteps=result.timesteps,
            tsc_attention=self.buffers.tsc_numpy(),
            t5_tokens=t5.tokens,
            t5_words=t5.words,
            clip_tokens=clip.tokens,
            clip_words=clip.words,
            sides=sides,
            mode=self.settings.mode,
            settings=self.settings.to_dict(),
            timings=result.timings,
            prompt=self.settings.prompt,
            t5_offsets=t5.offsets,
            clip_offsets=clip.offsets,
        )
