"""The Compare tab's "LoRAs, embeddings and T5" panel: what was loaded at start-up, and this session's LoRA weights.

The LoRAs and embeddings are the ones the server was started with (--lora, --embedding); the page never
takes a file path. Each LoRA with a per-run weight gets a slider; the sliders' values reach the generate
event as one {name: weight} mapping (`lora_weights`), so they are this browser session's alone.
"""

from __future__ import annotations

import gradio as gr

from ella_demo.core.adapters import LORA_WEIGHT_RANGE
from ella_demo.core.models import LoadedModels

HOW_TO_ADD = (
    "Start the app with `--lora FILE[:WEIGHT]` (SD1.5 LoRAs, A1111/kohya or diffusers, safetensors only; "
    "add `--lora-fuse` to merge them once) or `--embedding FILE[:TOKEN]` (textual inversion for CLIP) to use them here."
)


def describe_additions(models: LoadedModels) -> str:
    """The panel's text: the start-up LoRAs and embeddings, and where T5 runs."""
    blocks = []
    if models.loras:
        blocks.append("\n".join([
            "**LoRAs loaded at start-up** (the UNet's part changes both sides alike; CLIP's part the CLIP side and "
            "`ella+clip`):",
            *(f"- `{lora.name}`: {lora.describe()}" for lora in models.loras),
        ]))  # fmt: skip
    if models.embeddings:
        blocks.append("\n".join([
            "**Textual-inversion embeddings** (CLIP side and `ella+clip` only; T5 does not know them):",
            *(f"- `{item.token}` ({item.describe()})" for item in models.embeddings),
        ]))  # fmt: skip
    if not blocks:
        blocks.append(f"No LoRA or embedding was loaded. {HOW_TO_ADD}")
    blocks.append(f"**T5:** {models.placement.describe()}.")
    if models.placement.t5_caveat:
        blocks.append(f"⚠️ {models.placement.t5_caveat}")
    return "\n\n".join(blocks)


def additions_panel(models: LoadedModels) -> dict[str, gr.components.Component]:
    """The panel, folded; with a weight slider per switchable LoRA and the hidden `lora_weights` they fill."""
    switchable = [lora for lora in models.loras if not lora.fused]
    with gr.Accordion("LoRAs, embeddings and T5", open=bool(switchable), elem_id="additions"):
        gr.Markdown(describe_additions(models), elem_id="additions-list")
        sliders = [
            gr.Slider(*LORA_WEIGHT_RANGE, value=lora.weight, step=0.05, label=f"LoRA {lora.name}: weight (0 = off)",
                      info="for this browser session's runs only", elem_id=f"lora-{lora.name}")
            for lora in switchable
        ]  # fmt: skip
        weights = gr.JSON({lora.name: lora.weight for lora in switchable}, visible=False)
    names = [lora.name for lora in switchable]
    for slider in sliders:
        slider.change(lambda *values: dict(zip(names, values, strict=True)), sliders, weights,
                      queue=False, api_name=False)  # fmt: skip
    return {"lora_weights": weights}
