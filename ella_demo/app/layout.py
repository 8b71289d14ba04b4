"""The Blocks app: a header, and the Compare, Probe, Learn, DPG-Bench and About tabs.

Per-session data (the last run and its trace) lives in gr.State, so users never see each other's
results; the handlers come from `ExplorerUI`, bound to the models the app was built with.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gradio as gr

from ella_demo.app.about import about_tab
from ella_demo.app.compare_tab import compare_tab
from ella_demo.app.dpg_tab import dpg_tab
from ella_demo.app.handlers import ExplorerUI
from ella_demo.app.learn_handlers import LearnUI
from ella_demo.app.learn_tab import learn_tab
from ella_demo.app.serving import SESSION_TTL_S, ServingLimits, model_work
from ella_demo.core.models import LoadedModels
from ella_demo.inspect.connector_attention import NORMALISATIONS

POCKET_BANNER = (
    "ℹ️ **Preset `pocket`: a trained toy world, not Stable Diffusion.** Every model here was trained by this "
    "project on 64x64 pictures of coloured shapes: a VAE, a small CLIP, a small SD-style UNet that reads it, and "
    "an ELLA connector that feeds the same frozen UNet a real pretrained language model (all-MiniLM-L6-v2) "
    "instead. Use the world's words (circle, square, triangle, cross; red, orange, yellow, green, blue, purple; "
    "small, large; filled, outlined; white, black or gray background; left of, right of, above, below, next to; "
    "two, three), or paraphrases CLIP never saw (crimson, cube, hollow...): the examples below show both."
)


def _banner(models: LoadedModels) -> str:
    """What the images are: the pocket world's note, or a warning that a random-weight preset draws noise."""
    if models.preset == "pocket" and not models.random_weights:
        return POCKET_BANNER
    if not models.random_weights:
        return ""
    return (
        f"⚠️ **Preset `{models.preset}`: random weights.** Every image here is noise from untrained "
        "models, useful only to try the interface. Start the app without `--preset` for real ELLA weights."
    )


def _probe_tab(ui: ExplorerUI, limits: ServingLimits) -> None:
    """The connector alone on a dense timestep grid, for one or two prompts."""
    gr.Markdown(
        "The connector alone on a dense grid of timesteps (999 to 0), no UNet: "
        "how one or two prompts are read over time."
    )
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", lines=2)
        prompt2 = gr.Textbox(label="Second prompt (optional)", lines=2, value="")
    with gr.Row():
        timesteps = gr.Slider(2, 200, value=50, step=1, label="Timesteps")
        normalisation = gr.Radio(list(NORMALISATIONS), value="paper", label="Normalisation")
    run = gr.Button("Probe", variant="primary")
    token_time = gr.Image(label="Token x timestep map", format="png")
    curves = gr.Image(label="Word shares over time", format="png")
    comparison = gr.Image(label="Two prompts side by side", format="png")
    run.click(
        ui.run_probe,
        [prompt, prompt2, timesteps, normalisation],
        [token_time, curves, comparison],
        api_name="probe",
        preprocess=False,
        **model_work(limits),
    )


def build_app(
    models: LoadedModels,
    gpu_wrapper: Callable = lambda function: function,
    dpg_results: Path | None = None,
    limits: ServingLimits = ServingLimits(),  # noqa: B008 - a frozen dataclass
) -> gr.Blocks:
    """The Blocks app, queued within `limits`; launch it with `launch_app`."""
    ui = ExplorerUI(models, gpu_wrapper, limits)
    with gr.Blocks(title="ELLA Explorer", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# ELLA Explorer\nStable Diffusion 1.5 with CLIP, and with ELLA's LLM connector, side by side.")
        banner = _banner(models)
        if banner:
            gr.Markdown(banner, elem_id="preset-banner")
        # A run's trace is tens of MB at 512 px: drop it an hour after its last use.
        session = gr.State(None, time_to_live=SESSION_TTL_S)
        with gr.Tabs():
            with gr.Tab("Compare"):
                compare_tab(ui, session, limits)
            with gr.Tab("Probe"):
                _probe_tab(ui, limits)
            with gr.Tab("Learn"):
                learn_tab(LearnUI(ui), models, limits)
            with gr.Tab("DPG-Bench"):
                dpg_tab(dpg_results)
            with gr.Tab("About"):
                about_tab()
        app.unload(ui.stop)  # a closed page stops the session's runs too
    app.queue(max_size=limits.max_queue)
    return app
