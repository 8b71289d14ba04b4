"""Visual question answering models for DPG-Bench scoring (BLIP through transformers, safetensors only)."""

from __future__ import annotations

import torch

DEFAULT_BLIP = "Salesforce/blip-vqa-base"


def load_blip_vqa(source: str = DEFAULT_BLIP, device: str | torch.device = "cpu"):
    """(processor, model) of a BLIP VQA hub id or local folder, the model on `device` in eval mode."""
    from transformers import BlipForQuestionAnswering, BlipProcessor  # heavy: only when asked for

    processor = BlipProcessor.from_pretrained(source)
    model = BlipForQuestionAnswering.from_pretrained(source, use_safetensors=True).to(device).eval()
    return processor, model
