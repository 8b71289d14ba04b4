"""DPG-Bench (ELLA paper, section 4): reading the official layout into prompts and questions.

Layout of a user-given folder: `prompts/<item_id>.txt` (one dense prompt each) and `dpg_bench.csv`
with one row per question (columns in REQUIRED_COLUMNS; `dependency` lists parent proposition ids,
0 meaning none). Generation needs only the prompts; scoring (dpg/scoring.py) needs the CSV too.

`official_quirks=True` instead reads the CSV the way the official scorer
(`dpg_bench/compute_dpg_bench.py` of TencentQQGYLab/ELLA) reads it, quirks included: see
`_load_official`, and the list in the README.
"""

from __future__ import annotations

import csv
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


def abbreviated(names: list[str], shown: int = 10) -> str:
    """The first `shown` names, comma-separated, with "..." where more were left out."""
    return ", ".join(names[:shown]) + ("..." if len(names) > shown else "")


def load_prompts(dpg_dir: str | Path) -> dict[str, str]:
    """item_id -> prompt, from the folder's prompts/<item_id>.txt files."""
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
        if item in prompts:
            bench.questions.setdefault(item, []).append(_read_question(item, row, number))
        else:
            orphans[item] = orphans.get(item, 0) + 1
    for item, count in sorted(orphans.items()):
        bench.warnings.append(f"{count} question(s) of item {item} skipped: prompts/{item}.txt does not exist")
    for item, questions in bench.questions.items():
        _check_proposition_ids(bench, item, questions)
    _warn_prompts_without_questions(bench)
    return bench


def _read_question(item: str, row: dict[str, str], number: int) -> Question:
    """CSV row `number` (counting the header as row 1) as a Question, its cells trimmed."""
    (proposition,) = _parse_ids(row["proposition_id"], "proposition_id", number) or (None,)
    if proposition is None:
        raise DpgDataError(f"dpg_bench.csv row {number}: empty proposition_id")
    return Question(
        item_id=item,
        proposition_id=proposition,
        dependencies=tuple(parent for parent in _parse_ids(row["dependency"], "dependency", number) if parent != 0),
        category_broad=row["category_broad"].strip(),
        category_detailed=row["category_detailed"].strip(),
        text=row["question_natural_language"].strip(),
        tuple_text=row["tuple"],
    )


def _check_proposition_ids(bench: DpgBench, item: str, questions: list[Question]) -> None:
    """Refuse repeated proposition ids; note (and ignore) dependencies on ids the item lacks."""
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


def _warn_prompts_without_questions(bench: DpgBench) -> None:
    without_questions = sorted(set(bench.prompts) - set(bench.questions))
    if without_questions:
        bench.warnings.append(
            f"{len(without_questions)} prompt(s) have no questions and are not scored: {abbreviated(without_questions)}"
        )


# ---------------------------------------------------------------------------------------------
# Reading the CSV the way the official scorer does (pandas.read_csv, then row by row)

# Cells pandas.read_csv reads as missing (NaN) by default.
_PANDAS_NA = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
     "NULL", "NaN", "None", "n/a", "nan", "null"}
)  # fmt: skip
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
# The columns the official scorer reads as pandas types them (the categories it takes from `tuple`).
_TYPED_COLUMNS = ("item_id", "proposition_id", "dependency", "tuple", "question_natural_language")

Cell = str | int | float | None


def _typed_column(cells: list[str | None]) -> list[Cell]:
    """A column as pandas.read_csv types it: None for a missing cell; numbers if every other cell is one."""
    present = [cell for cell in cells if cell is not None and cell not in _PANDAS_NA]
    missing = len(present) < len(cells)
    if all(_INTEGER.fullmatch(cell) for cell in present) and not missing:
        return [int(cell) for cell in cells]
    if all(_NUMBER.fullmatch(cell) for cell in present):
        return [None if cell is None or cell in _PANDAS_NA else float(cell) for cell in cells]
    return [None if cell is None or cell in _PANDAS_NA else cell for cell in cells]


def _as_int(value: Cell) -> int | None:
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
    if rows:
        columns = {name: _typed_column([row.get(name) for row in rows]) for name in _TYPED_COLUMNS}
        _drop_first_row(bench, columns)
        _keep_blocks(bench, _read_blocks(bench, rows, columns))
    _warn_prompts_without_questions(bench)
    return bench


def _drop_first_row(bench: DpgBench, columns: dict[str, list[Cell]]) -> None:
    """Note that the first data row is skipped, and record its question as lost."""
    first_item, first_id = columns["item_id"][0], columns["proposition_id"][0]
    bench.warnings.append(
        f"official quirk: dropped the first data row (row 2: item {first_item}, proposition {first_id}); "
        "the official scorer skips row index 0"
    )
    if isinstance(first_item, str) and _as_int(first_id) is not None:
        bench.lost.setdefault(first_item, {})[_as_int(first_id)] = "it was the CSV's first data row, which is dropped"


def _read_blocks(
    bench: DpgBench, rows: list[dict[str, str]], columns: dict[str, list[Cell]]
) -> dict[Cell, dict[int, Question]]:
    """Item id as read -> {proposition id: question} of the item's last block of contiguous rows."""
    blocks: dict[Cell, dict[int, Question]] = {}
    block_start: dict[Cell, int] = {}
    previous: Cell = None
    for index in range(1, len(rows)):
        line, item = index + 2, columns["item_id"][index]
        question = _official_question(bench, rows[index], columns, index)
        if item is not None and item == previous:
            if question.proposition_id in blocks[item]:
                bench.warnings.append(
                    f"official quirk: item {item} repeats proposition {question.proposition_id} (row {line}): the "
                    "later row replaces the earlier one, in the earlier one's place"
                )
            blocks[item][question.proposition_id] = question
        elif item is not None:
            if item in blocks:
                _lose_block(bench, item, list(blocks[item]), block_start[item], line)
            blocks[item], block_start[item] = {question.proposition_id: question}, line
        previous = item
    return blocks


def _official_question(bench: DpgBench, row: dict[str, str], columns: dict[str, list[Cell]], index: int) -> Question:
    """Data row `index` as the official scorer reads it; DpgDataError where it would stop with an error."""
    line = index + 2
    proposition = columns["proposition_id"][index]
    proposition_id = _as_int(proposition)
    if proposition_id is None:
        shown = repr(proposition) if isinstance(proposition, str) else _describe(proposition)
        raise _official_crash(line, f"proposition_id is {shown}, which int() refuses")
    if isinstance(proposition, float) and proposition_id != proposition:
        bench.warnings.append(
            f"official quirk: row {line}: proposition_id {proposition} is truncated to {proposition_id} by int()"
        )
    dependency = columns["dependency"][index]
    if not isinstance(dependency, str):
        raise _official_crash(line, f"dependency is {_describe(dependency)}, which cannot be split on ','")
    try:
        parents = tuple(int(part.strip()) for part in dependency.split(","))
    except ValueError:
        raise _official_crash(line, f"dependency {dependency!r} has a part that is not an integer") from None
    text = columns["question_natural_language"][index]
    if not isinstance(text, str):
        raise _official_crash(line, f"question_natural_language is {_describe(text)}, which is not text")
    tuple_text = columns["tuple"][index]
    return Question(
        item_id=str(columns["item_id"][index]),
        proposition_id=proposition_id,
        dependencies=tuple(parent for parent in parents if parent != 0),
        category_broad=(row.get("category_broad") or "").strip(),
        category_detailed=(row.get("category_detailed") or "").strip(),
        text=text,
        tuple_text=tuple_text if isinstance(tuple_text, str) else None,
    )


def _lose_block(bench: DpgBench, item: Cell, lost: list[int], started: int, line: int) -> None:
    """Note that the block of `item` starting at row `started` is replaced by the one starting at `line`."""
    bench.warnings.append(
        f"official quirk: the rows of item {item} are not contiguous: the block starting at row {line} "
        f"replaces the one starting at row {started}, whose question(s) {lost} are lost"
    )
    for lost_id in lost:
        bench.lost.setdefault(str(item), {})[lost_id] = (
            f"it was lost when the item's rows resumed at row {line} (rows not contiguous)"
        )


def _keep_blocks(bench: DpgBench, blocks: dict[Cell, dict[int, Question]]) -> None:
    """The blocks' questions become the bench's, for the item ids the official scorer can match (text)."""
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
            if item not in bench.prompts:
                without_prompt.append(item)
    if without_prompt:
        bench.warnings.append(
            f"{len(without_prompt)} item(s) have questions but no prompt file ({', '.join(sorted(without_prompt))}); "
            "the official scorer does not read prompts, so they are scored if they have answers"
        )
