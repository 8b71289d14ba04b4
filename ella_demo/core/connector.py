"""The Timestep-Aware Semantic Connector (TSC) of ELLA, in pure torch.

ELLA (arXiv 2403.05135) turns frozen T5 token features into the 64 conditioning tokens that a
frozen SD1.5 UNet reads through cross-attention. The tokens depend on the denoising timestep:
every normalisation in the resampler is modulated by a timestep embedding (AdaLayerNorm), and
the learnable queries are shifted by it too.

Parameter names follow the released checkpoint exactly (`ella-sd1.5-tsc-t5xl.safetensors`):
`time_embedding.linear_{1,2}`, `connector.latents`, `connector.time_aware_linear`,
`connector.proj_in`, `connector.perceiver_blocks.{i}.{attn,mlp.c_fc,mlp.c_proj,ln_1,ln_2,ln_ff}`.
Renaming any of them breaks loading of real weights; `tests/test_connector.py` checks them
against the released checkpoint's key and shape list in `tests/data/ella_sd15_keys.tsv`.

Shapes used in docstrings: B batch, L text tokens, Q queries (num_latents, 64 in the release),
D width (768), H heads (8), N blocks (6), C input_dim (2048 for FLAN-T5-XL).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EllaConfig:
    """Hyperparameters of the connector; the defaults are the released SD1.5 checkpoint."""

    time_channel: int = 320
    time_embed_dim: int = 768
    width: int = 768
    layers: int = 6
    heads: int = 8
    num_latents: int = 64
    input_dim: int = 2048

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def sinusoidal_timestep_features(timesteps: torch.Tensor, channels: int) -> torch.Tensor:
    """Parameter-free sinusoidal features of the timesteps, cosine half first.

    This is the transformer positional encoding with max period 10000 and no frequency shift,
    the same numbers as diffusers' `Timesteps(channels, flip_sin_to_cos=True,
    downscale_freq_shift=0)` that ELLA was trained with.

    Args:
        timesteps: (B,) int or float timesteps.
        channels: even number of output features.
    Returns:
        (B, channels) float32 features: [cos(t * f_k)..., sin(t * f_k)...].
    """
    half = channels // 2
    # Same operation order as the training code, so the float32 rounding matches bit for bit.
    exponents = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    frequencies = torch.exp(exponents / half)
    angles = timesteps.float()[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class TimestepMLP(nn.Module):
    """Linear, SiLU, Linear on the sinusoidal features (diffusers' `TimestepEmbedding` names)."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., in_channels) -> (..., embed_dim)."""
        return self.linear_2(self.act(self.linear_1(features)))


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine parameters, then a timestep-dependent scale and shift.

    `linear` maps SiLU(temb) to [shift, scale]; it starts at zero so that an untrained block is a
    plain LayerNorm.
    """

    def __init__(self, dim: int, time_embed_dim: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(time_embed_dim, 2 * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (B, S, D), temb (B, 1, E) -> (B, S, D)."""
        shift, scale = self.linear(self.silu(temb)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class SquaredReLU(nn.Module):
    """relu(x) ** 2, the MLP activation of the resampler blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(torch.relu(x))


class PerceiverBlock(nn.Module):
    """One pre-norm resampler block: queries attend to [themselves, text], then an MLP.

    The key/value sequence is the normalised latents (Q positions) FOLLOWED by the normalised
    text (L positions), so attention weights have their key axis ordered [latents, text].
    """

    def __init__(self, width: int, heads: int, time_embed_dim: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, 4 * width)),
                    ("sq_relu", SquaredReLU()),
                    ("c_proj", nn.Linear(4 * width, width)),
                ]
            )
        )
        self.ln_1 = AdaLayerNorm(width, time_embed_dim)
        self.ln_2 = AdaLayerNorm(width, time_embed_dim)
        self.ln_ff = AdaLayerNorm(width, time_embed_dim)

    def forward(
        self,
        text: torch.Tensor,
        latents: torch.Tensor,
        temb: torch.Tensor,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """text (B, L, D), latents (B, Q, D), temb (B, 1, E).

        Returns the updated latents (B, Q, D) and, if asked, the per-head softmax weights
        (B, H, Q, Q + L); otherwise None. The latents always come from PyTorch's fused attention
        kernel, so asking for the weights never changes the output.
        """
        normed = self.ln_1(latents, temb)
        keys_values = torch.cat([normed, self.ln_2(text, temb)], dim=1)
        attended, _ = self.attn(normed, keys_values, keys_values, need_weights=False)
        weights = self.attention_weights(normed, keys_values) if return_attention else None
        latents = latents + attended
        latents = latents + self.mlp(self.ln_ff(latents, temb))
        return latents, weights

    def attention_weights(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The softmax weights `self.attn` uses, computed beside it: (B, Q, D), (B, K, D) -> (B, H, Q, K)."""
        heads = self.attn.num_heads
        query_weight, key_weight, _ = self.attn.in_proj_weight.chunk(3)
        query_bias, key_bias, _ = self.attn.in_proj_bias.chunk(3)
        batch, width = queries.shape[0], queries.shape[-1]
        projected_queries = nn.functional.linear(queries, query_weight, query_bias)
        projected_keys = nn.functional.linear(keys, key_weight, key_bias)
        projected_queries = projected_queries.view(batch, -1, heads, width // heads).transpose(1, 2)
        projected_keys = projected_keys.view(batch, -1, heads, width // heads).transpose(1, 2)
        scores = projected_queries @ projected_keys.transpose(-1, -2) * (width // heads) ** -0.5
        return scores.softmax(dim=-1)


class PerceiverResampler(nn.Module):
    """Learnable queries, shifted by the timestep, read the projected text through N blocks."""

    def __init__(self, config: EllaConfig):
        super().__init__()
        self.latents = nn.Parameter(config.width**-0.5 * torch.randn(config.num_latents, config.width))
        self.time_aware_linear = nn.Linear(config.time_embed_dim, config.width)
        self.proj_in = nn.Linear(config.input_dim, config.width)
        self.perceiver_blocks = nn.ModuleList(
            PerceiverBlock(config.width, config.heads, config.time_embed_dim) for _ in range(config.layers)
        )

    def forward(
        self, text_features: torch.Tensor, temb: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """text_features (B, L, C), temb (B, 1, E) -> latents (B, Q, D) and per-block weights.

        The weights list holds N tensors of shape (B, H, Q, Q + L), or is empty when
        `return_attention` is False.
        """
        batch = text_features.shape[0]
        queries = self.latents.unsqueeze(0).expand(batch, -1, -1)
        latents = queries + self.time_aware_linear(nn.functional.silu(temb))
        text = self.proj_in(text_features)
        weights_per_block = []
        for block in self.perceiver_blocks:
            latents, weights = block(text, latents, temb, return_attention)
            if return_attention:
                weights_per_block.append(weights)
        return latents, weights_per_block


class ELLA(nn.Module):
    """ELLA's Timestep-Aware Semantic Connector.

    `ELLA()` is the released SD1.5 architecture: 93 tensors, 66,820,608 parameters. Pass an
    `EllaConfig` (or keyword overrides) for other sizes, such as the tiny preset.
    """

    def __init__(self, config: EllaConfig | None = None, **overrides: int):
        super().__init__()
        config = config or EllaConfig()
        if overrides:
            config = EllaConfig(**{**config.to_dict(), **overrides})
        if config.time_channel % 2:
            raise ValueError(f"time_channel must be even for sinusoidal features, got {config.time_channel}")
        if config.width % config.heads:
            raise ValueError(f"width {config.width} must be divisible by heads {config.heads}")
        self.config = config
        self.time_embedding = TimestepMLP(config.time_channel, config.time_embed_dim)
        self.connector = PerceiverResampler(config)

    def forward(
        self,
        text_features: torch.Tensor,
        timesteps: torch.Tensor | int | float,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Compute the conditioning tokens for the UNet.

        Args:
            text_features: (B, L, C) T5 encoder output.
            timesteps: a scalar (int, float or 0-d tensor) shared by the batch, or (B,).
            return_attention: also return the softmax weights of every block.
        Returns:
            hidden states (B, Q, D); with `return_attention`, a tuple of the hidden states and
            attention (B, N, H, Q, Q + L), key axis ordered [Q latents, then L text tokens].
        """
        batch = text_features.shape[0]
        timesteps = torch.as_tensor(timesteps, device=text_features.device)
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(batch)
        if timesteps.shape != (batch,):
            raise ValueError(
                f"timesteps must be a scalar or have shape ({batch},) to match the batch, "
                f"got shape {tuple(timesteps.shape)}"
            )
        features = sinusoidal_timestep_features(timesteps, self.config.time_channel)
        temb = self.time_embedding(features.to(text_features.dtype)).unsqueeze(1)
        hidden_states, weights = self.connector(text_features, temb, return_attention)
        if not return_attention:
            return hidden_states
        return hidden_states, torch.stack(weights, dim=1)
