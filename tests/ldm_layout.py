"""Write diffusers SD1.5-family weights in the original (LDM) single-file layout, for tests.

Community checkpoints ship as one file with keys like `model.diffusion_model.input_blocks.1.0...`.
To test our single-file loading without downloading one, we rename a tiny pipeline's tensors
into that layout; diffusers' own converter then has to turn them back. Written from the LDM
module structure (input_blocks / middle_block / output_blocks, encoder.down / decoder.up).
"""

from __future__ import annotations

import torch

RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET_NAMES = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_child(rest: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def _unet_key(key: str, layers: int, up_has_attention: list[bool]) -> str:
    parts = key.split(".")
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    if parts[0] == "down_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * (layers + 1)}.0.op.{rest.removeprefix('conv.')}"
        slot = 1 + block * (layers + 1) + index
        if kind == "resnets":
            return f"input_blocks.{slot}.0.{_rename_child(rest, RESNET_NAMES)}"
        return f"input_blocks.{slot}.1.{rest}"
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_rename_child(rest, RESNET_NAMES)}"
        return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "upsamplers":
            position = 2 if up_has_attention[block] else 1
            return f"output_blocks.{block * (layers + 1) + layers}.{position}.{rest}"
        slot = block * (layers + 1) + index
        if kind == "resnets":
            return f"output_blocks.{slot}.0.{_rename_child(rest, RESNET_NAMES)}"
        return f"output_blocks.{slot}.1.{rest}"
    raise KeyError(f"no LDM name for UNet key {key}")


def _vae_key(key: str, blocks: int) -> str:
    parts = key.split(".")
    side = parts[0]
    if parts[1] in ("down_blocks", "up_blocks"):
        block = int(parts[2])
        ldm_block = block if side == "encoder" else blocks - 1 - block
        group = "down" if side == "encoder" else "up"
        if parts[3] in ("downsamplers", "upsamplers"):
            sampler = "downsample" if side == "encoder" else "upsample"
            return f"{side}.{group}.{ldm_block}.{sampler}.{'.'.join(parts[5:])}"
        rest = _rename_child(".".join(parts[5:]), VAE_RESNET_NAMES)
        return f"{side}.{group}.{ldm_block}.block.{parts[4]}.{rest}"
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            rest = _rename_child(".".join(parts[4:]), VAE_RESNET_NAMES)
            return f"{side}.mid.block_{int(parts[3]) + 1}.{rest}"
        return f"{side}.mid.attn_1.{_rename_child('.'.join(parts[4:]), VAE_ATTENTION_NAMES)}"
    if parts[1] == "conv_norm_out":
        return f"{side}.norm_out.{'.'.join(parts[2:])}"
    return key


def to_ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """One LDM-layout state dict holding the pipeline's UNet, VAE and CLIP text model."""
    unet_config = pipe.unet.config
    up_has_attention = ["CrossAttn" in name for name in unet_config.up_block_types]
    layers = unet_config.layers_per_block
    state = {}
    for key, tensor in pipe.unet.state_dict().items():
        state["model.diffusion_model." + _unet_key(key, layers, up_has_attention)] = tensor
    blocks = len(pipe.vae.config.block_out_channels)
    for key, tensor in pipe.vae.state_dict().items():
        name = _vae_key(key, blocks)
        if ".mid.attn_1." in name and name.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM stores these projections as 1x1 convolutions
        state["first_stage_model." + name] = tensor
    for key, tensor in pipe.text_encoder.state_dict().items():
        # transformers 5 flattened CLIPTextModel; original checkpoints keep the `text_model.` level.
        state["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = tensor
    return {key: tensor.contiguous() for key, tensor in state.items()}
