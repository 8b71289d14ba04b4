"""The Compare tab: the settings, both sides' images, and the views scrubbed through the run's steps.

Every component of the tab is known by a name ("prompt", "step", "word_maps"...), the names the
handlers return their outputs under; `handlers.by_name` turns a handler's {name: value} into Gradio's
{component: value}, so no handler depends on the order of an event's outputs.
"""

from __future__ import annotations

import json
import random
from importlib import resources

import gradio as gr

from ella_demo.app.additions_panel import additions_panel
from ella_demo.app.handlers import ExplorerUI, by_name
from ella_demo.app.serving import VIEW_CONCURRENCY, ServingLimits, model_work
from ella_demo.core.models import LoadedModels
from ella_demo.core.settings import (
    DEFAULT_STEPS,
    GUIDANCE_RANGE,
    IMAGES_RANGE,
    MODES,
    SCHEDULER_NAMES,
    SEED_RANGE,
    STEPS_RANGE,
    default_guidance,
    size_range,
)
from ella_demo.inspect.connector_attention import NORMALISATIONS
from ella_demo.inspect.views import WINDOW_CHOICES

# The generate endpoint's inputs, in the order of run_generate's parameters.
GENERATE_INPUTS = (
    "prompt", "negative_prompt", "seed", "steps", "guidance_scale", "width", "height", "scheduler", "num_images",
    "mode", "t5_length", "seeding", "lora_weights",
)  # fmt: skip
# What the view events update. The generate endpoint updates all of them after the run's own
# outputs, and its API returns them in this order.
STEP_VIEWS = ("clip_preview", "ella_preview", "query_map", "highlighted", "word_maps")
TIME_VIEWS = ("token_time", "curves")
GENERATE_OUTPUTS = ("clip_image", "ella_image", "gallery", "notes", "session", "step", "word", *STEP_VIEWS, *TIME_VIEWS)
RENDERING = {"concurrency_limit": VIEW_CONCURRENCY, "api_name": False}


def example_prompts(preset: str = "sd15") -> list[str]:
    """The example prompts shipped in the package's example_prompts.json (written by us) for `preset`:
    the pocket world's own (its vocabulary, and paraphrases of it) for pocket, the others for the rest."""
    text = resources.files("ella_demo.app").joinpath("example_prompts.json").read_text(encoding="utf-8")
    wanted = "pocket" if preset == "pocket" else "sd15"
    return [entry["prompt"] for entry in json.loads(text) if entry.get("preset", "sd15") == wanted]


def _prompt_and_seed(preset: str) -> dict[str, gr.components.Component]:
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(
                label="Prompt (Enter generates)",
                lines=1,
                max_lines=6,
                placeholder="A dense prompt: objects, colours, counts, relations...",
                elem_id="prompt",
            )
            negative_prompt = gr.Textbox(label="Negative prompt", lines=1, value="")
        with gr.Column(scale=2):
            with gr.Row():
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1])
                randomise = gr.Button("Random seed", size="sm")
            steps = gr.Slider(*STEPS_RANGE, value=DEFAULT_STEPS, step=1, label="Steps", elem_id="steps")
            guidance_scale = gr.Slider(*GUIDANCE_RANGE, value=default_guidance(preset), step=0.5,
                                       label="Guidance scale")  # fmt: skip
    return {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "randomise": randomise,
        "steps": steps,
        "guidance_scale": guidance_scale,
    }


def _image_settings(models: LoadedModels) -> dict[str, gr.components.Component]:
    """The size, scheduler, batch, mode and seeding controls; the sizes start at the model's native size."""
    low, high = size_range(models.preset)
    size = models.native_size
    with gr.Row():
        return {
            "width": gr.Slider(low, high, value=size, step=8, label="Width"),
            "height": gr.Slider(low, high, value=size, step=8, label="Height"),
            "scheduler": gr.Dropdown(list(SCHEDULER_NAMES), value="dpm++", label="Scheduler"),
            "num_images": gr.Slider(*IMAGES_RANGE, value=1, step=1, label="Images per side"),
            "mode": gr.Radio(list(MODES), value="ella", label="ELLA mode"),
            "t5_length": gr.Radio(["flexible", "128"], value="flexible", label="T5 length"),
            "seeding": gr.Radio(
                [("CPU generator", "cpu"), ("official demo", "official")],
                value="cpu",
                label="Seeding",
                info="CPU: same images on any device. Official: as the ELLA demo, seed+i per image.",
            ),
        }


def _clickable_image(side: str, preset: str) -> gr.Image:
    """The first image of one side, where a click asks which words are at that pixel."""
    base = "pocket SD" if preset == "pocket" else "SD1.5"
    return gr.Image(
        label=f"{base} + {side} (click a pixel: which words are there?)",
        format="png",
        interactive=False,
        height=420,
        elem_id=f"{side.lower()}-image",
    )


def _run_results(prompt: gr.Textbox, preset: str) -> dict[str, gr.components.Component]:
    """The Generate and Stop buttons, the examples, and what a run shows: notes and images."""
    with gr.Row():
        generate = gr.Button("Generate", variant="primary", elem_id="generate", scale=4)
        stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
    gr.Examples(example_prompts(preset), inputs=prompt, label="Examples (click one, then Generate)")
    notes = gr.Markdown(elem_id="run-notes")
    with gr.Row():
        clip_image, ella_image = (_clickable_image(label, preset) for label in ("CLIP", "ELLA"))
    gallery = gr.Gallery(
        label="All images: CLIP, then ELLA",
        columns=8,
        height=180,
        preview=False,
        object_fit="contain",
        format="png",
        elem_id="all-images",
    )
    pixel_probe = gr.Markdown(elem_id="pixel-probe")
    return {
        "generate": generate,
        "stop": stop,
        "notes": notes,
        "clip_image": clip_image,
        "ella_image": ella_image,
        "gallery": gallery,
        "pixel_probe": pixel_probe,
    }


def _step_views(models: LoadedModels) -> dict[str, gr.components.Component]:
    """The step scrubber, the connector and word-map controls, and the views of one step."""
    config = models.ella.config
    gr.Markdown("### Inside the run: scrub through the denoising steps")
    step = gr.Slider(1, 2, value=1, step=1, label="Step (1 = highest noise)", elem_id="step")
    with gr.Row():
        block = gr.Dropdown(["mean", *map(str, range(config.layers))], value="mean", label="Connector block")
        head = gr.Dropdown(["mean", *map(str, range(config.heads))], value="mean", label="Connector head")
        word = gr.Dropdown([], label="Word for the maps", elem_id="word")
        window = gr.Radio(list(WINDOW_CHOICES), value="all", label="Step window for the maps")
        scale = gr.Radio(["shared", "per map"], value="shared", label="Colour scale")
    with gr.Row():
        clip_preview = gr.Image(label="CLIP: x0 preview at this step", format="png", height=256)
        ella_preview = gr.Image(label="ELLA: x0 preview at this step", format="png", height=256)
        highlighted = gr.HighlightedText(
            label="Prompt coloured by the connector's word share at this step", elem_id="highlight"
        )
    query_map = gr.Image(
        label=f"Connector: {config.num_latents} queries x words at this step", format="png", elem_id="query-map"
    )
    word_maps = gr.Image(
        label="Where the word lands (CLIP attention, ELLA attention flow, difference)",
        format="png",
        elem_id="word-maps",
    )
    return {
        "step": step,
        "block": block,
        "head": head,
        "word": word,
        "window": window,
        "scale": scale,
        "clip_preview": clip_preview,
        "ella_preview": ella_preview,
        "highlighted": highlighted,
        "query_map": query_map,
        "word_maps": word_maps,
    }


def _time_views() -> dict[str, gr.components.Component]:
    """The views over all steps, their controls, and the exports."""
    with gr.Row():
        normalisation = gr.Radio(list(NORMALISATIONS), value="paper", label="Normalisation")
        pieces = gr.Checkbox(label="Show raw T5 pieces instead of words")
    token_time = gr.Image(label="Token x timestep map (paper Fig. 8)", format="png", elem_id="token-time")
    curves = gr.Image(label="Word shares over time", format="png", elem_id="curves")
    with gr.Row():
        animate = gr.Button("Make GIF of the connector over all steps")
        download = gr.Button("Download this run (zip)", elem_id="download")
    files = gr.File(label="Files", elem_id="files")
    return {
        "normalisation": normalisation,
        "pieces": pieces,
        "token_time": token_time,
        "curves": curves,
        "animate": animate,
        "download": download,
        "files": files,
    }


def _wire_generation(ui: ExplorerUI, parts: dict, limits: ServingLimits) -> None:
    """Generate (button or Enter), Stop and the random seed."""
    generation = {
        "fn": by_name(ui.run_generate, parts),
        "inputs": [parts[name] for name in GENERATE_INPUTS],
        "outputs": [parts[name] for name in GENERATE_OUTPUTS],
        "preprocess": False,  # raw inputs: run_generate checks each value and names it
        **model_work(limits),
    }
    parts["generate"].click(**generation, api_name="generate")
    parts["prompt"].submit(**generation, api_name=False)
    parts["stop"].click(ui.stop, None, None, queue=False, api_name="stop")  # the run reports where it stopped
    parts["randomise"].click(lambda: random.randint(*SEED_RANGE), None, parts["seed"], **RENDERING)


def _wire_views(ui: ExplorerUI, parts: dict) -> None:
    """Every control that re-renders views from the session's cached trace."""

    def components(*names: str) -> list[gr.components.Component]:
        return [parts[name] for name in names]

    on_step = {
        "fn": by_name(ui.on_step, parts),
        "inputs": components("session", "step", "block", "head", "word", "window"),
        "outputs": components(*STEP_VIEWS),
    }
    on_time_controls = {
        "fn": by_name(ui.on_time_controls, parts),
        "inputs": components("session", "normalisation", "block", "head", "pieces"),
        "outputs": components(*TIME_VIEWS),
    }
    parts["step"].input(**on_step, trigger_mode="always_last", **RENDERING)
    for control in components("block", "head"):
        control.input(**on_step, **RENDERING)
        control.input(**on_time_controls, **RENDERING)
    word_inputs = components("session", "step", "word", "window", "scale")
    for control in components("word", "window", "scale"):
        control.input(ui.on_word, word_inputs, parts["word_maps"], **RENDERING)
    for control in components("normalisation", "pieces"):
        control.input(**on_time_controls, **RENDERING)
    for image in components("clip_image", "ella_image"):
        image.select(ui.on_select, components("session", "step", "window"), parts["pixel_probe"], **RENDERING)
    parts["animate"].click(ui.animation, components("session", "block", "head"), parts["files"], **RENDERING)
    parts["download"].click(ui.download, components("session"), parts["files"], **RENDERING)


def compare_tab(ui: ExplorerUI, session: gr.State, limits: ServingLimits) -> None:
    """The tab's components, and the events that generate and re-render."""
    parts = {"session": session, **_prompt_and_seed(ui.models.preset), **_image_settings(ui.models)}
    parts |= additions_panel(ui.models)
    parts |= _run_results(parts["prompt"], ui.models.preset)
    parts |= _step_views(ui.models)
    parts |= _time_views()
    _wire_generation(ui, parts, limits)
    _wire_views(ui, parts)
