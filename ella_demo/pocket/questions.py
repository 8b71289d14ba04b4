"""The DPG-Bench question graph of a pocket prompt, and writing prompts with their graphs as a DPG-Bench folder.

Graph of a prompt (proposition ids from 1, in this order): the two globals `global - (background gray)` and
`global - (style outlined)`; per entity, in scene order, `entity - whole (circle)`, then depending on it
`attribute - color (circle; red)`, `attribute - size (circle; large)` and, for a group,
`other - count (circle; ==2)`; per stated relation, `relation - spatial (circle; square; left of)` depending
on both entities. Tuples and questions use training words (questions are queries.question_text); `keywords`
holds the word(s) the prompt itself uses (a paraphrase word when paraphrased).

The globals come first so that the first row of the written CSV, which the official scorer skips (see
ella_demo.dpg.data._load_official), is a question no other question depends on.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from ella_demo.dpg.data import REQUIRED_COLUMNS
from ella_demo.pocket.captions import PocketPrompt
from ella_demo.pocket.queries import RELATION_PHRASES, Query, plural_of, question_text
from ella_demo.pocket.scenes import Entity
from ella_demo.pocket.vocabulary import COUNT_WORDS

# Item ids pandas reads as text (not numbers) and that are safe file names.
ITEM_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
NO_PARENT = "0"


@dataclass(frozen=True)
class GraphQuestion:
    """One proposition of a prompt's graph: its Query and its dpg_bench.csv cells (dependencies: parent ids)."""

    query: Query
    proposition_id: int
    dependencies: tuple[int, ...]
    category_broad: str
    category_detailed: str
    tuple_text: str
    keywords: str

    @property
    def question(self) -> str:
        """The question in English (training words)."""
        return question_text(self.query)


def question_graph(prompt: PocketPrompt) -> list[GraphQuestion]:
    """The prompt's propositions in id order (see the module docstring)."""
    scene = prompt.scene
    graph = [
        _global(1, "background", scene.background, prompt.surface(scene.background)),
        _global(2, "style", scene.style, prompt.surface(scene.style)),
    ]
    entity_ids = []
    for entity in scene.entities:
        entity_ids.append(len(graph) + 1)
        graph += _entity_questions(entity, prompt, entity_ids[-1])
    for relation in prompt.relations:
        subject, obj = scene.entities[relation.subject], scene.entities[relation.object]
        graph.append(
            GraphQuestion(
                Query("relation", subject.shape, relation.predicate, other=obj.shape),
                len(graph) + 1,
                (entity_ids[relation.subject], entity_ids[relation.object]),
                "relation",
                "spatial",
                f"relation - spatial ({subject.shape}; {obj.shape}; {relation.predicate})",
                RELATION_PHRASES[relation.predicate],
            )
        )
    return graph


def question_rows(item_id: str, prompt: PocketPrompt) -> list[dict[str, str]]:
    """The prompt's dpg_bench.csv rows: one dict per question, keyed by REQUIRED_COLUMNS."""
    return [
        {
            "item_id": item_id,
            "text": prompt.text,
            "keywords": question.keywords,
            "proposition_id": str(question.proposition_id),
            "dependency": ",".join(map(str, question.dependencies)) or NO_PARENT,
            "category_broad": question.category_broad,
            "category_detailed": question.category_detailed,
            "tuple": question.tuple_text,
            "question_natural_language": question.question,
        }
        for question in question_graph(prompt)
    ]


def write_dpg_folder(folder: str | Path, prompts: dict[str, PocketPrompt]) -> Path:
    """Write `prompts/<item_id>.txt` and `dpg_bench.csv` (items' rows contiguous, in the dict's order) under folder.

    ella_demo.dpg.data.load_bench reads the result without warnings; with official_quirks=True its only
    warning is the official scorer's dropped first row (the first item's background question). Item ids must
    match ITEM_ID. Where no row has two parents (no prompt states a relation), the roots' dependency is
    written "0,0": pandas would otherwise read the dependency column as numbers, which the official scorer
    cannot split (both loaders, and the official scorer, ignore parent 0).
    """
    bad = [item for item in prompts if not ITEM_ID.fullmatch(item)]
    if bad:
        raise ValueError(f"item ids must match {ITEM_ID.pattern} (text to pandas, safe file names): {bad}")
    root = Path(folder)
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    rows = []
    for item, prompt in prompts.items():
        (root / "prompts" / f"{item}.txt").write_text(prompt.text + "\n", encoding="utf-8")
        rows += question_rows(item, prompt)
    if not any("," in row["dependency"] for row in rows):
        for row in rows:
            if row["dependency"] == NO_PARENT:
                row["dependency"] = f"{NO_PARENT},{NO_PARENT}"
    with (root / "dpg_bench.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=REQUIRED_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


def _global(proposition_id: int, kind: str, value: str, keyword: str) -> GraphQuestion:
    """The background or style question: `global - (background gray)`."""
    return GraphQuestion(
        Query(kind, value=value), proposition_id, (), "global", "global", f"global - ({kind} {value})", keyword
    )


def _entity_questions(entity: Entity, prompt: PocketPrompt, entity_id: int) -> list[GraphQuestion]:
    """Whole, colour, size and (for a group) count propositions of an entity whose own id is `entity_id`."""
    shape, group = entity.shape, entity.count > 1
    noun = prompt.surface(shape)
    questions = [
        GraphQuestion(
            Query("entity", shape), entity_id, (), "entity", "whole", f"entity - whole ({shape})",
            plural_of(noun) if group else noun,
        ),
        GraphQuestion(
            Query("colour", shape, entity.colour, plural=group), entity_id + 1, (entity_id,), "attribute", "color",
            f"attribute - color ({shape}; {entity.colour})", prompt.surface(entity.colour),
        ),
        GraphQuestion(
            Query("size", shape, entity.size, plural=group), entity_id + 2, (entity_id,), "attribute", "size",
            f"attribute - size ({shape}; {entity.size})", prompt.surface(entity.size),
        ),
    ]  # fmt: skip
    if group:
        questions.append(
            GraphQuestion(
                Query("count", shape, count=entity.count), entity_id + 3, (entity_id,), "other", "count",
                f"other - count ({shape}; =={entity.count})", COUNT_WORDS[entity.count],
            )
        )  # fmt: skip
    return questions
