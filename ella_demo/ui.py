"""The Gradio app: compare CLIP and ELLA, scrub through the denoising steps, probe the connector.

Per-session data (the last run and its trace) lives in gr.State, so users never see each other's
results. Model work happens only in the generate and probe handlers (`gpu_wrapper` lets a Space
put them on ZeroGPU); every other control re-renders from the session's cached trace.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import gradio as gr
import torch

from . import analysis, figures
from .engine import generate
from .loading import LoadedModels
from .outputs import write_run
from .probe import probe
from .report import write_trace_figures
from .settings import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    GUIDANCE_RANGE,
    IMAGES_RANGE,
    MODES,
    SCHEDULER_NAMES,
    SEED_RANGE,
    SIZE_RANGE,
    STEPS_RANGE,
    SettingsError,
)
from .views import WINDOW_CHOICES, RunViews, parse_aggregation

ABOUT = """
## How ELLA works

[ELLA](https://arxiv.org/abs/2403.05135) keeps Stable Diffusion 1.5's UNet frozen and replaces its
CLIP text encoder by a frozen large language model, FLAN-T5-XL. A small trained network, the
**Timestep-Aware Semantic Connector (TSC)**, sits between them: 64 learnable queries read the T5
tokens through 6 attention blocks and become the 64 tokens the UNet attends to. Every
normalisation in the connector is modulated by the denoising timestep, so the queries read the
prompt differently at every step. The paper's argument: early, noisy steps shape layout and
colour, late steps shape detail and style, so the condition should change over time.

## Reading the views

- **Query x word heatmap**: at the chosen step, how much each of the 64 queries attends to each
  prompt word (queries grouped by the word they read most).
- **Prompt coloured by word share**: the same step, summed over queries.
- **Token x timestep map**: the paper's Fig. 8. Rows are timesteps (high noise on top). The
  normalisations are explained under the figure; `raw` also shows attention to the latents
  themselves and to the end and padding tokens.
- **Word maps**: where a word lands in the image. For CLIP this is the UNet's cross-attention to
  the word's tokens. For ELLA the UNet attends to queries, not words, so the map chains the UNet's
  attention to the queries with the connector's attention from queries to words, rolled out
  through its blocks: **attention flow**.
- **x0 previews**: the model's current estimate of the final image at that step.

Attention is not attribution: these maps show where attention goes, not what caused a pixel.

Weights: [QQGYLab/ELLA](https://huggingface.co/QQGYLab/ELLA) and
[stable-diffusion-v1-5](https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5).
"""


SESSION_TTL_S = 3600


def example_prompts() -> list[str]:
    """The example prompts shipped in assets/example_prompts.json (written by us)."""
    path = Path(str(resources.files("ella_demo"))).parent / "assets" / "example_prompts.json"
    return [entry["prompt"] for entry in json.loads(path.read_text(encoding="utf-8"))]


def _user_error(error: Exception) -> gr.Error:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return gr.Error("The GPU ran out of memory for this request: try fewer images, fewer steps or a smaller size.")
    return gr.Error(str(error))


class ExplorerUI:
    """Handlers bound to one set of loaded models."""

    def __init__(self, models: LoadedModels, gpu_wrapper: Callable = lambda function: function):
        self.models = models
        self._generate_on_device = gpu_wrapper(self._generate_on_device)
        self._probe_on_device = gpu_wrapper(self._probe_on_device)

    @property
    def size_range(self) -> tuple[int, int]:
        return (64, 1024) if self.models.preset == "tiny" else SIZE_RANGE

    def banner(self) -> str:
        if not self.models.random_weights:
            return ""
        return (
            f"⚠️ **Preset `{self.models.preset}`: random weights.** Every image here is noise from untrained "
            "models, useful only to try the interface. Start the app without `--preset` for real ELLA weights."
        )

    # --- model work --------------------------------------------------------------------------

    def _generate_on_device(self, arguments: dict, progress: gr.Progress):
        return generate(
            self.models, trace=True, progress=lambda done, total: progress((done, total), unit="steps"), **arguments
        )

    def _probe_on_device(self, prompts: list[str], timesteps: int):
        return [probe(self.models, prompt, timesteps) for prompt in prompts]

    def run_generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        seed: float = 0,
        steps: float = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        width: float = 512,
        height: float = 512,
        scheduler: str = "dpm++",
        num_images: float = 1,
        mode: str = "ella",
        t5_length: str = "flexible",
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio injects progress through this default
    ):
        """Generate with both models; returns the images, the run notes and the first views."""
        arguments = {
            "prompt": prompt or "",
            "negative_prompt": negative_prompt or "",
            "seed": int(seed),
            "num_inference_steps": int(steps),
            "guidance_scale": float(guidance_scale),
            "width": int(width),
            "height": int(height),
            "scheduler": scheduler,
            "num_images": int(num_images),
            "mode": mode,
            "t5_length": t5_length if t5_length == "flexible" else int(t5_length),
        }
        try:
            result = self._generate_on_device(arguments, progress)
        except (SettingsError, ValueError, torch.cuda.OutOfMemoryError) as error:
            raise _user_error(error) from error
        for note in result.warnings:
            gr.Warning(note)
        views = RunViews(result)
        last = views.steps - 1
        words = views.word_choices()
        word = views.default_word()
        aggregation = analysis.Aggregation()
        clip_preview, ella_preview = views.previews(last)
        if not views.has_words:
            empty = (None, [], None, None, None)
            return (
                *self._images(result),
                self._run_notes(result) + "\n\nThe prompt is empty, so there are no words to analyse.",
                views,
                gr.update(minimum=1, maximum=views.steps, value=views.steps, step=1),
                gr.update(choices=[], value=None),
                clip_preview,
                ella_preview,
                *empty,
            )
        return (
            *self._images(result),
            self._run_notes(result),
            views,
            gr.update(minimum=1, maximum=views.steps, value=views.steps, step=1),
            gr.update(choices=words, value=word),
            clip_preview,
            ella_preview,
            views.query_heatmap(last, aggregation),
            views.highlighted_prompt(last, aggregation),
            views.word_maps(word, "all", last) if word else None,
            views.token_time("paper", aggregation),
            views.share_curves(aggregation),
        )

    @staticmethod
    def _images(result) -> tuple:
        """The first image of each side (for the pixel probe), and every image captioned."""
        everything = [(image, f"CLIP {index + 1}") for index, image in enumerate(result.clip_images)]
        everything += [(image, f"ELLA {index + 1}") for index, image in enumerate(result.ella_images)]
        return result.clip_images[0], result.ella_images[0], everything

    def _run_notes(self, result) -> str:
        timings = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.timings.items())
        lines = [f"**Seed used: {result.settings.seed}**. Timings: {timings}."]
        lines += [f"⚠️ {note}" for note in result.warnings]
        if result.random_weights:
            lines.append(f"⚠️ Random weights ({self.models.preset} preset): the images are noise.")
        return "\n\n".join(lines)

    def run_probe(self, prompt: str, prompt2: str = "", timesteps: float = 50, normalisation: str = "paper"):
        """Connector attention over a timestep grid for one or two prompts (no UNet)."""
        prompts = [prompt or ""] + ([prompt2] if prompt2 else [])
        try:
            results = self._probe_on_device(prompts, int(timesteps))
        except ValueError as error:
            raise _user_error(error) from error
        maps = [analysis.token_time_map(r.attention, r.timesteps, r.words, normalisation) for r in results]
        first = figures.to_image(figures.token_time_figure(maps[0], f"ELLA connector: {prompts[0][:60]}"))
        shares, columns = analysis.word_shares(results[0].attention, results[0].words)
        curves = figures.to_image(
            figures.word_share_figure(
                shares,
                columns,
                results[0].timesteps,
                analysis.top_words(shares),
                analysis.text_share_per_block(results[0].attention),
            )
        )
        comparison = None
        if len(results) == 2:
            comparison = figures.to_image(figures.compare_token_time_figure(maps[0], maps[1], prompts[0], prompts[1]))
        return first, curves, comparison

    # --- re-rendering from the cached trace ----------------------------------------------------

    @staticmethod
    def _require(views: RunViews | None) -> RunViews:
        if views is None:
            raise gr.Error("Generate an image pair first: the views are drawn from its trace.")
        return views

    def on_step(self, views, step, block, head, word, window):
        views = self._require(views)
        index = int(step) - 1
        aggregation = parse_aggregation(block, head)
        clip_preview, ella_preview = views.previews(index)
        if not views.has_words:
            return clip_preview, ella_preview, None, [], None
        word_maps = views.word_maps(word, window, index) if word else None
        return (
            clip_preview,
            ella_preview,
            views.query_heatmap(index, aggregation),
            views.highlighted_prompt(index, aggregation),
            word_maps,
        )

    def on_word(self, views, step, word, window, scale):
        views = self._require(views)
        if not word:
            return None
        try:
            return views.word_maps(word, window, int(step) - 1, scale == "shared")
        except ValueError as error:
            raise gr.Error(str(error)) from error

    def on_time_controls(self, views, normalisation, block, head, pieces):
        views = self._require(views)
        if not views.has_words:
            return None, None
        aggregation = parse_aggregation(block, head)
        return views.token_time(normalisation, aggregation, pieces), views.share_curves(aggregation)

    def on_select(self, views, step, window, event: gr.SelectData):
        views = self._require(views)
        x, y = event.index
        return views.pixel_probe(x, y, window, int(step) - 1)

    def animation(self, views, block, head):
        views = self._require(views)
        aggregation = parse_aggregation(block, head)
        trace = views.trace
        matrices = [
            analysis.query_word_matrix(trace.tsc_attention[s], trace.t5_words, aggregation)[0]
            for s in range(views.steps)
        ]
        shares, columns = analysis.word_shares(trace.tsc_attention, trace.t5_words, aggregation)
        frames = figures.animation_frames(matrices, shares, columns, trace.timesteps, max(m.max() for m in matrices))
        path = Path(tempfile.mkdtemp(prefix="ella_anim_")) / "tsc_animation.gif"
        figures.save_gif(frames, path)
        return str(path)

    def download(self, views):
        """A zip of the run: PNGs with settings, meta.json, trace.npz and every figure."""
        views = self._require(views)
        folder = Path(tempfile.mkdtemp(prefix="ella_run_"))
        run_dir = folder / "run"
        write_run(views.result, self.models, run_dir)
        write_trace_figures(views.result, run_dir / "figures")
        archive = folder / f"ella_run_seed{views.result.settings.seed}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in sorted(run_dir.rglob("*")):
                if path.is_file():
                    bundle.write(path, path.relative_to(run_dir).as_posix())
        shutil.rmtree(run_dir)
        return str(archive)


def _clickable_image(side: str) -> gr.Image:
    """The first image of one side, where a click asks which words are at that pixel."""
    return gr.Image(
        label=f"SD1.5 + {side} (click a pixel: which words are there?)",
        format="png",
        interactive=False,
        height=420,
        elem_id=f"{side.lower()}-image",
    )


def _dpg_tab(results: Path | None) -> None:
    """Browse a DPG-Bench results folder chosen at launch (never a path typed in the browser)."""
    from .dpg_browse import item_view, list_items

    if results is None:
        gr.Markdown(
            "Start the app with `--dpg-results OUT` to browse DPG-Bench results here. Produce them with "
            "`python -m ella_demo dpg generate --dpg-dir DPG --out OUT` and score each model with "
            "`python -m ella_demo dpg score --dpg-dir DPG --images OUT/ella --vqa blip --out OUT/ella/report.json`."
        )
        return
    items = list_items(results)
    gr.Markdown(f"Results folder: `{results}`, {len(items)} prompts. Tiles are numbered row by row.")
    item = gr.Dropdown(items, value=items[0] if items else None, label="Prompt (item id)", elem_id="dpg-item")
    prompt = gr.Markdown()
    with gr.Row():
        clip_grid = gr.Image(label="SD1.5 + CLIP", format="png", interactive=False)
        ella_grid = gr.Image(label="SD1.5 + ELLA", format="png", interactive=False)
    table = gr.Markdown(elem_id="dpg-answers")

    def show(item_id: str):
        if not item_id:
            return "", None, None, ""
        try:
            view = item_view(results, item_id)
        except ValueError as error:
            raise gr.Error(str(error)) from error
        return f"**{item_id}**: {view['prompt']}", view["grids"].get("clip"), view["grids"].get("ella"), view["table"]

    item.change(show, item, [prompt, clip_grid, ella_grid, table], api_name="dpg_item")


def build_app(
    models: LoadedModels, gpu_wrapper: Callable = lambda function: function, dpg_results: Path | None = None
) -> gr.Blocks:
    """The Blocks app; launch it with `launch_app`."""
    ui = ExplorerUI(models, gpu_wrapper)
    low, high = ui.size_range
    default_size = 512 if models.preset != "tiny" else 256
    queries = models.ella.config.num_latents
    layers, heads = models.ella.config.layers, models.ella.config.heads
    with gr.Blocks(title="ELLA Explorer", delete_cache=(3600, 3600)) as app:
        gr.Markdown("# ELLA Explorer\nStable Diffusion 1.5 with CLIP, and with ELLA's LLM connector, side by side.")
        if ui.banner():
            gr.Markdown(ui.banner(), elem_id="random-weights-banner")
        # A run's trace is tens of MB at 512 px: drop it an hour after its last use.
        session = gr.State(None, time_to_live=SESSION_TTL_S)
        with gr.Tabs():
            with gr.Tab("Compare"):
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt = gr.Textbox(
                            label="Prompt (Enter generates)",
                            lines=1,
                            max_lines=6,
                            placeholder="A dense prompt: objects, colours, counts, relations...",
                            elem_id="prompt",
                        )
                        negative = gr.Textbox(label="Negative prompt", lines=1, value="")
                    with gr.Column(scale=2):
                        with gr.Row():
                            seed = gr.Number(
                                label="Seed", value=0, precision=0, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1]
                            )
                            randomise = gr.Button("Random seed", size="sm")
                        steps = gr.Slider(*STEPS_RANGE, value=DEFAULT_STEPS, step=1, label="Steps")
                        guidance = gr.Slider(*GUIDANCE_RANGE, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance scale")
                with gr.Row():
                    width = gr.Slider(low, high, value=default_size, step=8, label="Width")
                    height = gr.Slider(low, high, value=default_size, step=8, label="Height")
                    scheduler = gr.Dropdown(list(SCHEDULER_NAMES), value="dpm++", label="Scheduler")
                    images = gr.Slider(*IMAGES_RANGE, value=1, step=1, label="Images per side")
                    mode = gr.Radio(list(MODES), value="ella", label="ELLA mode")
                    t5_length = gr.Radio(["flexible", "128"], value="flexible", label="T5 length")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                gr.Examples(example_prompts(), inputs=prompt, label="Examples (click one, then Generate)")
                notes = gr.Markdown(elem_id="run-notes")
                with gr.Row():
                    clip_image, ella_image = (_clickable_image(label) for label in ("CLIP", "ELLA"))
                gallery = gr.Gallery(
                    label="All images: CLIP, then ELLA",
                    columns=8,
                    height=180,
                    preview=False,
                    object_fit="contain",
                    format="png",
                    elem_id="all-images",
                )
                probe_text = gr.Markdown(elem_id="pixel-probe")
                gr.Markdown("### Inside the run: scrub through the denoising steps")
                step = gr.Slider(1, 2, value=1, step=1, label="Step (1 = highest noise)", elem_id="step")
                with gr.Row():
                    block = gr.Dropdown(["mean", *map(str, range(layers))], value="mean", label="Connector block")
                    head = gr.Dropdown(["mean", *map(str, range(heads))], value="mean", label="Connector head")
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
                    label=f"Connector: {queries} queries x words at this step", format="png", elem_id="query-map"
                )
                word_maps = gr.Image(
                    label="Where the word lands (CLIP attention, ELLA attention flow, difference)",
                    format="png",
                    elem_id="word-maps",
                )
                with gr.Row():
                    normalisation = gr.Radio(list(analysis.NORMALISATIONS), value="paper", label="Normalisation")
                    pieces = gr.Checkbox(label="Show raw T5 pieces instead of words")
                token_time = gr.Image(label="Token x timestep map (paper Fig. 8)", format="png", elem_id="token-time")
                curves = gr.Image(label="Word shares over time", format="png", elem_id="curves")
                with gr.Row():
                    animate = gr.Button("Make GIF of the connector over all steps")
                    download = gr.Button("Download this run (zip)", elem_id="download")
                files = gr.File(label="Files", elem_id="files")

                inputs = [prompt, negative, seed, steps, guidance, width, height, scheduler, images, mode, t5_length]
                outputs = [
                    clip_image,
                    ella_image,
                    gallery,
                    notes,
                    session,
                    step,
                    word,
                    clip_preview,
                    ella_preview,
                    query_map,
                    highlighted,
                    word_maps,
                    token_time,
                    curves,
                ]
                run.click(ui.run_generate, inputs, outputs, api_name="generate")
                prompt.submit(ui.run_generate, inputs, outputs, api_name=False)
                randomise.click(lambda: random.randint(*SEED_RANGE), None, seed, api_name=False)
                step_inputs = [session, step, block, head, word, window]
                step_outputs = [clip_preview, ella_preview, query_map, highlighted, word_maps]
                step.input(ui.on_step, step_inputs, step_outputs, api_name=False, trigger_mode="always_last")
                for control in (block, head):
                    control.input(ui.on_step, step_inputs, step_outputs, api_name=False)
                    control.input(
                        ui.on_time_controls,
                        [session, normalisation, block, head, pieces],
                        [token_time, curves],
                        api_name=False,
                    )
                for control in (word, window, scale):
                    control.input(ui.on_word, [session, step, word, window, scale], word_maps, api_name=False)
                for control in (normalisation, pieces):
                    control.input(
                        ui.on_time_controls,
                        [session, normalisation, block, head, pieces],
                        [token_time, curves],
                        api_name=False,
                    )
                for image in (clip_image, ella_image):
                    image.select(ui.on_select, [session, step, window], probe_text, api_name=False)
                animate.click(ui.animation, [session, block, head], files, api_name=False)
                download.click(ui.download, [session], files, api_name=False)

            with gr.Tab("Probe"):
                gr.Markdown(
                    "The connector alone on a dense grid of timesteps (999 to 0), no UNet: "
                    "how one or two prompts are read over time."
                )
                with gr.Row():
                    probe_prompt = gr.Textbox(label="Prompt", lines=2)
                    probe_prompt2 = gr.Textbox(label="Second prompt (optional)", lines=2, value="")
                with gr.Row():
                    probe_steps = gr.Slider(2, 200, value=50, step=1, label="Timesteps")
                    probe_norm = gr.Radio(list(analysis.NORMALISATIONS), value="paper", label="Normalisation")
                probe_run = gr.Button("Probe", variant="primary")
                probe_map = gr.Image(label="Token x timestep map", format="png")
                probe_curves = gr.Image(label="Word shares over time", format="png")
                probe_compare = gr.Image(label="Two prompts side by side", format="png")
                probe_run.click(
                    ui.run_probe,
                    [probe_prompt, probe_prompt2, probe_steps, probe_norm],
                    [probe_map, probe_curves, probe_compare],
                    api_name="probe",
                )

            with gr.Tab("DPG-Bench"):
                _dpg_tab(dpg_results)

            with gr.Tab("About"):
                gr.Markdown(ABOUT)
    return app


def launch_app(
    app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False, concurrency: int = 1, **options
):
    """Queue (one GPU job at a time by default) and serve. Binds to localhost unless told otherwise."""
    app.queue(default_concurrency_limit=concurrency)
    return app.launch(server_name=host, server_port=port, share=share, ssr_mode=False, **options)
