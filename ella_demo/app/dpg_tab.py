"""The DPG-Bench tab: browse a results folder chosen at launch (never a path typed in the browser)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from PIL import Image

from ella_demo.app.checks import reported
from ella_demo.dpg.browse import item_view, list_items

NO_RESULTS = (
    "Start the app with `--dpg-results OUT` to browse DPG-Bench results here. Produce them with "
    "`python -m ella_demo dpg generate --dpg-dir DPG --out OUT` and score each model with "
    "`python -m ella_demo dpg score --dpg-dir DPG --images OUT/ella --vqa blip --out OUT/ella/report.json`."
)


def _load_grid(path: str | None) -> Image.Image | None:
    """A grid as an image, not a path: Gradio serves a copy from its cache, and nothing under the
    results folder has to be an allowed path (which would expose every file in it)."""
    if path is None:
        return None
    with Image.open(path) as grid:
        return grid.convert("RGB")


def dpg_tab(results: Path | None) -> None:
    """The tab's contents: an item picker, its prompt, both models' grids and the VQA answers."""
    if results is None:
        gr.Markdown(NO_RESULTS)
        return
    items = list_items(results)
    gr.Markdown(f"Results folder: `{results}`, {len(items)} prompts. Tiles are numbered row by row.")
    item = gr.Dropdown(items, value=items[0] if items else None, label="Prompt (item id)", elem_id="dpg-item")
    # The Markdown holds text from the folder's files (escaped by dpg_browse): no LaTeX either.
    prompt = gr.Markdown(latex_delimiters=[], elem_id="dpg-prompt")
    with gr.Row():
        clip_grid = gr.Image(label="SD1.5 + CLIP", format="png", interactive=False)
        ella_grid = gr.Image(label="SD1.5 + ELLA", format="png", interactive=False)
    table = gr.Markdown(latex_delimiters=[], elem_id="dpg-answers")

    @reported
    def show(item_id: str):
        if not item_id:
            return "", None, None, ""
        view = item_view(results, item_id)
        grids = view["grids"]
        return view["prompt_markdown"], _load_grid(grids.get("clip")), _load_grid(grids.get("ella")), view["table"]

    # On page load (the first item is shown at once) and whenever another item is picked.
    gr.on(None, show, item, [prompt, clip_grid, ella_grid, table], api_name="dpg_item")
