"""What reaches a handler from the browser: raw values checked field by field, and errors turned into messages.

The events skip Gradio's own preprocessing (which rounds numbers silently and names no field), so
every value arrives as the client sent it and is checked here, under the name the user sees.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import gradio as gr
import torch

from ella_demo.core.errors import ExplorerError, InputError
from ella_demo.core.settings import SettingsError
from ella_demo.core.text_encoding import FLEXIBLE

LOGGER = logging.getLogger(__name__)

INTERNAL_ERROR = (
    "Internal error: this is a bug in ELLA Explorer, not a problem with your input. "
    "It was logged on the server; try again, or report it."
)
OUT_OF_MEMORY = "The GPU ran out of memory for this request: try fewer images, fewer steps or a smaller size."
# The app's names for the generation settings, so that messages name the control the user sees.
FIELD_LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "seed": "Seed",
    "num_inference_steps": "Steps",
    "guidance_scale": "Guidance scale",
    "width": "Width",
    "height": "Height",
    "scheduler": "Scheduler",
    "num_images": "Images per side",
    "mode": "ELLA mode",
    "t5_length": "T5 length",
    "seeding": "Seeding",
    "loras": "LoRA weights:",
    # The Learn tab's
    "lesson": "Lesson",
    "second prompt": "Second prompt",
    "prompt_after": "Second prompt",
    "seeds": "Seeds per measurement",
    "steps": "Steps",
    "block": "Block",
}


def reported(handler: Callable) -> Callable:
    """Show the project's own errors as they are; log anything else as the bug it is.

    Every handler the browser can reach goes through this, so a user never sees a bare "Error":
    their mistakes come back with the message that says what to change (fields under their UI
    labels), and internal failures come back as a short generic message with the traceback logged.
    """

    @functools.wraps(handler)
    def checked(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except InputError as error:
            raise gr.Error(error.named(FIELD_LABELS)) from error
        except ExplorerError as error:
            raise gr.Error(str(error)) from error
        except torch.cuda.OutOfMemoryError as error:
            torch.cuda.empty_cache()
            raise gr.Error(OUT_OF_MEMORY) from error
        except Exception as error:
            LOGGER.exception("internal error in %s", getattr(handler, "__name__", handler))
            raise gr.Error(INTERNAL_ERROR) from error

    return checked


def whole_number(field: str, value) -> int:
    """An API value that must be a whole number: 25 and 25.0 pass; 2.5, NaN, "25" and True are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise SettingsError(field, f"must be a whole number, got {value!r}.")
    return int(value)


def number(field: str, value) -> float:
    """An API value that must be a number (its range is checked with the other settings)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(field, f"must be a number, got {value!r}.")
    return float(value)


def text(field: str, value) -> str:
    """Text from the API; a missing value (None) is the empty text."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SettingsError(field, f"must be text, got {type(value).__name__}.")
    return value


def lora_weights(value) -> dict[str, float] | None:
    """The LoRA weights of one run: None (the start-up weights) or {LoRA name: weight}; names and ranges are
    checked against the loaded LoRAs by the engine (core/adapters.py)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(name, str) for name in value):
        raise SettingsError("loras", f'must map LoRA names to weights, like {{"style": 0.8}}, got {value!r}.')
    return value


def t5_length(value) -> int | str:
    """The T5 length control: "flexible", or a whole number (also as the text "128" the radio sends)."""
    if value == FLEXIBLE:
        return FLEXIBLE
    if isinstance(value, str) and value.isdecimal():
        return int(value)
    return whole_number("t5_length", value)
