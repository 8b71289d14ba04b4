"""DPG-Bench (ELLA paper, section 4): scoring a VQA model's answers, and writing the report.

Protocol: 4 images per prompt, tiled 2x2. A VQA model answers every question for every tile; a
question scores 1 only if the answer is "yes" (compared after trimming and lower-casing); a
question whose parent scored 0 on that tile scores 0 (applied until nothing changes, so chains
of any depth work); tile score = mean over its questions, prompt score = mean over its 4 tiles,
overall = mean over prompts x 100. Category scores are the mean over every (tile, question) of the
category x 100.

`official_quirks=True` instead reproduces what the official scorer (`dpg_bench/compute_dpg_bench.py`
of TencentQQGYLab/ELLA, run through its `dist_eval.sh` with 4 tiles) computes, quirks included: see
`_score_official`, and the list in the README.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ella_demo.dpg.data import TILES, DpgBench, Question, abbreviated

Answers = dict[tuple[str, int, int], str]
# The columns of report.csv, one row per (tile, question).
REPORT_COLUMNS = (
    "item_id",
    "tile",
    "proposition_id",
    "category_broad",
    "category_detailed",
    "question",
    "answer",
    "score",
)


@dataclass
class Report:
    """Scores x 100 (overall, per category, per prompt), one row per (tile, question), and warnings."""

    overall: float
    categories_broad: dict[str, float]
    categories_detailed: dict[str, float]
    per_prompt: dict[str, dict]
    per_question: list[dict]
    warnings: list[str]
    official_quirks: bool

    def to_dict(self) -> dict:
        return {
            "overall": self.overall,
            "categories": {"broad": self.categories_broad, "detailed": self.categories_detailed},
            "per_prompt": self.per_prompt,
            "per_question": self.per_question,
            "warnings": self.warnings,
            "official_quirks": self.official_quirks,
        }


def is_yes(answer: str) -> bool:
    """Whether an answer is "yes", after trimming and lower-casing."""
    return str(answer).strip().lower() == "yes"


def _tile_answers(answers: Answers, item: str, tile: int, questions: list[Question]) -> tuple[dict[int, str], int]:
    """One tile's answers by proposition id, and how many of its questions have none."""
    found = {}
    for question in questions:
        key = (item, tile, question.proposition_id)
        if key in answers:
            found[question.proposition_id] = answers[key]
    return found, len(questions) - len(found)


def _question_rows(
    item: str, tile: int, questions: list[Question], answers: dict[int, str], scores: dict[int, float]
) -> list[dict]:
    """The report's rows for one tile: each question with its answer and score."""
    return [
        {"item_id": item, "tile": tile, "proposition_id": question.proposition_id, "question": question.text,
         "answer": answers.get(question.proposition_id, ""), "score": scores[question.proposition_id],
         "category_broad": question.category_broad, "category_detailed": question.category_detailed}
        for question in questions
    ]  # fmt: skip


def _missing_warning(missing: int) -> str:
    """The warning that `missing` (tile, question) pairs had no answer."""
    return f"{missing} (tile, question) answer(s) were missing and count as 'no'"


def tile_scores(questions: list[Question], answers: dict[int, str]) -> dict[int, float]:
    """proposition id -> 0/1 for one tile, after dependency zeroing (to a fixed point)."""
    known = {question.proposition_id for question in questions}
    scores = {
        question.proposition_id: float(is_yes(answers.get(question.proposition_id, ""))) for question in questions
    }
    changed = True
    while changed:
        changed = False
        for question in questions:
            if scores[question.proposition_id] and any(
                parent in known and scores[parent] == 0 for parent in question.dependencies
            ):
                scores[question.proposition_id] = 0.0
                changed = True
    return scores


def score(bench: DpgBench, answers: Answers, official_quirks: bool = False) -> Report:
    """Score answers keyed (item_id, tile, proposition_id). Missing answers count as "no" and are reported.

    `official_quirks` scores the way the official scorer does (`_score_official`); the bench must
    have been loaded the same way.
    """
    if official_quirks != bench.official_quirks:
        raise ValueError("load the bench and score it with the same official_quirks setting")
    if official_quirks:
        return _score_official(bench, answers)
    per_prompt, per_question = {}, []
    category_sums: dict[str, dict[str, list[float]]] = {"broad": {}, "detailed": {}}
    missing = 0
    for item, questions in sorted(bench.questions.items()):
        tiles = []
        for tile in range(TILES):
            tile_answers, unanswered = _tile_answers(answers, item, tile, questions)
            missing += unanswered
            scores = tile_scores(questions, tile_answers)
            tiles.append(sum(scores.values()) / len(scores))
            per_question.extend(_question_rows(item, tile, questions, tile_answers, scores))
            for question in questions:
                value = scores[question.proposition_id]
                category_sums["broad"].setdefault(question.category_broad, []).append(value)
                category_sums["detailed"].setdefault(question.category_detailed, []).append(value)
        per_prompt[item] = {"score": sum(tiles) / len(tiles) * 100, "tiles": [tile * 100 for tile in tiles]}
    warnings = list(bench.warnings)
    if missing:
        warnings.append(_missing_warning(missing))
    overall = sum(entry["score"] for entry in per_prompt.values()) / max(len(per_prompt), 1)

    def means(groups: dict[str, list[float]]) -> dict[str, float]:
        return {name: sum(values) / len(values) * 100 for name, values in sorted(groups.items())}

    return Report(overall, means(category_sums["broad"]), means(category_sums["detailed"]), per_prompt,
                  per_question, warnings, official_quirks)  # fmt: skip


def write_report(report: Report, out: str | Path) -> list[Path]:
    """report.json (everything) and, beside it, report.csv (one row per tile and question)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2))
    csv_path = path.with_suffix(".csv")
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=REPORT_COLUMNS)
        writer.writeheader()
        writer.writerows({name: row[name] for name in REPORT_COLUMNS} for row in report.per_question)
    return [path, csv_path]


# ---------------------------------------------------------------------------------------------
# Scoring the way the official scorer does


class _MissingParentError(Exception):
    """The official scorer's KeyError: a question's parent is not among the item's questions."""

    def __init__(self, tile: int, question: int, parent: int):
        super().__init__(tile, question, parent)
        self.tile, self.question, self.parent = tile, question, parent


@dataclass
class _OfficialPrompt:
    """One prompt as the official scorer scores it.

    tiles: each tile's score after zeroing; rows: the report's rows; last_before: the last tile's
    scores before zeroing (the categories count those); missing: (tile, question) pairs unanswered.
    """

    tiles: list[float]
    rows: list[dict]
    last_before: dict[int, float]
    missing: int


def _official_tile(questions: list[Question], answers: dict[int, str], tile: int) -> tuple[dict, dict]:
    """(scores before zeroing, scores after) for one tile, as `compute_dpg_one_sample` computes them.

    A question scores 1 only for the answer "yes" exactly. Zeroing is one pass over the questions in
    file order, changing the scores as it goes: a child listed after its zeroed parent sees the zero,
    one listed before it does not. Each question's parents are checked in order and the check stops
    at the first parent scoring 0; a parent reached that the item does not have raises _MissingParentError.
    """
    before = {question.proposition_id: float(answers.get(question.proposition_id) == "yes") for question in questions}
    after = dict(before)
    for question in questions:
        for parent in question.dependencies:
            if parent not in after:
                raise _MissingParentError(tile, question.proposition_id, parent)
            if after[parent] == 0:
                after[question.proposition_id] = 0.0
                break
    return before, after


def _official_prompt(item: str, questions: list[Question], answers: Answers) -> _OfficialPrompt:
    """The item's 4 tiles scored the official way; raises _MissingParentError as the official scorer fails."""
    prompt = _OfficialPrompt(tiles=[], rows=[], last_before={}, missing=0)
    for tile in range(TILES):
        tile_answers, unanswered = _tile_answers(answers, item, tile, questions)
        prompt.missing += unanswered
        prompt.last_before, after = _official_tile(questions, tile_answers, tile)
        prompt.tiles.append(sum(after.values()) / len(after))
        prompt.rows.extend(_question_rows(item, tile, questions, tile_answers, after))
    return prompt


def _unscorable(bench: DpgBench, item: str) -> str | None:
    """Why the official scorer cannot score the answers for `item` at all, or None if it can try."""
    if "." in item:
        return (
            f"official quirk: item {item} not scored: the official scorer looks its image up by the file name "
            f"up to the first '.' ({item.split('.')[0]}), which answers keyed by item cannot reproduce"
        )
    if not bench.questions.get(item):
        return (
            f"official quirk: answers for item {item} skipped: it has no questions, and the official scorer "
            "fails on (and skips) an image without questions"
        )
    return None


def _missing_parent_warning(bench: DpgBench, item: str, failure: _MissingParentError) -> str:
    """Why `item` is not scored: the official scorer fails on a parent the item lacks (and why it lacks it)."""
    why = bench.lost.get(item, {}).get(failure.parent, "the CSV has no such proposition for this item")
    return (
        f"official quirk: item {item} not scored (absent from the overall and the categories): on tile "
        f"{failure.tile}, question {failure.question} depends on proposition {failure.parent}, which is not "
        f"among the item's questions ({why}); the official scorer fails on this image (KeyError)"
    )


def _count_categories(
    item: str, questions: list[Question], before: dict[int, float], level2: dict[str, list[float]], warnings: list[str]
) -> None:
    """Add each question's score before zeroing to its L2 category (its tuple up to the first "(").

    Stops, with a warning, at the first question without a tuple, as the official scorer fails there.
    """
    for question in questions:
        if question.tuple_text is None:
            warnings.append(
                f"official quirk: item {item} question {question.proposition_id} has no tuple: the official "
                "scorer fails there, after counting the prompt's score, so this and its later questions add "
                "nothing to the categories"
            )
            return
        category = question.tuple_text.split("(")[0].strip()
        level2.setdefault(category, []).append(before[question.proposition_id])


def _score_official(bench: DpgBench, answers: Answers) -> Report:
    """The official scorer's numbers (its `main` and `compute_dpg_one_sample`, 4 tiles as in dist_eval.sh).

    - It scores the image files it finds: here, the items that have at least one answer. An item
      with questions but no answers is not scored at all (no image); answers for an item without
      questions are skipped (the official scorer fails on that file and goes on).
    - A prompt whose zeroing reaches a parent the item does not have fails and is skipped whole:
      absent from the overall mean and from the categories.
    - prompt score = mean over tiles of the tile scores; overall = numpy mean over the scored
      prompts x 100 (nan if none).
    - Categories come from the `tuple` column: L2 = the text before its first "(" (e.g.
      "entity - whole"), L1 = L2 up to its first "-". Each question counts once per prompt, with
      its last tile's score BEFORE dependency zeroing. If a question's tuple is missing, the
      official scorer fails after counting the prompt's score: its later questions add no category.
    Categories are reported as broad = L1, detailed = L2.
    """
    warnings = list(bench.warnings)
    per_prompt, per_question, averages = {}, [], []
    level2: dict[str, list[float]] = {}
    missing = 0
    imaged = sorted({item for item, _, _ in answers})
    for item in imaged:
        reason = _unscorable(bench, item)
        if reason is not None:
            warnings.append(reason)
            continue
        questions = bench.questions[item]
        try:
            prompt = _official_prompt(item, questions, answers)
        except _MissingParentError as failure:
            warnings.append(_missing_parent_warning(bench, item, failure))
            continue
        average = sum(prompt.tiles) / len(prompt.tiles)
        averages.append(average)
        missing += prompt.missing
        per_prompt[item] = {"score": average * 100, "tiles": [tile * 100 for tile in prompt.tiles]}
        per_question.extend(prompt.rows)
        _count_categories(item, questions, prompt.last_before, level2, warnings)
    _finish_official_warnings(bench, imaged, missing, bool(averages), warnings)
    overall = float(np.mean(averages)) * 100 if averages else math.nan
    level1: dict[str, list[float]] = {}
    for name, values in level2.items():
        level1.setdefault(name.split("-")[0].strip(), []).extend(values)

    def means(groups: dict[str, list[float]]) -> dict[str, float]:
        return {name: float(np.mean(values)) * 100 for name, values in sorted(groups.items())}

    return Report(overall, means(level1), means(level2), per_prompt, per_question, warnings, True)


def _finish_official_warnings(
    bench: DpgBench, imaged: list[str], missing: int, any_scored: bool, warnings: list[str]
) -> None:
    """The warnings about the whole run: items never imaged, missing answers, nothing scored."""
    not_imaged = sorted(set(bench.questions) - set(imaged))
    if not_imaged:
        warnings.append(
            f"official quirk: {len(not_imaged)} item(s) have no answers at all and are not scored (the official "
            f"scorer scores only the images it finds): {abbreviated(not_imaged)}"
        )
    if missing:
        warnings.append(_missing_warning(missing))
    if not any_scored:
        warnings.append("official quirk: no prompt could be scored; the official scorer reports nan")
