"""Small helpers shared by tests that are not fixtures."""

from __future__ import annotations

import socket
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel, BertTokenizerFast


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_tiny_bert(folder: Path, words: list[str], width: int) -> Path:
    """A one-layer BERT encoder `width` wide and its fast WordPiece tokenizer (the given words, then
    single letters, so any lower-case text tokenizes), saved as a hub folder holds them."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *dict.fromkeys(words),
        *letters,
        *(f"##{c}" for c in letters),
    ]
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)}, model_max_length=64)
    config = BertConfig(vocab_size=len(vocab), hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- the pocket world at toy size ---------------------------------------------------------------

TOY_UNET = {"block_out_channels": [16, 16, 16], "norm_num_groups": 4, "cross_attention_dim": 32,
            "attention_head_dim": 2}  # fmt: skip
SMALL_TRANSFORMER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "projection_dim": 32}  # fmt: skip


def toy_pocket_configs() -> dict:
    """Architecture overrides that make every pocket stage take well under a second a step."""
    from ella_demo.loading.toy_tokenizers import build_clip_tokenizer
    from ella_demo.pocket import architecture
    from ella_demo.pocket.captions import training_vocabulary

    vocab = len(build_clip_tokenizer(sorted(training_vocabulary())))
    return {
        "vae": architecture.vae_config() | {"block_out_channels": [8, 8, 8], "norm_num_groups": 4},
        "text_encoder": architecture.clip_text_config(vocab) | SMALL_TRANSFORMER,
        "vision": architecture.clip_vision_config() | SMALL_TRANSFORMER,
        "unet": architecture.unet_config() | TOY_UNET,
    }


def train_toy_stage(stage: str, runs: Path, world: Path, max_steps: int, resume: bool = False, **settings):
    """One model stage (vae, clip or unet) of a toy pocket world: batch 4, a checkpoint every 2 steps.

    settings: further StageSettings (the unet stage's timesteps)."""
    from ella_demo.pocket.training import PocketRun, stage_settings, train_model_stage

    settings = stage_settings(stage, runs, max_steps=max_steps, batch_size=4, checkpoint_every=2,
                              resume=resume, progress=False, **settings)  # fmt: skip
    return train_model_stage(PocketRun(stage, world, runs, settings, toy_pocket_configs()))


def copy_world(source: Path, target: Path, parts: tuple[str, ...] | None = None) -> Path:
    """A copy of a world folder's parts (all of them by default)."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for part in source.iterdir():
        if parts is None or part.name in parts:
            copy = shutil.copytree if part.is_dir() else shutil.copyfile
            copy(part, target / part.name)
    return target


# LoRA files in the two layouts tests/test_lora.py and tests/test_app_additions.py write.
RANK = 4


def linear_layers(model: torch.nn.Module, keep) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and keep(name)]


def unet_layers(models) -> list[str]:
    """Every linear layer of the UNet's attention blocks (what kohya's SD1.5 LoRAs train)."""
    return linear_layers(models.pipe.unet, lambda name: "attentions" in name)


def clip_layers(models) -> list[str]:
    """Every linear layer of CLIP's encoder (kohya's text-encoder LoRAs: q, k, v, out, fc1, fc2)."""
    return linear_layers(models.pipe.text_encoder, lambda name: name.startswith("encoder."))


def random_factors(model, names: list[str], seed: int, scale: float = 0.05) -> dict[str, tuple]:
    """layer -> (down (r, in), up (out, r)) drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for name in names:
        layer = model.get_submodule(name)
        down = torch.randn(RANK, layer.in_features, generator=generator) * scale
        factors[name] = (down, torch.randn(layer.out_features, RANK, generator=generator) * scale)
    return factors


def write_kohya(path: Path, unet: dict, clip: dict, alpha: float = 2.0) -> Path:
    """A1111/kohya layout: lora_unet_<path_with_underscores>.lora_down/.lora_up/.alpha; CLIP: lora_te_text_model_."""
    tensors = {}
    for prefix, factors in (("lora_unet_", unet), ("lora_te_text_model_", clip)):
        for name, (down, up) in factors.items():
            key = prefix + name.replace(".", "_")
            tensors |= {
                f"{key}.lora_down.weight": down,
                f"{key}.lora_up.weight": up,
                f"{key}.alpha": torch.tensor(alpha),
            }
    save_file(tensors, path)
    return path


def write_diffusers(path: Path, unet: dict, clip: dict) -> Path:
    """diffusers' (PEFT) layout: unet.<path>.lora_A.weight / lora_B.weight, CLIP under text_encoder.text_model."""
    tensors = {}
    for prefix, factors in (("unet.", unet), ("text_encoder.text_model.", clip)):
        for name, (down, up) in factors.items():
            tensors |= {f"{prefix}{name}.lora_A.weight": down, f"{prefix}{name}.lora_B.weight": up}
    save_file(tensors, path)
    return path


def unet_lora_file(models, path: Path, seed: int, layers: int | None = None) -> Path:
    """A kohya-layout LoRA of the first `layers` (all: None) UNet attention layers of `models`, drawn from `seed`."""
    return write_kohya(path, random_factors(models.pipe.unet, unet_layers(models)[:layers], seed=seed), {})
