"""The pocket world's first three training stages: the VAE, the pocket CLIP, the pocket SD UNet.

Each draws fresh scenes at every step (rendering costs well under a millisecond a picture), so no
dataset is stored, and exports its model into the world folder in the diffusers layout. The fourth
stage, the connector, is the project's ordinary training command run on that folder (connector.py).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextModel, CLIPTokenizer

from ella_demo.pocket.architecture import (
    CLIP_MAX_LENGTH,
    clip_text_config,
    clip_vision_config,
    scheduler_config,
    unet_config,
    vae_config,
)
from ella_demo.pocket.captions import PocketPrompt, training_example, training_example_with_shape_negative
from ella_demo.pocket.render import render_array
from ella_demo.train.objective import LossInputs, LossOptions, diffusion_loss, noise_scheduler_for

KL_WEIGHT = 1e-6  # Stable Diffusion's VAE weighting of the KL term: latents stay close to a Gaussian's scale
CAPTION_DROPOUT = 0.1  # the UNet learns the empty prompt too, for classifier-free guidance


@contextlib.contextmanager
def seeded(seed: int):
    """Build weights from `seed` on the CPU, leaving the global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def pictures_of(prompts: list[PocketPrompt]) -> torch.Tensor:
    """(B, 3, 64, 64) float renders in [-1, 1] of the prompts' scenes."""
    pixels = np.stack([render_array(prompt.scene) for prompt in prompts])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def clip_input_ids(tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """(B, 77) token ids, padded and truncated to CLIP's length, as the pocket CLIP trains and encodes."""
    return tokenizer(texts, padding="max_length", max_length=CLIP_MAX_LENGTH, truncation=True,
                     return_tensors="pt").input_ids  # fmt: skip


def training_batch(batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, list[PocketPrompt]]:
    """(B, 3, 64, 64) float pictures in [-1, 1] of fresh training scenes, and their captions."""
    prompts = [training_example(rng) for _ in range(batch_size)]
    return pictures_of(prompts), prompts


class VaeStage:
    """AutoencoderKL trained to reconstruct pictures: MSE plus KL_WEIGHT x the KL to a unit Gaussian."""

    name = "vae"
    loss_label = "reconstruction MSE + 1e-6 KL"

    def __init__(self, config: dict | None = None, seed: int = 0):
        with seeded(seed):
            self.config = config or vae_config()
            self.vae = AutoencoderKL(**self.config)

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae}

    def recipe(self) -> dict:
        # The config as given: the model's own also holds bookkeeping whose order varies between processes.
        return {"config": self.config, "kl_weight": KL_WEIGHT}

    def loss(self, batch_size: int, rng: np.random.Generator, generator: torch.Generator) -> torch.Tensor:
        images, _ = training_batch(batch_size, rng)
        posterior = self.vae.encode(images).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator)).sample
        return torch.nn.functional.mse_loss(reconstruction, images) + KL_WEIGHT * posterior.kl().mean()

    def latent_scale(self, samples: int = 256, seed: int = 0) -> float:
        """1 / the standard deviation of latent samples of fresh pictures: the `scaling_factor` diffusion uses."""
        images, _ = training_batch(samples, np.random.default_rng([seed, 10**6]))
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.sample(torch.Generator().manual_seed(seed))
        return float(1.0 / latents.std())


class ClipStage:
    """The pocket CLIP: transformers' CLIPModel (text and vision towers) trained contrastively on captioned pictures."""

    name = "clip"
    loss_label = "contrastive loss (CLIP)"

    def __init__(self, tokenizer: CLIPTokenizer, text_config: dict | None = None, vision_config: dict | None = None,
                 seed: int = 0):  # fmt: skip
        self.tokenizer = tokenizer
        text = text_config or clip_text_config(len(tokenizer))
        vision = vision_config or clip_vision_config()
        self.configs = {"text": text, "vision": vision}
        with seeded(seed):
            config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=text["projection_dim"])
            self.model = CLIPModel(config)

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"clip": self.model}

    def recipe(self) -> dict:
        return {"configs": self.configs, "vocab": len(self.tokenizer), "hard_negatives": "shape_swapped"}

    def loss(self, batch_size: int, rng: np.random.Generator, generator: torch.Generator) -> torch.Tensor:
        """CLIP's symmetric contrastive loss, where each picture also competes against every caption's shape-swapped
        twin (NegCLIP's hard negatives, Yuksekgonul et al. 2023): a batch differs in shape alone too rarely for a
        text tower to need shape words otherwise (the swap test measured 64.6% for shapes, 100% for colours)."""
        pairs = [training_example_with_shape_negative(rng) for _ in range(batch_size)]
        prompts = [prompt for prompt, _ in pairs]
        texts = [prompt.text for prompt in prompts] + [negative.text for _, negative in pairs]
        # (B, 2B): each picture against the B captions, then their B twins
        logits = self.model(input_ids=clip_input_ids(self.tokenizer, texts),
                            pixel_values=pictures_of(prompts)).logits_per_image  # fmt: skip
        targets = torch.arange(batch_size)
        picture_to_text = torch.nn.functional.cross_entropy(logits, targets)
        text_to_picture = torch.nn.functional.cross_entropy(logits[:, :batch_size].T, targets)
        return (picture_to_text + text_to_picture) / 2

    @torch.no_grad()
    def retrieval_accuracy(self, prompts: list[PocketPrompt], group: int = 64) -> float:
        """Caption -> picture top-1 accuracy within groups of `group` held-out pairs (chance: 1 / group)."""
        self.model.eval()
        hits = []
        for start in range(0, len(prompts) - group + 1, group):
            chosen = prompts[start : start + group]
            input_ids = clip_input_ids(self.tokenizer, [prompt.text for prompt in chosen])
            logits = self.model(input_ids=input_ids, pixel_values=pictures_of(chosen)).logits_per_text
            hits.append((logits.argmax(dim=1) == torch.arange(len(chosen))).float().mean().item())
        self.model.train()
        return float(np.mean(hits))

    @torch.no_grad()
    def swap_preference(self, prompts: list[PocketPrompt], names: tuple[str, ...]) -> float:
        """How often a picture scores its own caption above the same caption with its first word from `names`
        replaced by the next name (circle -> square; chance 0.5): does the text tower tell those words apart?

        Prompts without such a word are skipped; all pairs go through the model in one batch."""
        chosen, captions = [], []
        for prompt in prompts:
            words = prompt.text.split(" ")
            found = next((i for i, word in enumerate(words) if word.strip(",.:;") in names), None)
            if found is not None:
                name = words[found].strip(",.:;")
                words[found] = words[found].replace(name, names[(names.index(name) + 1) % len(names)])
                chosen.append(prompt)
                captions += [prompt.text, " ".join(words)]  # own caption at 2i, swapped at 2i + 1
        self.model.eval()
        logits = self.model(input_ids=clip_input_ids(self.tokenizer, captions),
                            pixel_values=pictures_of(chosen)).logits_per_image  # fmt: skip
        self.model.train()
        rows = torch.arange(len(chosen))
        return float((logits[rows, 2 * rows] > logits[rows, 2 * rows + 1]).float().mean())

    def text_model(self) -> CLIPTextModel:
        """The text tower alone, as a CLIPTextModel (what SD's `text_encoder/` folder holds)."""
        text = CLIPTextModel(self.model.config.text_config)
        text.load_state_dict(self.model.text_model.state_dict())
        return text


class PassThrough(torch.nn.Module):
    """Stands where the connector stands in `diffusion_loss`: the UNet reads CLIP's tokens as they are."""

    def forward(self, text_features: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return text_features


class UNetStage:
    """The pocket SD: a UNet2DConditionModel trained on frozen-VAE latents, conditioned on frozen pocket-CLIP tokens.

    The loss is the connector training's (`train.objective.diffusion_loss`: noise prediction at uniform
    timesteps, caption dropout to the empty prompt), with CLIP's tokens passed through unchanged.
    timesteps: (low, high) trains on timesteps in [low, high) only (None: all), for a phase spent where
    the eps loss is small and a picture's layout and shapes are decided (README, "The pocket world").
    """

    name = "unet"
    loss_label = "diffusion loss (MSE)"

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 config: dict | None = None, seed: int = 0, timesteps: tuple[int, int] | None = None):  # fmt: skip
        self.vae, self.text_encoder, self.tokenizer = vae.eval(), text_encoder.eval(), tokenizer
        for frozen in (self.vae, self.text_encoder):
            frozen.requires_grad_(False)
        with seeded(seed):
            self.config = config or unet_config()
            self.unet = UNet2DConditionModel(**self.config)
        self.noise_scheduler = noise_scheduler_for(scheduler_config())
        self.options = LossOptions(caption_dropout=CAPTION_DROPOUT, timesteps=timesteps)
        self.empty = self.encode_text([""])

    def trainable(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def recipe(self) -> dict:
        return {"config": self.config, "caption_dropout": CAPTION_DROPOUT, "scheduler": scheduler_config(),
                "scaling_factor": self.vae.config.scaling_factor}  # fmt: skip

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B, 77, width) last hidden states of the frozen pocket CLIP."""
        return self.text_encoder(clip_input_ids(self.tokenizer, texts)).last_hidden_state

    def loss(self, batch_size: int, rng: np.random.Generator, generator: torch.Generator) -> torch.Tensor:
        images, prompts = training_batch(batch_size, rng)
        with torch.no_grad():
            latents = self.vae.encode(images).latent_dist.sample(generator) * self.vae.config.scaling_factor
        inputs = LossInputs(latents, self.encode_text([prompt.text for prompt in prompts]), None, self.empty, None)
        return diffusion_loss(self.unet, PassThrough(), self.noise_scheduler, inputs, self.options, generator)
