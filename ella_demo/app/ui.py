"""The Gradio app: compare CLIP and ELLA, scrub through the denoising steps, probe the connector.

Per-session data (the last run and its trace) lives in gr.State, so users never see each other's
results. Model work happens only in the generate and probe handlers (`gpu_wrapper` lets a Space
put them on ZeroGPU); every other control re-renders from the session's cached trace.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import json
import logging
import math
import random
import shutil
import sys
import tempfile
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import gradio as gr
import torch

from ella_demo.core.engine import generate
from ella_demo.core.errors import ExplorerError, GenerationCancelledError, InputError
from ella_demo.core.models import LoadedModels
from ella_demo.core.probe import probe
from ella_demo.core.settings import (
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
    check_choice,
)
from ella_demo.core.text_encoding import FLEXIBLE
from ella_demo.inspect import analysis, figures
from ella_demo.inspect.outputs import write_run
from ella_demo.inspect.report import write_trace_figures
from ella_demo.inspect.views import WINDOW_CHOICES, RunViews, parse_aggregation

LOGGER = logging.getLogger(__name__)

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
MODEL_WORK = "model-work"  # the one concurrency group of every handler that runs a model
VIEW_CONCURRENCY = 4  # re-rendering from a cached trace: no model work, never queued behind it
M_ARENA_MAX = -8  # glibc's mallopt parameter for the number of malloc arenas
EXPORTS_KEPT = 16  # GIF/zip folders kept on disk; Gradio has copied older ones to its cache
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
}


@dataclass(frozen=True)
class ServingLimits:
    """What one app instance allows, so a busy or hostile public Space stays bounded.

    concurrency: model runs at once (one GPU job by default). max_pixel_steps: the traced work one
    generation may ask for, width x height x steps x images (default: 512x512, 50 steps, 4 images).
    max_queue: requests waiting at most. max_sessions: browser sessions whose traces are kept
    (least recently used ones are dropped beyond it). max_file_size: largest upload Gradio accepts.
    """

    concurrency: int = 1
    max_pixel_steps: int = 512 * 512 * 50 * 4
    max_queue: int = 32
    max_sessions: int = 32
    max_file_size: str = "5mb"


class RequestTooLargeError(ExplorerError):
    """A generation asks for more traced work than this app allows."""


def _reported(handler: Callable) -> Callable:
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


def _whole_number(field: str, value) -> int:
    """An API value that must be a whole number: 25 and 25.0 pass; 2.5, NaN, "25" and True are refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise SettingsError(field, f"must be a whole number, got {value!r}.")
    return int(value)


def _number(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(field, f"must be a number, got {value!r}.")
    return float(value)


def _text(field: str, value) -> str:
    """Text from the API; a missing value (None) is the empty text."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SettingsError(field, f"must be text, got {type(value).__name__}.")
    return value


def _t5_length(value) -> int | str:
    if value == FLEXIBLE:
        return FLEXIBLE
    if isinstance(value, str) and value.isdecimal():
        return int(value)
    return _whole_number("t5_length", value)


class RunRegistry:
    """The runs in progress, per browser session, so Stop (or a closed page) can end them between steps.

    A run is known by an integer token, which is all the GPU handler receives: on ZeroGPU its
    arguments are pickled into a worker process, and a token pickles where a lock or event does not.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._sessions: dict[int, str] = {}  # running token -> its session
        self._stopped: set[int] = set()

    @contextmanager
    def running(self, session: str) -> Iterator[int]:
        """A token for one run of `session`, forgotten when the run ends."""
        with self._lock:
            token = next(self._tokens)
            self._sessions[token] = session
        try:
            yield token
        finally:
            with self._lock:
                self._sessions.pop(token, None)
                self._stopped.discard(token)

    def stop(self, session: str) -> None:
        """Ask every run of `session` to stop after its current step."""
        with self._lock:
            self._stopped.update(token for token, owner in self._sessions.items() if owner == session)

    def is_stopped(self, token: int) -> bool:
        with self._lock:
            return token in self._stopped


class ExportFolders:
    """Temporary folders for GIF and zip downloads; only the newest `kept` stay on disk.

    Gradio copies a returned file into its own cache before the next request can reach here, so
    older folders are no longer needed; `close` removes the rest when the app stops.
    """

    def __init__(self, kept: int = EXPORTS_KEPT):
        self._root = Path(tempfile.mkdtemp(prefix="ella_explorer_exports_"))
        self._folders: deque[Path] = deque()
        self._kept = kept
        self._lock = threading.Lock()

    def new(self) -> Path:
        folder = Path(tempfile.mkdtemp(dir=self._root))
        with self._lock:
            self._folders.append(folder)
            while len(self._folders) > self._kept:
                shutil.rmtree(self._folders.popleft(), ignore_errors=True)
        return folder

    def count(self) -> int:
        return sum(1 for _ in self._root.iterdir()) if self._root.exists() else 0

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)


def example_prompts() -> list[str]:
    """The example prompts shipped in the package's example_prompts.json (written by us)."""
    text = resources.files("ella_demo.app").joinpath("example_prompts.json").read_text(encoding="utf-8")
    return [entry["prompt"] for entry in json.loads(text)]


class ExplorerUI:
    """Handlers bound to one set of loaded models."""

    def __init__(
        self,
        models: LoadedModels,
        gpu_wrapper: Callable = lambda function: function,
        limits: ServingLimits = ServingLimits(),
    ):
        self.models = models
        self.limits = limits
        self.runs = RunRegistry()
        self.exports = ExportFolders()
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

    def _generate_on_device(self, arguments: dict, run: int, progress: gr.Progress):
        def after_step(done: int, total: int) -> None:
            if self.runs.is_stopped(run):
                raise GenerationCancelledError(done, total)
            progress((done, total), unit="steps")

        return generate(self.models, trace=True, progress=after_step, **arguments)

    def _probe_on_device(self, prompts: list[str], timesteps: int):
        return [probe(self.models, prompt, timesteps) for prompt in prompts]

    @_reported
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
        seeding: str = "cpu",
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio injects progress through this default
    ):
        """Generate with both models; returns the images, the run notes and the first views.

        Inputs arrive as the client sent them (the events skip Gradio's own preprocessing, which
        rounds numbers silently and names no field); every one is checked here instead.
        """
        arguments = {
            "prompt": _text("prompt", prompt),
            "negative_prompt": _text("negative_prompt", negative_prompt),
            "seed": _whole_number("seed", seed),
            "num_inference_steps": _whole_number("num_inference_steps", steps),
            "guidance_scale": _number("guidance_scale", guidance_scale),
            "width": _whole_number("width", width),
            "height": _whole_number("height", height),
            "scheduler": scheduler,
            "num_images": _whole_number("num_images", num_images),
            "mode": mode,
            "t5_length": _t5_length(t5_length),
            "seeding": seeding,
        }
        self._check_work(arguments)
        session = request.session_hash if request is not None else ""
        try:
            with self.runs.running(session) as run:
                result = self._generate_on_device(arguments, run, progress)
        except GenerationCancelledError as stopped:
            return (*[gr.skip()] * 3, f"⏹️ {stopped}", *[gr.skip()] * 10)
        for note in result.warnings:
            gr.Warning(note)
        release_freed_memory()  # the session's previous run (or an evicted session's) is garbage now
        views = RunViews(result)
        last = views.steps - 1
        clip_preview, ella_preview = views.previews(last)
        notes = self._run_notes(result)
        if not views.has_words:
            return (
                *self._images(result),
                notes + "\n\nThe prompt is empty, so there are no words to analyse.",
                views,
                gr.update(minimum=1, maximum=views.steps, value=views.steps, step=1),
                gr.update(choices=[], value=None),
                clip_preview,
                ella_preview,
                *(None, [], None, None, None),
            )
        word = views.default_word()
        aggregation = analysis.Aggregation()
        return (
            *self._images(result),
            notes,
            views,
            gr.update(minimum=1, maximum=views.steps, value=views.steps, step=1),
            gr.update(choices=views.word_choices(), value=word),
            clip_preview,
            ella_preview,
            views.query_heatmap(last, aggregation),
            views.highlighted_prompt(last, aggregation),
            views.word_maps(word, "all", last) if word else None,
            views.token_time("paper", aggregation),
            views.share_curves(aggregation),
        )

    def _check_work(self, arguments: dict) -> None:
        """Refuse a generation whose traced work is over this app's cap, saying the cap."""
        work = arguments["width"] * arguments["height"] * arguments["num_inference_steps"] * arguments["num_images"]
        if work > self.limits.max_pixel_steps:
            raise RequestTooLargeError(
                f"This request asks for {arguments['width']}x{arguments['height']} pixels x "
                f"{arguments['num_inference_steps']} steps x {arguments['num_images']} images = {work / 1e6:.1f} M "
                f"pixel-steps; this app allows {self.limits.max_pixel_steps / 1e6:.1f} M per request "
                "(--max-pixel-steps). Lower the size, the steps or the number of images."
            )

    def stop(self, request: gr.Request) -> None:
        """Stop this browser session's runs after their current step (Stop button, closed page)."""
        self.runs.stop(request.session_hash)

    @staticmethod
    def _images(result) -> tuple:
        """The first image of each side (for the pixel probe), and every image captioned."""
        everything = [(image, f"CLIP {index + 1}") for index, image in enumerate(result.clip_images)]
        everything += [(image, f"ELLA {index + 1}") for index, image in enumerate(result.ella_images)]
        return result.clip_images[0], result.ella_images[0], everything

    def _run_notes(self, result) -> str:
        timings = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.timings.items())
        lines = [f"**Seed used: {result.settings.seed}** ({result.seeding}). Timings: {timings}."]
        lines += [f"⚠️ {note}" for note in result.warnings]
        if result.random_weights:
            lines.append(f"⚠️ Random weights ({self.models.preset} preset): the images are noise.")
        return "\n\n".join(lines)

    @_reported
    def run_probe(self, prompt: str, prompt2: str = "", timesteps: float = 50, normalisation: str = "paper"):
        """Connector attention over a timestep grid for one or two prompts (no UNet); raw inputs, checked here."""
        prompt, prompt2 = _text("Prompt", prompt), _text("Second prompt", prompt2)
        count = _whole_number("Timesteps", timesteps)
        check_choice("Normalisation", normalisation, tuple(analysis.NORMALISATIONS))
        # An empty first prompt is probe()'s InputError naming the prompt; an empty second one means one prompt.
        prompts = [prompt] + ([prompt2] if prompt2.strip() else [])
        results = self._probe_on_device(prompts, count)
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

    @staticmethod
    def _step_index(views: RunViews, step) -> int:
        """The 0-based index of a 1-based step number from the scrubber."""
        number = _whole_number("Step", step)
        if not 1 <= number <= views.steps:
            raise InputError("Step", f"must be from 1 to {views.steps} for this run, got {number}.")
        return number - 1

    def _aggregation(self, block, head) -> analysis.Aggregation:
        config = self.models.ella.config
        for name, value, count in (("Connector block", block, config.layers), ("Connector head", head, config.heads)):
            allowed = ["mean", *map(str, range(count))]
            if value not in allowed:
                raise InputError(name, f"must be one of {', '.join(allowed)}, got {value!r}.")
        return parse_aggregation(block, head)

    @_reported
    def on_step(self, views, step, block, head, word, window):
        views = self._require(views)
        index = self._step_index(views, step)
        aggregation = self._aggregation(block, head)
        check_choice("Step window", window, WINDOW_CHOICES)
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

    @_reported
    def on_word(self, views, step, word, window, scale):
        views = self._require(views)
        index = self._step_index(views, step)
        check_choice("Step window", window, WINDOW_CHOICES)
        check_choice("Colour scale", scale, ("shared", "per map"))
        if not word:
            return None
        return views.word_maps(word, window, index, scale == "shared")

    @_reported
    def on_time_controls(self, views, normalisation, block, head, pieces):
        views = self._require(views)
        check_choice("Normalisation", normalisation, tuple(analysis.NORMALISATIONS))
        check_choice("Show raw T5 pieces", pieces, (True, False))
        aggregation = self._aggregation(block, head)
        if not views.has_words:
            return None, None
        return views.token_time(normalisation, aggregation, pieces), views.share_curves(aggregation)

    @_reported
    def on_select(self, views, step, window, event: gr.SelectData):
        views = self._require(views)
        index = self._step_index(views, step)
        check_choice("Step window", window, WINDOW_CHOICES)
        position = event.index
        width, height = views.result.clip_images[0].size
        if (
            not isinstance(position, list | tuple)
            or len(position) != 2
            or not all(isinstance(value, int | float) and not isinstance(value, bool) for value in position)
            or not (0 <= position[0] < width and 0 <= position[1] < height)
        ):
            raise InputError(
                "Pixel", f"must be an (x, y) position inside the {width}x{height} image, got {position!r}."
            )
        if not views.has_words:
            return "The prompt is empty, so there are no words to rank."
        return views.pixel_probe(position[0], position[1], window, index)

    @_reported
    def animation(self, views, block, head):
        views = self._require(views)
        aggregation = self._aggregation(block, head)
        trace = views.trace
        if not views.has_words:
            raise InputError("Prompt", "is empty, so the connector has no words to animate.")
        matrices = [
            analysis.query_word_matrix(trace.tsc_attention[s], trace.t5_words, aggregation)[0]
            for s in range(views.steps)
        ]
        shares, columns = analysis.word_shares(trace.tsc_attention, trace.t5_words, aggregation)
        frames = figures.animation_frames(matrices, shares, columns, trace.timesteps, max(m.max() for m in matrices))
        path = self.exports.new() / "tsc_animation.gif"
        figures.save_gif(frames, path)
        return str(path)

    @_reported
    def download(self, views):
        """A zip of the run: PNGs with settings, meta.json, trace.npz and every figure."""
        views = self._require(views)
        folder = self.exports.new()
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
    from ella_demo.dpg.browse import item_view, list_items

    if results is None:
        gr.Markdown(
            "Start the app with `--dpg-results OUT` to browse DPG-Bench results here. Produce them with "
            "`python -m ella_demo dpg generate --dpg-dir DPG --out OUT` and score each model with "
            "`python -m ella_demo dpg score --dpg-dir DPG --images OUT/ella --vqa blip --out OUT/ella/report.json`."
        )
        return
    from PIL import Image

    items = list_items(results)
    gr.Markdown(f"Results folder: `{results}`, {len(items)} prompts. Tiles are numbered row by row.")
    item = gr.Dropdown(items, value=items[0] if items else None, label="Prompt (item id)", elem_id="dpg-item")
    # The Markdown holds text from the folder's files (escaped by dpg_browse): no LaTeX either.
    prompt = gr.Markdown(latex_delimiters=[], elem_id="dpg-prompt")
    with gr.Row():
        clip_grid = gr.Image(label="SD1.5 + CLIP", format="png", interactive=False)
        ella_grid = gr.Image(label="SD1.5 + ELLA", format="png", interactive=False)
    table = gr.Markdown(latex_delimiters=[], elem_id="dpg-answers")

    def load_grid(path: str | None) -> Image.Image | None:
        # Images, not paths: Gradio serves a copy from its cache, and nothing under the results
        # folder has to be an allowed path (which would expose every file in it).
        if path is None:
            return None
        with Image.open(path) as grid:
            return grid.convert("RGB")

    @_reported
    def show(item_id: str):
        if not item_id:
            return "", None, None, ""
        view = item_view(results, item_id)
        grids = view["grids"]
        return view["prompt_markdown"], load_grid(grids.get("clip")), load_grid(grids.get("ella")), view["table"]

    # On page load (the first item is shown at once) and whenever another item is picked.
    gr.on(None, show, item, [prompt, clip_grid, ella_grid, table], api_name="dpg_item")


def build_app(
    models: LoadedModels,
    gpu_wrapper: Callable = lambda function: function,
    dpg_results: Path | None = None,
    limits: ServingLimits = ServingLimits(),
) -> gr.Blocks:
    """The Blocks app, queued within `limits`; launch it with `launch_app`."""
    ui = ExplorerUI(models, gpu_wrapper, limits)
    model_work = {"concurrency_id": MODEL_WORK, "concurrency_limit": limits.concurrency}
    rendering = {"concurrency_limit": VIEW_CONCURRENCY, "api_name": False}
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
                        steps = gr.Slider(*STEPS_RANGE, value=DEFAULT_STEPS, step=1, label="Steps", elem_id="steps")
                        guidance = gr.Slider(*GUIDANCE_RANGE, value=DEFAULT_GUIDANCE, step=0.5, label="Guidance scale")
                with gr.Row():
                    width = gr.Slider(low, high, value=default_size, step=8, label="Width")
                    height = gr.Slider(low, high, value=default_size, step=8, label="Height")
                    scheduler = gr.Dropdown(list(SCHEDULER_NAMES), value="dpm++", label="Scheduler")
                    images = gr.Slider(*IMAGES_RANGE, value=1, step=1, label="Images per side")
                    mode = gr.Radio(list(MODES), value="ella", label="ELLA mode")
                    t5_length = gr.Radio(["flexible", "128"], value="flexible", label="T5 length")
                    seeding = gr.Radio(
                        [("CPU generator", "cpu"), ("official demo", "official")],
                        value="cpu",
                        label="Seeding",
                        info="CPU: same images on any device. Official: as the ELLA demo, seed+i per image.",
                    )
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate", scale=4)
                    stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1)
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

                inputs = [
                    prompt, negative, seed, steps, guidance, width, height, scheduler, images, mode, t5_length, seeding
                ]  # fmt: skip
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
                # Raw inputs (preprocess=False): run_generate checks each value and names it.
                generation = {"fn": ui.run_generate, "inputs": inputs, "outputs": outputs, "preprocess": False}
                run.click(**generation, api_name="generate", **model_work)
                prompt.submit(**generation, api_name=False, **model_work)
                stop.click(ui.stop, None, None, queue=False, api_name="stop")  # the run reports where it stopped
                app.unload(ui.stop)  # a closed page stops its runs too
                randomise.click(lambda: random.randint(*SEED_RANGE), None, seed, **rendering)
                step_inputs = [session, step, block, head, word, window]
                step_outputs = [clip_preview, ella_preview, query_map, highlighted, word_maps]
                time_controls = {"fn": ui.on_time_controls, "inputs": [session, normalisation, block, head, pieces]}
                step.input(ui.on_step, step_inputs, step_outputs, trigger_mode="always_last", **rendering)
                for control in (block, head):
                    control.input(ui.on_step, step_inputs, step_outputs, **rendering)
                    control.input(**time_controls, outputs=[token_time, curves], **rendering)
                for control in (word, window, scale):
                    control.input(ui.on_word, [session, step, word, window, scale], word_maps, **rendering)
                for control in (normalisation, pieces):
                    control.input(**time_controls, outputs=[token_time, curves], **rendering)
                for image in (clip_image, ella_image):
                    image.select(ui.on_select, [session, step, window], probe_text, **rendering)
                animate.click(ui.animation, [session, block, head], files, **rendering)
                download.click(ui.download, [session], files, **rendering)

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
                    preprocess=False,
                    **model_work,
                )

            with gr.Tab("DPG-Bench"):
                _dpg_tab(dpg_results)

            with gr.Tab("About"):
                gr.Markdown(ABOUT)
    app.queue(max_size=limits.max_queue)
    return app


@functools.cache
def _glibc():
    """The C library where it is glibc (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas so the server's memory plateaus; False where there is no glibc.

    glibc gives each thread its own arena (up to 8 per core), and Gradio serves requests from a pool
    of worker threads: freed trace buffers stay scattered over many arenas and RSS creeps up with
    every session (README, "Serving memory").
    """
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def release_freed_memory() -> None:
    """Hand memory freed by dropped traces back to the system (glibc keeps it otherwise)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def launch_app(
    app: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    limits: ServingLimits = ServingLimits(),
    **options,
):
    """Serve the app. Binds to this machine only and opens no share link unless told otherwise."""
    limit_malloc_arenas()
    return app.launch(
        server_name=host,
        server_port=port,
        share=share,
        ssr_mode=False,
        max_file_size=limits.max_file_size,
        state_session_capacity=limits.max_sessions,
        **options,
    )
