"""The Learn tab: pick a lesson, run it in one click, read what to look for and the numbers that back it.

The pieces lesson draws the pipeline as a row of buttons labelled with the run's live shapes; each opens its
view of the run (tokens, connector queries, word maps, pictures).
"""

from __future__ import annotations

import functools

import gradio as gr

from ella_demo.app.handlers import by_name
from ella_demo.app.learn_handlers import BLOCK_TITLES, MAX_FIGURES, LearnUI, figure_labels
from ella_demo.app.serving import SESSION_TTL_S, VIEW_CONCURRENCY, ServingLimits, model_work
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


def _controls(models: LoadedModels) -> dict[str, gr.components.Component]:
    """The lesson picker, its note, the prompts, seeds and steps, and the Run and Stop buttons."""
    first = next(iter(LESSONS))
    parts = {
        "lesson": gr.Radio([(item.title, name) for name, item in LESSONS.items()], value=first, label="Lesson",
                           elem_id="lesson"),
        "note": gr.Markdown(_lesson_note(first, models.preset)),
    }  # fmt: skip
    with gr.Row():
        parts["prompt"] = gr.Textbox("", label="Prompt (empty: the lesson's example)", lines=2, elem_id="lesson-prompt")
        parts["second_prompt"] = gr.Textbox(lines=2, elem_id="lesson-second-prompt", **_second_prompt(first))
    with gr.Row():
        parts["seed"] = gr.Number(label="Seed", value=0, precision=0, minimum=SEED_RANGE[0], maximum=SEED_RANGE[1])
        parts["seeds"] = gr.Slider(*SEEDS_RANGE, value=4, step=1, label="Seeds per measurement")
        parts["steps"] = gr.Slider(*STEPS_RANGE, value=DEFAULT_STEPS, step=1, label="Steps")
    with gr.Row():
        parts["run"] = gr.Button("Run lesson", variant="primary", elem_id="run-lesson", scale=4)
        parts["stop"] = gr.Button("Stop", variant="stop", scale=1)
    return parts


def _results() -> dict[str, gr.components.Component]:
    """What a lesson shows: its page, the pieces diagram, a slot per figure, the handout download."""
    parts = {"page": gr.Markdown(elem_id="lesson-page")}
    parts["diagram"], buttons, shapes, parts["block_text"], parts["block_image"] = _diagram()
    parts |= {f"button_{key}": button for key, button in buttons.items()}
    parts |= {f"shapes_{key}": markdown for key, markdown in shapes.items()}
    with gr.Column(elem_id="lesson-figures"):
        parts |= {f"figure_{index}": gr.Image(format="png", interactive=False, visible=False)
                  for index in range(MAX_FIGURES)}  # fmt: skip
    with gr.Row():
        parts["download"] = gr.Button("Download this lesson (zip)")
        parts["files"] = gr.File(label="Handout")
    parts["lesson_state"] = gr.State(None, time_to_live=SESSION_TTL_S)
    return parts


# What the /learn endpoint returns, in this order (the session's lesson is not part of its API).
FIGURE_SLOTS = tuple(f"figure_{index}" for index in range(MAX_FIGURES))
LEARN_OUTPUTS = ("page", *FIGURE_SLOTS, "lesson_state", *(f"shapes_{key}" for key in BLOCK_VIEWS))
LEARN_INPUTS = ("lesson", "prompt", "second_prompt", "seed", "seeds", "steps")


def learn_tab(ui: LearnUI, models: LoadedModels, limits: ServingLimits) -> None:
    """Lay out the tab and wire its events."""
    gr.Markdown(INTRO)
    parts = {**_controls(models), **_results()}

    def components(*names: str) -> list[gr.components.Component]:
        return [parts[name] for name in names]

    def on_lesson(name: str) -> dict:
        """Another lesson: its note and second prompt; the last lesson (page, figures, download, views) is cleared."""
        return {"note": _lesson_note(name, models.preset), "second_prompt": gr.update(**_second_prompt(name)),
                "diagram": gr.update(visible=name == "pieces"), "page": "", "lesson_state": None,
                "block_text": "", "block_image": gr.update(value=None, visible=False), "files": None,
                **{slot: gr.update(value=None, visible=False) for slot in FIGURE_SLOTS},
                **{f"shapes_{key}": "" for key in BLOCK_VIEWS}}  # fmt: skip

    cleared = components("note", "second_prompt", "diagram", "page", "lesson_state", "block_text", "block_image",
                         "files", *FIGURE_SLOTS, *(f"shapes_{key}" for key in BLOCK_VIEWS))  # fmt: skip
    parts["lesson"].change(by_name(on_lesson, parts), parts["lesson"], cleared, api_name=False)
    ran = parts["run"].click(by_name(ui.run, parts), components(*LEARN_INPUTS), components(*LEARN_OUTPUTS),
                             api_name="learn", preprocess=False, **model_work(limits))  # fmt: skip
    views = {"api_name": False, "concurrency_limit": VIEW_CONCURRENCY}
    ran.then(by_name(figure_labels, parts), parts["lesson_state"], components(*FIGURE_SLOTS), **views)
    parts["stop"].click(ui.explorer.stop, None, None, api_name=False, concurrency_limit=None)
    for key in BLOCK_VIEWS:
        opener = by_name(functools.partial(ui.open_block, block=key), parts)
        parts[f"button_{key}"].click(opener, parts["lesson_state"], components("block_text", "block_image"), **views)
    parts["download"].click(ui.download, parts["lesson_state"], parts["files"], **views)
