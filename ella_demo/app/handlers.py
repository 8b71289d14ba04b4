"""The app's handlers, bound to one set of loaded models.

Model work happens only in `run_generate` and `run_probe` (`gpu_wrapper` lets a Space put it on
ZeroGPU); every other handler re-renders from the session's cached trace. A handler that updates
several outputs returns them by name ({"notes": ..., "step": ...}); the layout maps the names to
its components, and an output left out of the dict is not updated.
"""

from __future__ import annotations

import functools
import shutil
import zipfile
from collections.abc import Callable

import gradio as gr
from PIL import Image

from ella_demo.app import checks
from ella_demo.app.checks import reported
from ella_demo.app.serving import ExportFolders, RunRegistry, ServingLimits, release_freed_memory
from ella_demo.core.engine import generate
from ella_demo.core.errors import ExplorerError, GenerationCancelledError, InputError
from ella_demo.core.models import LoadedModels
from ella_demo.core.probe import probe
from ella_demo.core.results import GenerationResult
from ella_demo.core.settings import DEFAULT_STEPS, check_choice, default_guidance
from ella_demo.inspect import figures
from ella_demo.inspect.connector_attention import NORMALISATIONS, Aggregation
from ella_demo.inspect.outputs import write_run
from ella_demo.inspect.report import write_trace_figures
from ella_demo.inspect.views import WINDOW_CHOICES, ConnectorViews, RunViews, compare_probes, parse_aggregation

# Pictures smaller than this (the pocket world's 64 px) are shown enlarged by a whole factor, pixel for pixel;
# a click on them is mapped back to the picture's own pixels.
DISPLAY_SIDE = 256


def display_factor(image: Image.Image) -> int:
    """The whole factor a picture is shown enlarged by (1 for pictures of DISPLAY_SIDE or more)."""
    return max(1, DISPLAY_SIDE // max(image.size))


def for_display(image: Image.Image) -> Image.Image:
    """The picture as the app shows it: enlarged by `display_factor` with nearest-neighbour sampling."""
    factor = display_factor(image)
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def by_name(handler: Callable, parts: dict[str, gr.components.Component]) -> Callable:
    """`handler`, with its {output name: value} returned as Gradio's {component: value}."""

    @functools.wraps(handler)
    def to_components(*args, **kwargs):
        return {parts[name]: value for name, value in handler(*args, **kwargs).items()}

    return to_components


class RequestTooLargeError(ExplorerError):
    """A generation asks for more traced work than this app allows."""


class ExplorerUI:
    """Handlers bound to one set of loaded models."""

    def __init__(
        self,
        models: LoadedModels,
        gpu_wrapper: Callable = lambda function: function,
        limits: ServingLimits = ServingLimits(),  # noqa: B008 - a frozen dataclass
    ):
        self.models = models
        self.limits = limits
        self.runs = RunRegistry()
        self.exports = ExportFolders()
        self.gpu_wrapper = gpu_wrapper  # other tabs' model work goes through it too (learn_tab.py)
        self._generate_on_device = gpu_wrapper(self._generate_on_device)
        self._probe_on_device = gpu_wrapper(self._probe_on_device)

    # --- model work --------------------------------------------------------------------------

    def _generate_on_device(self, arguments: dict, run: int, progress: gr.Progress):
        def after_step(done: int, total: int) -> None:
            if self.runs.is_stopped(run):
                raise GenerationCancelledError(done, total)
            progress((done, total), unit="steps")

        return generate(self.models, trace=True, progress=after_step, **arguments)

    def _probe_on_device(self, prompts: list[str], timesteps: int):
        return [probe(self.models, prompt, timesteps) for prompt in prompts]

    @reported
    def run_generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        seed: float = 0,
        steps: float = DEFAULT_STEPS,
        guidance_scale: float | None = None,
        width: float | None = None,
        height: float | None = None,
        scheduler: str = "dpm++",
        num_images: float = 1,
        mode: str = "ella",
        t5_length: str = "flexible",
        seeding: str = "cpu",
        lora_weights: dict | None = None,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - Gradio injects progress through this default
    ) -> dict:
        """Generate with both models; the images, the run notes and the first views, by output name.

        Inputs arrive as the client sent them; every one is checked here (see `checks`). A width or
        height of None is the model's native size, the size sliders' starting value; a guidance_scale of
        None the preset's default (`default_guidance`). `lora_weights` maps start-up LoRAs to this run's weight
        (None: their start-up weights). A stopped run updates the notes alone.
        """
        native = self.models.native_size
        guidance = default_guidance(self.models.preset) if guidance_scale is None else guidance_scale
        arguments = {
            "prompt": checks.text("prompt", prompt),
            "negative_prompt": checks.text("negative_prompt", negative_prompt),
            "seed": checks.whole_number("seed", seed),
            "num_inference_steps": checks.whole_number("num_inference_steps", steps),
            "guidance_scale": checks.number("guidance_scale", guidance),
            "width": checks.whole_number("width", native if width is None else width),
            "height": checks.whole_number("height", native if height is None else height),
            "scheduler": scheduler,
            "num_images": checks.whole_number("num_images", num_images),
            "mode": mode,
            "t5_length": checks.t5_length(t5_length),
            "seeding": seeding,
            "loras": checks.lora_weights(lora_weights),
        }
        self._check_work(arguments)
        session = request.session_hash if request is not None else ""
        try:
            with self.runs.running(session) as run:
                result = self._generate_on_device(arguments, run, progress)
        except GenerationCancelledError as stopped:
            return {"notes": f"⏹️ {stopped}"}
        for note in result.warnings:
            gr.Warning(note)
        release_freed_memory()  # the session's previous run (or an evicted session's) is garbage now
        return self._first_views(result)

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

    def _first_views(self, result: GenerationResult) -> dict:
        """A new run's outputs: its images, notes and trace, and every view at its last step."""
        views = RunViews(result)
        notes = self._run_notes(result)
        word, choices = None, []
        if views.has_words:
            word, choices = views.default_word(), views.word_choices()
        else:
            notes += "\n\nThe prompt is empty, so there are no words to analyse."
        everything = [(image, f"CLIP {index + 1}") for index, image in enumerate(result.clip_images)]
        everything += [(image, f"ELLA {index + 1}") for index, image in enumerate(result.ella_images)]
        aggregation = Aggregation()
        return {
            # The first image of each side, for the pixel probe; small ones enlarged pixel for pixel.
            "clip_image": for_display(result.clip_images[0]),
            "ella_image": for_display(result.ella_images[0]),
            "gallery": everything,
            "notes": notes,
            "session": views,
            # A slider needs maximum > minimum: a one-step run shows 1..2 and cannot be scrubbed.
            "step": gr.update(
                minimum=1, maximum=max(views.steps, 2), value=views.steps, step=1, interactive=views.steps > 1
            ),
            "word": gr.update(choices=choices, value=word),
            **self._step_views(views, views.steps - 1, aggregation, word, "all"),
            **self._time_views(views, "paper", aggregation, False),
        }

    def _run_notes(self, result: GenerationResult) -> str:
        timings = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.timings.items())
        lines = [f"**Seed used: {result.settings.seed}** ({result.seeding}). Timings: {timings}."]
        if result.settings.loras:
            live = [f"`{name}` at {weight:g}" for name, weight in result.settings.loras if weight]
            lines.append(f"LoRAs in this run: {', '.join(live) or 'none (every weight 0)'}.")
        lines += [f"⚠️ {note}" for note in result.warnings]
        if result.random_weights:
            lines.append(f"⚠️ Random weights ({self.models.preset} preset): the images are noise.")
        return "\n\n".join(lines)

    def stop(self, request: gr.Request) -> None:
        """Stop this browser session's runs after their current step (Stop button, closed page)."""
        self.runs.stop(request.session_hash)

    @reported
    def run_probe(self, prompt: str, prompt2: str = "", timesteps: float = 50, normalisation: str = "paper"):
        """Connector attention over a timestep grid for one or two prompts (no UNet); raw inputs, checked here.

        Returns the first prompt's token x timestep map, its word-share curves, and both prompts'
        maps side by side (None for one prompt).
        """
        prompt, prompt2 = checks.text("Prompt", prompt), checks.text("Second prompt", prompt2)
        count = checks.whole_number("Timesteps", timesteps)
        check_choice("Normalisation", normalisation, tuple(NORMALISATIONS))
        # An empty first prompt is probe()'s InputError naming the prompt; an empty second one means one prompt.
        prompts = [prompt] + ([prompt2] if prompt2.strip() else [])
        probed = [ConnectorViews.of_probe(result) for result in self._probe_on_device(prompts, count)]
        first = probed[0].token_time(normalisation, title=f"ELLA connector: {prompts[0][:60]}")
        comparison = compare_probes(*probed, normalisation) if len(probed) == 2 else None
        return first, probed[0].share_curves(), comparison

    # --- re-rendering from the cached trace ----------------------------------------------------

    @staticmethod
    def _require(views: RunViews | None) -> RunViews:
        if views is None:
            raise gr.Error("Generate an image pair first: the views are drawn from its trace.")
        return views

    @staticmethod
    def _step_index(views: RunViews, step) -> int:
        """The 0-based index of a 1-based step number from the scrubber."""
        number = checks.whole_number("Step", step)
        if not 1 <= number <= views.steps:
            raise InputError("Step", f"must be from 1 to {views.steps} for this run, got {number}.")
        return number - 1

    def _aggregation(self, block, head) -> Aggregation:
        config = self.models.ella.config
        for name, value, count in (("Connector block", block, config.layers), ("Connector head", head, config.heads)):
            allowed = ["mean", *map(str, range(count))]
            if value not in allowed:
                raise InputError(name, f"must be one of {', '.join(allowed)}, got {value!r}.")
        return parse_aggregation(block, head)

    @staticmethod
    def _step_views(views: RunViews, index: int, aggregation: Aggregation, word: str | None, window: str) -> dict:
        """The views of one step: both x0 previews, the connector at that step, and the word's maps."""
        clip_preview, ella_preview = views.previews(index)
        shown = {"clip_preview": clip_preview, "ella_preview": ella_preview}
        if not views.has_words:
            return {**shown, "query_map": None, "highlighted": [], "word_maps": None}
        return {
            **shown,
            "query_map": views.query_heatmap(index, aggregation),
            "highlighted": views.highlighted_prompt(index, aggregation),
            "word_maps": views.word_maps(word, window, index) if word else None,
        }

    @staticmethod
    def _time_views(views: RunViews, normalisation: str, aggregation: Aggregation, pieces: bool) -> dict:
        """The views over all steps: the token x timestep map and the word-share curves."""
        if not views.has_words:
            return {"token_time": None, "curves": None}
        return {
            "token_time": views.token_time(normalisation, aggregation, pieces),
            "curves": views.share_curves(aggregation),
        }

    @reported
    def on_step(self, views, step, block, head, word, window) -> dict:
        views = self._require(views)
        index = self._step_index(views, step)
        aggregation = self._aggregation(block, head)
        check_choice("Step window", window, WINDOW_CHOICES)
        return self._step_views(views, index, aggregation, word, window)

    @reported
    def on_word(self, views, step, word, window, scale):
        views = self._require(views)
        index = self._step_index(views, step)
        check_choice("Step window", window, WINDOW_CHOICES)
        check_choice("Colour scale", scale, ("shared", "per map"))
        if not word:
            return None
        return views.word_maps(word, window, index, scale == "shared")

    @reported
    def on_time_controls(self, views, normalisation, block, head, pieces) -> dict:
        views = self._require(views)
        check_choice("Normalisation", normalisation, tuple(NORMALISATIONS))
        check_choice("Show raw T5 pieces", pieces, (True, False))
        return self._time_views(views, normalisation, self._aggregation(block, head), pieces)

    @reported
    def on_select(self, views, step, window, event: gr.SelectData):
        views = self._require(views)
        index = self._step_index(views, step)
        check_choice("Step window", window, WINDOW_CHOICES)
        position = event.index
        shown = views.result.clip_images[0]
        factor = display_factor(shown)
        width, height = shown.width * factor, shown.height * factor
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
        return views.pixel_probe(position[0] / factor, position[1] / factor, window, index)

    @reported
    def animation(self, views, block, head):
        views = self._require(views)
        aggregation = self._aggregation(block, head)
        if not views.has_words:
            raise InputError("Prompt", "is empty, so the connector has no words to animate.")
        path = self.exports.new() / "tsc_animation.gif"
        figures.save_gif(views.animation_frames(aggregation), path)
        return str(path)

    @reported
    def download(self, views):
        """A zip of the run: PNGs with settings, meta.json, trace.npz and every figure."""
        views = self._require(views)
        folder = self.exports.new()
        run_dir = folder / "run"
        write_run(views.result, run_dir)
        write_trace_figures(views.result, run_dir / "figures")
        archive = folder / f"ella_run_seed{views.result.settings.seed}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in sorted(run_dir.rglob("*")):
                if path.is_file():
                    bundle.write(path, path.relative_to(run_dir).as_posix())
        shutil.rmtree(run_dir)
        return str(archive)
