"""The Learn tab's handlers: run a lesson (model work), open a block of the pieces diagram, download a handout.

A session's last lesson lives in its gr.State; a lesson's work is capped like a generation's (`LESSON_WORK`).
"""

from __future__ import annotations

import shutil
import zipfile

import gradio as gr

from ella_demo.app import checks
from ella_demo.app.checks import reported
from ella_demo.app.handlers import ExplorerUI, RequestTooLargeError
from ella_demo.core.errors import GenerationCancelledError, InputError
from ella_demo.core.settings import check_choice
from ella_demo.core.text_encoding import PromptTokens
from ella_demo.inspect.figures import to_image
from ella_demo.inspect.lesson_figures import PIPELINE_BLOCKS, image_grid_figure
from ella_demo.learn import LESSONS, LessonOptions, LessonResult, run_lesson
from ella_demo.learn.handout import markdown, write_handout
from ella_demo.learn.pieces import BLOCK_VIEWS

# A lesson may ask for this many times the work one traced generation may: its images are untraced but many
# (the pieces lesson traces one); the connector-only probes are not counted.
LESSON_WORK = 4
MAX_FIGURES = 3  # the most figures a lesson makes; the tab has an image slot for each


class LearnUI:
    """The Learn tab's handlers, sharing the Compare tab's models, limits, run registry and export folders."""

    def __init__(self, explorer: ExplorerUI):
        self.explorer = explorer
        self._run_on_device = explorer.gpu_wrapper(self._run_on_device)

    def _run_on_device(self, name: str, options: LessonOptions, run: int, progress: gr.Progress) -> LessonResult:
        def after_step(done: float, total: int) -> None:
            if self.explorer.runs.is_stopped(run):
                raise GenerationCancelledError(done, total)
            progress((done, total), unit="images")

        return run_lesson(self.explorer.models, name, options, after_step)

    @reported
    def run(self, lesson, prompt="", second_prompt="", seed=0, seeds=4, steps=25, request: gr.Request = None,
            progress: gr.Progress = gr.Progress()) -> dict:  # noqa: B008 - Gradio injects progress this way  # fmt: skip
        """Run `lesson` (a LESSONS name): its "page" (Markdown), "figure_I", the session's "lesson_state", "shapes_KEY".

        Empty prompts are the lesson's examples. Inputs arrive raw and are checked here, under their UI labels.
        """
        check_choice("lesson", lesson, tuple(LESSONS))
        options = LessonOptions(
            checks.text("prompt", prompt) or None,
            checks.text("second prompt", second_prompt) or None,
            checks.whole_number("seed", seed),
            checks.whole_number("seeds", seeds),
            checks.whole_number("steps", steps),
        ).checked()
        self._check_work(lesson, options)
        session = request.session_hash if request is not None else ""
        try:
            with self.explorer.runs.running(session) as run:
                result = self._run_on_device(lesson, options, run, progress)
        except GenerationCancelledError as stopped:
            return {"page": f"⏹️ Stopped after {stopped.step:.1f} of {stopped.total} images.", "lesson_state": None,
                    **_figure_slots(None), **self._block_labels(None)}  # fmt: skip
        return {
            "page": self._page(result),
            "lesson_state": result,
            **_figure_slots(result),
            **self._block_labels(result),
        }

    def _check_work(self, name: str, options: LessonOptions) -> None:
        side = self.explorer.models.native_size
        images = LESSONS[name].module.images(options)
        work, cap = side * side * options.steps * images, LESSON_WORK * self.explorer.limits.max_pixel_steps
        if work > cap:
            raise RequestTooLargeError(
                f"This lesson asks for {images} images of {side}x{side} pixels x {options.steps} steps = "
                f"{work / 1e6:.0f} M pixel-steps; this app allows {cap / 1e6:.0f} M per lesson. Lower the seeds or "
                "the steps."
            )

    def _page(self, result: LessonResult) -> str:
        page = markdown(result).split("\n![", 1)[0]  # the figures have their own image slots below
        random = self.explorer.models.random_weights
        warning = (
            f"⚠️ Random weights ({self.explorer.models.preset} preset): the images are noise.\n\n" if random else ""
        )
        return warning + page

    @staticmethod
    def _block_labels(result: LessonResult | None) -> dict[str, str]:
        """Under each block of the diagram ("shapes_KEY"), this run's shapes (the pieces lesson; else nothing)."""
        shapes = result.numbers.get("shapes", {}) if result is not None and result.name == "pieces" else {}
        return {f"shapes_{key}": "<br>".join(f"`{line}`" for line in shapes.get(key, "").splitlines())
                for key in BLOCK_VIEWS}  # fmt: skip

    @reported
    def open_block(self, result: LessonResult | None, block: str) -> dict:
        """The view a block of the diagram opens, from the session's pieces lesson: "block_text", "block_image"."""
        check_choice("block", block, tuple(BLOCK_VIEWS))
        if result is None or result.run is None:
            raise InputError("block", "opens a view of the pieces lesson's run: run that lesson first.")
        run, view = result.run, BLOCK_VIEWS[block]
        if view == "tokens":
            text = "\n\n".join(_token_line(name, tokens) for name, tokens in run.prompt_tokens.items())
            return {"block_text": text, "block_image": gr.update(value=None, visible=False)}
        if view == "pictures":
            grid = image_grid_figure([[run.clip_images[0], run.ella_images[0]]], [f"seed {run.settings.seed}"],
                                     ["CLIP", "ELLA"], "What the VAE decoded, both sides")  # fmt: skip
            text, image = f"The decoded pictures, {run.clip_images[0].width} px.", to_image(grid)
        else:
            image = result.figures.get("connector_queries" if view == "connector queries" else "word_maps")
            text = f"**{view.capitalize()}** at the last step of the run." if image else "The prompt has no words."
        return {"block_text": text, "block_image": gr.update(value=image, visible=image is not None)}

    @reported
    def download(self, result: LessonResult | None) -> str:
        """A zip of the session's lesson: its figures, numbers.json and README.md."""
        if result is None:
            raise gr.Error("Run a lesson first: the download holds its figures, numbers and page.")
        folder = self.explorer.exports.new()
        paths = write_handout(result, folder / result.name)
        archive = folder / f"lesson_{result.name}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in paths:
                bundle.write(path, f"{result.name}/{path.name}")
        shutil.rmtree(folder / result.name)  # the zip is what is served
        return str(archive)


def _figure_slots(result: LessonResult | None) -> dict:
    """The tab's MAX_FIGURES image slots ("figure_I"): the lesson's figures in order, then None."""
    figures = list(result.figures.values()) if result is not None else []
    return {f"figure_{index}": figures[index] if index < len(figures) else None for index in range(MAX_FIGURES)}


def figure_labels(result: LessonResult | None) -> dict:
    """The slots' labels and visibility ("figure_I") for the session's lesson (a UI-only step after the run)."""
    names = list(result.figures) if result is not None else []
    return {f"figure_{index}": gr.update(label=names[index].replace("_", " "), visible=True) if index < len(names)
            else gr.update(visible=False) for index in range(MAX_FIGURES)}  # fmt: skip


def _token_line(encoder: str, tokens: PromptTokens) -> str:
    """One encoder's tokens as Markdown code spans: the prompt's own listed, the special ones (start, end,
    padding: the words the encoder marked `is_special`) counted."""
    text = [tokens.tokens[index] for word in tokens.words if not word.is_special for index in word.token_indices]
    special = len(tokens.tokens) - len(text)
    name = "CLIP" if encoder == "clip" else "The language model"
    listed = " ".join(f"`{token}`" for token in text)
    return f"**{name}** read {len(tokens.tokens)} tokens: {listed}" + (
        f" and {special} start, end or padding tokens." if special else "."
    )


# The diagram's buttons: the pipeline figure's block titles, capitalised.
BLOCK_TITLES = {key: title[0].upper() + title[1:] for key, (_, title) in PIPELINE_BLOCKS.items()}
