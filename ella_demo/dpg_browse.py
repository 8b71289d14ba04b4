"""Browsing a DPG-Bench results folder: which items it has, and one item's grids and answers.

The folder is fixed when the app starts (`--dpg-results`); nothing here takes a path from the
browser, and item ids are checked against the folder's own listing.
"""

from __future__ import annotations

import json
from pathlib import Path

from .dpg_generate import MODEL_NAMES, PROMPTS_FILE


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
    """Grid paths per model, the prompt, and a Markdown table of each question's answers per tile."""
    if item not in list_items(results):
        raise ValueError(f"{item!r} is not an item of this results folder")
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
                    marks.append("–" if row is None else f"{'✓' if row['score'] else '✗'} {row['answer']}")
                cells.append(" · ".join(marks))
            lines.append(f"| {proposition}. {question} | " + " | ".join(cells) + " |")
        table = "\n".join(lines)
    return {"prompt": prompt, "grids": grids, "table": table}
