"""Browsing a DPG-Bench results folder: which items it has, and one item's grids and answers.

The folder is fixed when the app starts (`--dpg-results`); nothing here takes a path from the
browser, and item ids are checked against the folder's own listing. Text read from the folder's
files (prompts, questions, answers) is escaped before it goes into Markdown (`markdown_text`).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from ella_demo.core.errors import InputError
from ella_demo.dpg.generation import MODEL_NAMES, PROMPTS_FILE

# Characters that mean something inside a line of (GitHub-flavoured) Markdown: emphasis, code,
# links, strike-through, table cells, and the backslash itself. Line-start syntax (#, -, 1.) cannot
# occur: text is put mid-line and its line breaks are flattened.
_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]|~])")


def markdown_text(text: object) -> str:
    """`text` shown literally in Markdown, on one line: no HTML, no formatting, no table cell breaks."""
    flat = " ".join(str(text).splitlines())
    return html.escape(_MARKDOWN_INLINE.sub(r"\\\1", flat), quote=False)


def list_items(results: Path) -> list[str]:
    """Item ids that have a grid for at least one model."""
    return sorted({path.stem for model in MODEL_NAMES for path in (results / model).glob("*.png")})


def _answers(results: Path, model: str, item: str) -> dict[tuple[int, int], dict]:
    report = results / model / "report.json"
    if not report.is_file():
        return {}
    rows = json.loads(report.read_text())["per_question"]
    return {(row["proposition_id"], row["tile"]): row for row in rows if row["item_id"] == item}


def item_view(results: Path, item: str) -> dict:
    """Grid paths per model, the prompt (raw, and as a Markdown line), and a Markdown table of answers.

    Everything in the Markdown that comes from the folder's files is escaped with `markdown_text`.
    """
    if item not in list_items(results):
        raise InputError("Prompt (item id)", f"must be an item of this results folder, got {item!r}.")
    prompts_file = results / PROMPTS_FILE
    prompt = json.loads(prompts_file.read_text()).get(item, "") if prompts_file.is_file() else ""
    grids = {
        model: str(results / model / f"{item}.png")
        for model in MODEL_NAMES
        if (results / model / f"{item}.png").is_file()
    }
    answers = {model: _answers(results, model, item) for model in MODEL_NAMES}
    questions = {}
    for model_answers in answers.values():
        for (proposition, _), row in model_answers.items():
            questions[proposition] = row["question"]
    if not questions:
        table = "No report.json with answers for this item yet: run `python -m ella_demo dpg score` for each model."
    else:
        header = "| question | " + " | ".join(f"{model.upper()} tiles 1-4" for model in MODEL_NAMES) + " |"
        lines = [header, "| --- |" + " --- |" * len(MODEL_NAMES)]
        for proposition, question in sorted(questions.items()):
            cells = []
            for model in MODEL_NAMES:
                marks = []
                for tile in range(4):
                    row = answers[model].get((proposition, tile))
                    marks.append(
                        "–" if row is None else f"{'✓' if row['score'] else '✗'} {markdown_text(row['answer'])}"
                    )
                cells.append(" · ".join(marks))
            lines.append(f"| {markdown_text(proposition)}. {markdown_text(question)} | " + " | ".join(cells) + " |")
        table = "\n".join(lines)
    prompt_markdown = f"**{markdown_text(item)}**: {markdown_text(prompt)}"
    return {"prompt": prompt, "prompt_markdown": prompt_markdown, "grids": grids, "table": table}
