"""The Learn tab: pick a lesson, run it in one click, read what to look for and the numbers that back it.

The pieces lesson draws the pipeline as a row of buttons labelled with the run's live shapes; each opens its
view of the run (tokens, connector queries, word maps, pictures).
"""

from __future__ import annotations

import gradio as gr

from ella_demo.app.learn_handlers import BLOCK_TITLES, MAX_FIGURES, LearnUI, figure_labels
from ella_demo.app.serving import VIEW_CONCURRENCY, ServingLimits, model_work
from ella_demo.core.models import LoadedModels
from ella_demo.core.settings import DEFAULT_STEPS, SEED_RANGE
from ella_demo.learn import LESSONS
from ella_demo.learn.base import SEEDS_RANGE, STEPS_RANGE
from ella_demo.learn.pieces import BLOCK_VIEWS

INTRO = (
    "Short experiments, one click each. Every lesson says what to look for and shows the numbers behind it: "
    "measured by the pocket world's detector on the `pocket` preset, cited from the paper (and labelled so) "
    "elsewhere. The same lessons run from the command line (`python -m ella_demo learn NAME`) and the API "
    "(`/learn`)."
)
# The diagram's rows: the language-model path above, the CLIP path below; the UNet and VAE close both.
DIAGRAM_ROWS = (("prompt", "t5", "connector", "unet", "vae"), ("clip",))


def _lesson_note(name: str, preset: str) -> str:
    lesson = LESSONS[name]
    examples = " / ".join(f"*{example}*" for example in lesson.examples(preset))
    return f"**{lesson.title}.** {lesson.summary}\n\nExample prompts on this preset: {examples}"


def _second_prompt(name: str) -> dict:
    """The second prompt box's settings for lesson `name`: shown, with the lesson's label, only if it reads one."""
    label = LESSONS[name].second_prompt
    return {"visible": label is not None, "label": label or "Second prompt", "value": ""}


def _diagram() -> tuple[gr.Group, dict[str, gr.Button], dict[str, gr.Markdown], gr.Markdown, gr.Image]:
    """The pieces lesson's diagram: per block a button (its title) over its shapes; where the opened view shows."""
    buttons, shapes = {}, {}
    with gr.Group(visible=True) as group:
        gr.Markdown("**The pipeline.** Run the lesson to see this run's tensor shapes; click a block to open its view.")
        for number, row in enumerate(DIAGRAM_ROWS):
            with gr.Row(equal_height=True):
                for index, key in enumerate(row):
                    if index or number:
                        gr.Markdown(ARROWS[number], min_height=0, container=False)
                    with gr.Column(scale=3, min_width=120):
                        buttons[key] = gr.Button(BLOCK_TITLES[key], size="sm", elem_id=f"block-{key}")
                        shapes[key] = gr.Markdown("", elem_id=f"shapes-{key}")
                if number:
                    gr.Markdown(ARROWS[2], container=False)
        block_text = gr.Markdown(elem_id="block-text")
        block_image = gr.Image(label="Block view", format="png", interactive=False, visible=False)
    return group, buttons, shapes, block_text, block_image


# Between blocks of the top row; before CLIP (from the prompt); after CLIP (into the UNet).
ARROWS = ("### ➜", "### ↳", "↗ **into the UNet**, in place of the connector's tokens")


def learn_tab(ui: LearnUI, models: LoadedModels, limits: ServingLimits) -> None:
    """Lay out the tab and wire its events."""
    gr.Markdown(INTRO)
    first = next(iter(LESSONS))
    lesson = gr.Radio([(item.title, name) for name, item in LESSONS.items()], value=first, label="Lesson",
                      elem_id="lesson")  # fmt: skip
    note = gr.Markdown(_lesson_note(first, models.preset))
    with gr.Row():
        prompt = gr.Textbox("", label="Prompt (empty: the lesson's example)", lines=2, elem_id="lesson-prompt")
        second = gr.Textbox(lines=2, elem_id="lesson-second-prompt", **_second_prompt(first))
    with gr.Row():
        seed = gr.Number(label="Seed", value=0, precision=0, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1])
        seeds = gr.Slider(*SEEDS_RANGE, value=4, step=1, label="Seeds per measurement")
        steps = gr.Slider(*STEPS_RANGE, value=DEFAULT_STEPS, step=1, label="Steps")
    with gr.Row():
        run = gr.Button("Run lesson", variant="primary", elem_id="run-lesson", scale=4)
        stop = gr.Button("Stop", variant="stop", scale=1)
    page = gr.Markdown(elem_id="lesson-page")
    diagram, buttons, shapes, block_text, block_image = _diagram()
    with gr.Column(elem_id="lesson-figures"):
        figures = [gr.Image(format="png", interactive=False, visible=False) for _ in range(MAX_FIGURES)]
    with gr.Row():
        download = gr.Button("Download this lesson (zip)")
        files = gr.File(label="Handout")
    state = gr.State(None, time_to_live=3600)

    def on_lesson(name: str) -> list:
        """Another lesson: its note and second prompt; the last lesson's page and figures are cleared."""
        cleared = [gr.update(value=None, visible=False)] * len(figures)
        return [_lesson_note(name, models.preset), gr.update(**_second_prompt(name)),
                gr.update(visible=name == "pieces"), "", *cleared]  # fmt: skip

    lesson.change(on_lesson, lesson, [note, second, diagram, page, *figures], api_name=False)
    labelled = [shapes[key] for key in BLOCK_VIEWS]  # in the order ui.run returns the shapes
    ran = run.click(ui.run, [lesson, prompt, second, seed, seeds, steps], [page, *figures, state, *labelled],
                    api_name="learn", preprocess=False, **model_work(limits))  # fmt: skip
    ran.then(figure_labels, state, figures, api_name=False, concurrency_limit=VIEW_CONCURRENCY)
    stop.click(ui.explorer.stop, None, None, api_name=False, concurrency_limit=None)
    for key, button in buttons.items():
        button.click(lambda result, key=key: ui.open_block(result, key), state, [block_text, block_image],
                     api_name=False, concurrency_limit=VIEW_CONCURRENCY)  # fmt: skip
    download.click(ui.download, state, files, api_name=False, concurrency_limit=VIEW_CONCURRENCY)
