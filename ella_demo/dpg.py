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

The official scorer has two quirks (`official_quirks=True` reproduces them): it drops the CSV's
first data row, and its category scores come from the last tile only.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

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


class DpgDataError(ValueError):
    """The DPG-Bench folder or its files are not in the expected layout."""


@dataclass(frozen=True)
class Question:
    item_id: str
    proposition_id: int
    dependencies: tuple[int, ...]
    category_broad: str
    category_detailed: str
    text: str


@dataclass
class DpgBench:
    """prompts: item_id -> prompt; questions: item_id -> questions in file order; warnings: notes."""

    prompts: dict[str, str]
    questions: dict[str, list[Question]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


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
    """Prompts and questions, validated. Problems that lose data are reported in `warnings`."""
    prompts = load_prompts(dpg_dir)
    rows = read_csv_rows(Path(dpg_dir) / "dpg_bench.csv", REQUIRED_COLUMNS, "scoring needs the question file")
    bench = DpgBench(prompts)
    if official_quirks and rows:
        bench.warnings.append(f"official quirk: dropped the first data row (item {rows[0]['item_id']})")
        rows = rows[1:]
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
    without_questions = sorted(set(prompts) - set(bench.questions))
    if without_questions:
        listed = ", ".join(without_questions[:10]) + ("..." if len(without_questions) > 10 else "")
        bench.warnings.append(f"{len(without_questions)} prompt(s) have no questions and are not scored: {listed}")
    return bench


# ---------------------------------------------------------------------------------------------
# Scoring


def is_yes(answer: str) -> bool:
    return str(answer).strip().lower() == "yes"


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
    """Score answers keyed (item_id, tile, proposition_id). Missing answers count as "no" and are reported."""
    per_prompt, per_question = {}, []
    category_sums: dict[str, dict[str, list[float]]] = {"broad": {}, "detailed": {}}
    missing = 0
    for item, questions in sorted(bench.questions.items()):
        tiles = []
        for tile in range(TILES):
            tile_answers = {}
            for question in questions:
                key = (item, tile, question.proposition_id)
                if key in answers:
                    tile_answers[question.proposition_id] = answers[key]
                else:
                    missing += 1
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
                if official_quirks and tile != TILES - 1:
                    continue
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
