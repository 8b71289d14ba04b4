"""Plain, frozen facts the rest of the package shares: presets, hub ids and file names.

Imports nothing of ours. Hub ids checked on the hub in 2026-11.
"""

from __future__ import annotations

from dataclasses import dataclass

PRESETS = ("sd15", "pocket", "tiny", "random-sd15")
WEIGHTLESS_PRESETS = ("tiny", "random-sd15")

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ELLA_REPO = "QQGYLab/ELLA"
ELLA_FILENAME = "ella-sd1.5-tsc-t5xl.safetensors"
# An fp16, encoder-only copy of FLAN-T5-XL (about 3 GB) that ELLA's authors publish beside the
# connector; `google/flan-t5-xl` also works but also downloads the decoder.
T5_SUBFOLDER = "models--google--flan-t5-xl--text_encoder"

# Safetensors metadata key under which we store a connector's hyperparameters. The released
# checkpoint has none, which means the default (SD1.5) architecture.
ELLA_CONFIG_METADATA_KEY = "ella_config"

# The `ella` source that asks for a new, untrained connector instead of a checkpoint (see load_models);
# a local folder of that name is `./scratch`.
ELLA_SCRATCH = "scratch"


@dataclass(frozen=True)
class HubLocation:
    """A folder or file inside a model hub repository.

    `path` is relative to the repository root ("" = the root itself).
    """

    repo_id: str
    path: str = ""

    def __str__(self) -> str:
        return f"{self.repo_id}/{self.path}" if self.path else self.repo_id


# Where the T5 tokenizer comes from when an encoder folder has none: FLAN-T5-XL's own repo.
T5_TOKENIZER_SOURCE = HubLocation("google/flan-t5-xl")

DEFAULT_SOURCES = {
    "sd15": HubLocation(SD15_REPO),
    "ella": HubLocation(ELLA_REPO, ELLA_FILENAME),
    "t5": HubLocation(ELLA_REPO, T5_SUBFOLDER),
}
