"""DPG-Bench (ELLA paper, section 4): loading the official layout and scoring answers.

Layout of a user-given folder: `prompts/<item_id>.txt` (one dense prompt each) and `dpg_bench.csv`
with one row per question (columns in REQUIRED_COLUMNS; `dependency` lists parent proposition ids,
0 meaning none). Generation needs only the prompts; scoring needs the CSV too.

Protocol: 4 images per prompt, tiled 2x2. A VQA model answers every question for every tile; a
question scores 1 only if the answer is "yes" (compared after trimming and lower-casing); a
question whose parent scored 0 on that tile scores 0 (applied until nothing changes, so chains
of any depth work); tile score = mean over its questions, prompt score = mean over its 4 tiles,
overall = mean over prompts x 100. Category scores are the mean over every (tile, question) of the
category x 100.

`official_quirks=True` instead reproduces what the official scorer (`dpg_bench/compute_dpg_bench.py`
of TencentQQGYLab/ELLA, run through its `dist_eval.sh` with 4 tiles) computes, quirks included: see
`_load_official` and `_score_official`, and the list in the README.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ella_demo.core.errors import ExplorerError

REQUIRED_COLUMNS = (
    "item_id",
    "text",
    "keywords",
    "proposition_id",
    "dependency",
    "category_broad",
    "category_detailed",
    "tuple",
    "question_natural_language",
)
TILES = 4


class DpgDataError(ExplorerError, ValueError):
    """The DPG-Bench folder or its files are not in the expected layout."""


@dataclass(frozen=True)
class Question:
    """One row of dpg_bench.csv. `dependencies` keeps the file's order and leaves out 0 ("none").

    `tuple_text` is the `tuple` column (the official scorer's categories come from it); None where
    the official scorer would not read it as text (an empty cell).
    """

    item_id: str
    proposition_id: int
    dependencies: tuple[int, ...]
    category_broad: str
    category_detailed: str
    text: str
    tuple_text: str | None = None


@dataclass
class DpgBench:
    """prompts: item_id -> prompt; questions: item_id -> questions in file order; warnings: notes.

    official_quirks: loaded the way the official scorer reads the file; lost: item_id ->
    {proposition id: why it is not among the item's questions} (quirks mode only).
    """

    prompts: dict[str, str]
    questions: dict[str, list[Question]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    official_quirks: bool = False
    lost: dict[str, dict[int, str]] = field(default_factory=dict)


def load_prompts(dpg_dir: str | Path) -> dict[str, str]:
    folder = Path(dpg_dir) / "prompts"
    if not folder.is_dir():
        raise DpgDataError(
            f"{folder} does not exist: point --dpg-dir at the folder that holds prompts/ and dpg_bench.csv"
        )
    prompts = {path.stem: path.read_text(encoding="utf-8").strip() for path in sorted(folder.glob("*.txt"))}
    if not prompts:
        raise DpgDataError(f"{folder} holds no <item_id>.txt prompt files")
    return prompts


def _parse_ids(text: str, what: str, row: int) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).replace(" ", "").split(",") if part)
    except ValueError as error:
        raise DpgDataError(
            f"dpg_bench.csv row {row}: {what} {text!r} is not a comma-separated list of integers"
        ) from error


def read_csv_rows(path: Path, required: tuple[str, ...], missing_hint: str) -> list[dict[str, str]]:
    """The rows of a CSV file that must exist and have the `required` columns."""
    if not path.is_file():
        raise DpgDataError(f"{path} is missing: {missing_hint}")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in required if column not in (reader.fieldnames or [])]
        if missing:
            raise DpgDataError(f"{path} lacks the columns {', '.join(missing)} (expected: {','.join(required)})")
        return list(reader)


def load_bench(dpg_dir: str | Path, official_quirks: bool = False) -> DpgBench:
    """Prompts and questions, validated. Problems that lose data are reported in `warnings`.

    With `official_quirks`, the CSV is read the way the official scorer reads it (`_load_official`).
    """
    prompts = load_prompts(dpg_dir)
    rows = read_csv_rows(Path(dpg_dir) / "dpg_bench.csv", REQUIRED_COLUMNS, "scoring needs the question file")
    if official_quirks:
        return _load_official(prompts, rows)
    bench = DpgBench(prompts)
    orphans: dict[str, int] = {}
    for number, row in enumerate(rows, start=2):
        item = row["item_id"].strip()
        if item not in prompts:
            orphans[item] = orphans.get(item, 0) + 1
            continue
        (proposition,) = _parse_ids(row["proposition_id"], "proposition_id", number) or (None,)
        if proposition is None:
            raise DpgDataError(f"dpg_bench.csv row {number}: empty proposition_id")
        question = Question(
            item_id=item,
            proposition_id=proposition,
            dependencies=tuple(parent for parent in _parse_ids(row["dependency"], "dependency", number) if parent != 0),
            category_broad=row["category_broad"].strip(),
            category_detailed=row["category_detailed"].strip(),
            text=row["question_natural_language"].strip(),
            tuple_text=row["tuple"],
        )
        bench.questions.setdefault(item, []).append(question)
    for item, count in sorted(orphans.items()):
        bench.warnings.append(f"{count} question(s) of item {item} skipped: prompts/{item}.txt does not exist")
    for item, questions in bench.questions.items():
        ids = [question.proposition_id for question in questions]
        if len(ids) != len(set(ids)):
            raise DpgDataError(f"item {item} repeats proposition ids: {sorted(ids)}")
        for question in questions:
            unknown = [parent for parent in question.dependencies if parent not in ids]
            if unknown:
                bench.warnings.append(
                    f"item {item} question {question.proposition_id} depends on unknown proposition(s) {unknown}; "
                    "those dependencies are ignored"
                )
    _warn_prompts_without_questions(bench)
    return bench


def _warn_prompts_without_questions(bench: DpgBench) -> None:
    without_questions = sorted(set(bench.prompts) - set(bench.questions))
    if without_questions:
        listed = ", ".join(without_questions[:10]) + ("..." if len(without_questions) > 10 else "")
        bench.warnings.append(f"{len(without_questions)} prompt(s) have no questions and are not scored: {listed}")


# ---------------------------------------------------------------------------------------------
# Reading the CSV the way the official scorer does (pandas.read_csv, then row by row)

# Cells pandas.read_csv reads as missing (NaN) by default.
_PANDAS_NA = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
     "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _typed_column(cells: list[str | None]) -> list[str | int | float | None]:
    """A column as pandas.read_csv types it: None for a missing cell; numbers if every other cell is one."""
    present = [cell for cell in cells if cell is not None and cell not in _PANDAS_NA]
    missing = len(present) < len(cells)
    if all(_INTEGER.fullmatch(cell) for cell in present) and not missing:
        return [int(cell) for cell in cells]
    if all(_NUMBER.fullmatch(cell) for cell in present):
        return [None if cell is None or cell in _PANDAS_NA else float(cell) for cell in cells]
    return [None if cell is None or cell in _PANDAS_NA else cell for cell in cells]


def _as_int(value: str | int | float | None) -> int | None:
    """`int(value)` where it works, else None."""
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _describe(value: object) -> str:
    return "an empty cell" if value is None else f"the number {value!r} (pandas reads the whole column as numbers)"


def _official_crash(line: int, detail: str) -> DpgDataError:
    return DpgDataError(
        f"dpg_bench.csv row {line}: {detail}. The official scorer stops with an error on this file, so "
        "--official-quirks has nothing to reproduce: fix the file, or score without --official-quirks"
    )


def _load_official(prompts: dict[str, str], rows: list[dict[str, str]]) -> DpgBench:
    """The questions as the official scorer's `prepare_dpg_data` builds them.

    - pandas types each column: a column of numbers is read as numbers, so `dependency` (split on
      ",") and `question_natural_language` must be text, and `proposition_id` is turned into an int
      the way `int()` does (a float column truncates: 2.7 -> 2). Where the official scorer would stop
      with an error, DpgDataError says so.
    - The first data row (index 0) is skipped.
    - An item's questions are the rows since the item id last changed: if its rows are not
      contiguous, each new block replaces the questions read before (they are lost). A repeated
      proposition id inside a block replaces the earlier row's question, at the earlier row's place.
    - Item ids are compared as read (no trimming); prompt files are not needed (the official scorer
      never reads them): an item without one is kept and scored if it has answers.
    """
    bench = DpgBench(prompts, official_quirks=True)
    if not rows:
        _warn_prompts_without_questions(bench)
        return bench
    column = {
        name: _typed_column([row.get(name) for row in rows])
        for name in ("item_id", "proposition_id", "dependency", "tuple", "question_natural_language")
    }
    first_item, first_id = column["item_id"][0], column["proposition_id"][0]
    bench.warnings.append(
        f"official quirk: dropped the first data row (row 2: item {first_item}, proposition {first_id}); "
        "the official scorer skips row index 0"
    )
    if isinstance(first_item, str) and _as_int(first_id) is not None:
        bench.lost.setdefault(first_item, {})[_as_int(first_id)] = "it was the CSV's first data row, which is dropped"
    blocks: dict[object, dict[int, Question]] = {}
    block_start: dict[object, int] = {}
    previous: object = None
    for index in range(1, len(rows)):
        line, row = index + 2, rows[index]
        item = column["item_id"][index]
        proposition = column["proposition_id"][index]
        proposition_id = _as_int(proposition)
        if proposition_id is None:
            shown = repr(proposition) if isinstance(proposition, str) else _describe(proposition)
            raise _official_crash(line, f"proposition_id is {shown}, which int() refuses")
        if isinstance(proposition, float) and proposition_id != proposition:
            bench.warnings.append(
                f"official quirk: row {line}: proposition_id {proposition} is truncated to {proposition_id} by int()"
            )
        dependency = column["dependency"][index]
        if not isinstance(dependency, str):
            raise _official_crash(line, f"dependency is {_describe(dependency)}, which cannot be split on ','")
        try:
            parents = tuple(int(part.strip()) for part in dependency.split(","))
        except ValueError:
            raise _official_crash(line, f"dependency {dependency!r} has a part that is not an integer") from None
        text = column["question_natural_language"][index]
        if not isinstance(text, str):
            raise _official_crash(line, f"question_natural_language is {_describe(text)}, which is not text")
        tuple_text = column["tuple"][index]
        question = Question(
            item_id=str(item),
            proposition_id=proposition_id,
            dependencies=tuple(parent for parent in parents if parent != 0),
            category_broad=(row.get("category_broad") or "").strip(),
            category_detailed=(row.get("category_detailed") or "").strip(),
            text=text,
            tuple_text=tuple_text if isinstance(tuple_text, str) else None,
        )
        if item is not None and item == previous:
            block = blocks[item]
            if proposition_id in block:
                bench.warnings.append(
                    f"official quirk: item {item} repeats proposition {proposition_id} (row {line}): the later row "
                    "replaces the earlier one, in the earlier one's place"
                )
            block[proposition_id] = question
        elif item is not None:
            if item in blocks:
                lost = list(blocks[item])
                bench.warnings.append(
                    f"official quirk: the rows of item {item} are not contiguous: the block starting at row {line} "
                    f"replaces the one starting at row {block_start[item]}, whose question(s) {lost} are lost"
                )
                for lost_id in lost:
                    bench.lost.setdefault(str(item), {})[lost_id] = (
                        f"it was lost when the item's rows resumed at row {line} (rows not contiguous)"
                    )
            blocks[item], block_start[item] = {proposition_id: question}, line
        previous = item
    unmatched = [item for item in blocks if not isinstance(item, str)]
    if unmatched:
        bench.warnings.append(
            f"official quirk: pandas reads item_id as numbers ({len(unmatched)} items), so the official scorer "
            "finds no questions for any image file name: nothing can be scored"
        )
    without_prompt = []
    for item, block in blocks.items():
        if isinstance(item, str):
            bench.questions[item] = list(block.values())
            if item not in prompts:
                without_prompt.append(item)
    if without_prompt:
        bench.warnings.append(
            f"{len(without_prompt)} item(s) have questions but no prompt file ({', '.join(sorted(without_prompt))}); "
            "the official scorer does not read prompts, so they are scored if they have answers"
        )
    _warn_prompts_without_questions(bench)
    return bench


# ---------------------------------------------------------------------------------------------
# Scoring


def is_yes(answer: str) -> bool:
    return str(answer).strip().lower() == "yes"


def _tile_answers(
    answers: dict[tuple[str, int, int], str], item: str, tile: int, questions: list[Question]
) -> tuple[dict[int, str], int]:
    """One tile's answers by proposition id, and how many of its questions have none."""
    found = {}
    for question in questions:
        key = (item, tile, question.proposition_id)
        if key in answers:
            found[question.proposition_id] = answers[key]
    return found, len(questions) - len(found)


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


@dataclass
class Report:
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


def score(bench: DpgBench, answers: dict[tuple[str, int, int], str], official_quirks: bool = False) -> Report:
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
            for question in questions:
                value = scores[question.proposition_id]
                per_question.append({
                    "item_id": item, "tile": tile, "proposition_id": question.proposition_id,
                    "question": question.text, "answer": tile_answers.get(question.proposition_id, ""),
                    "score": value, "category_broad": question.category_broad,
                    "category_detailed": question.category_detailed,
                })  # fmt: skip
                category_sums["broad"].setdefault(question.category_broad, []).append(value)
                category_sums["detailed"].setdefault(question.category_detailed, []).append(value)
        per_prompt[item] = {"score": sum(tiles) / len(tiles) * 100, "tiles": [tile * 100 for tile in tiles]}
    warnings = list(bench.warnings)
    if missing:
        warnings.append(f"{missing} (tile, question) answer(s) were missing and count as 'no'")
    overall = sum(entry["score"] for entry in per_prompt.values()) / max(len(per_prompt), 1)

    def means(groups: dict[str, list[float]]) -> dict[str, float]:
        return {name: sum(values) / len(values) * 100 for name, values in sorted(groups.items())}

    return Report(overall, means(category_sums["broad"]), means(category_sums["detailed"]), per_prompt,
                  per_question, warnings, official_quirks)  # fmt: skip


class _MissingParentError(Exception):
    """The official scorer's KeyError: a question's parent is not among the item's questions."""

    def __init__(self, tile: int, question: int, parent: int):
        super().__init__(tile, question, parent)
        self.tile, self.question, self.parent = tile, question, parent


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


def _score_official(bench: DpgBench, answers: dict[tuple[str, int, int], str]) -> Report:
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
    import numpy as np

    warnings = list(bench.warnings)
    per_prompt, per_question, averages = {}, [], []
    level2: dict[str, list[float]] = {}
    missing = 0
    imaged = sorted({item for item, _, _ in answers})
    for item in imaged:
        if "." in item:
            warnings.append(
                f"official quirk: item {item} not scored: the official scorer looks its image up by the file name "
                f"up to the first '.' ({item.split('.')[0]}), which answers keyed by item cannot reproduce"
            )
            continue
        questions = bench.questions.get(item)
        if not questions:
            warnings.append(
                f"official quirk: answers for item {item} skipped: it has no questions, and the official scorer "
                "fails on (and skips) an image without questions"
            )
            continue
        tiles, rows, last_before, item_missing = [], [], {}, 0
        try:
            for tile in range(TILES):
                tile_answers, unanswered = _tile_answers(answers, item, tile, questions)
                item_missing += unanswered
                last_before, after = _official_tile(questions, tile_answers, tile)
                tiles.append(sum(after.values()) / len(after))
                rows.extend(
                    {"item_id": item, "tile": tile, "proposition_id": question.proposition_id,
                     "question": question.text, "answer": tile_answers.get(question.proposition_id, ""),
                     "score": after[question.proposition_id], "category_broad": question.category_broad,
                     "category_detailed": question.category_detailed}
                    for question in questions
                )  # fmt: skip
        except _MissingParentError as failure:
            why = bench.lost.get(item, {}).get(failure.parent, "the CSV has no such proposition for this item")
            warnings.append(
                f"official quirk: item {item} not scored (absent from the overall and the categories): on tile "
                f"{failure.tile}, question {failure.question} depends on proposition {failure.parent}, which is not "
                f"among the item's questions ({why}); the official scorer fails on this image (KeyError)"
            )
            continue
        average = sum(tiles) / len(tiles)
        averages.append(average)
        missing += item_missing
        per_prompt[item] = {"score": average * 100, "tiles": [tile * 100 for tile in tiles]}
        per_question.extend(rows)
        for question in questions:
            if question.tuple_text is None:
                warnings.append(
                    f"official quirk: item {item} question {question.proposition_id} has no tuple: the official "
                    "scorer fails there, after counting the prompt's score, so this and its later questions add "
                    "nothing to the categories"
                )
                break
            category = question.tuple_text.split("(")[0].strip()
            level2.setdefault(category, []).append(last_before[question.proposition_id])
    not_imaged = sorted(set(bench.questions) - set(imaged))
    if not_imaged:
        listed = ", ".join(not_imaged[:10]) + ("..." if len(not_imaged) > 10 else "")
        warnings.append(
            f"official quirk: {len(not_imaged)} item(s) have no answers at all and are not scored (the official "
            f"scorer scores only the images it finds): {listed}"
        )
    if missing:
        warnings.append(f"{missing} (tile, question) answer(s) were missing and count as 'no'")
    if averages:
        overall = float(np.mean(averages)) * 100
    else:
        overall = math.nan
        warnings.append("official quirk: no prompt could be scored; the official scorer reports nan")
    level1: dict[str, list[float]] = {}
    for name, values in level2.items():
        level1.setdefault(name.split("-")[0].strip(), []).extend(values)

    def means(groups: dict[str, list[float]]) -> dict[str, float]:
        return {name: float(np.mean(values)) * 100 for name, values in sorted(groups.items())}

    return Report(overall, means(level1), means(level2), per_prompt, per_question, warnings, True)


def write_report(report: Report, out: str | Path) -> list[Path]:
    """report.json (everything) and, beside it, report.csv (one row per tile and question)."""
    import json

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), indent=2))
    csv_path = path.with_suffix(".csv")
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        fields = [
            "item_id",
            "tile",
            "proposition_id",
            "category_broad",
            "category_detailed",
            "question",
            "answer",
            "score",
        ]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({name: row[name] for name in fields} for row in report.per_question)
    return [path, csv_path]
