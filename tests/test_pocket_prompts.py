"""Pocket world prompts: the caption grammar, the prompt sets, the question texts and the DPG question graphs."""

from __future__ import annotations

import re
from itertools import permutations

import numpy as np
import pytest

from ella_demo.dpg.data import load_bench
from ella_demo.pocket.captions import (
    PROMPT_SETS,
    TEMPLATES,
    PocketPrompt,
    describe,
    prompt_sets,
    training_example,
    training_example_with_shape_negative,
    training_rng,
    training_vocabulary,
    words_of,
)
from ella_demo.pocket.queries import RELATION_PHRASES, Query, QueryError, parse_question, plural_of, question_text
from ella_demo.pocket.questions import question_graph, question_rows, write_dpg_folder
from ella_demo.pocket.scenes import Entity, Scene, sample_scene, shape_swapped
from ella_demo.pocket.vocabulary import (
    BACKGROUNDS,
    COLOURS,
    COUNT_WORDS,
    HELD_OUT_PAIRS,
    PARAPHRASES,
    RELATIONS,
    SHAPES,
    SIZES,
    STYLES,
)

PARAPHRASE_WORDS = {word for options in PARAPHRASES.values() for option in options for word in words_of(option)}
PARAPHRASE_WORDS |= {word for shape in SHAPES for option in PARAPHRASES[shape] for word in words_of(plural_of(option))}
PARAPHRASED_TRAINING_WORDS = set(PARAPHRASES) | {plural_of(shape) for shape in SHAPES}


def mentions(text: str, phrase: str) -> bool:
    """Whether `phrase` occurs in `text` as whole words (case-insensitive): "circle" is not in "circles"."""
    return re.search(rf"\b{re.escape(phrase)}\b", text, flags=re.IGNORECASE) is not None


@pytest.fixture(scope="module")
def training_captions() -> list[PocketPrompt]:
    rng = training_rng(0)
    return [training_example(rng) for _ in range(400)]


@pytest.fixture(scope="module")
def paraphrase_captions() -> list[PocketPrompt]:
    rng = np.random.default_rng(11)
    return [describe(sample_scene(rng), rng, paraphrase=True) for _ in range(300)]


def test_captions_mention_every_entity_the_background_the_style_and_the_stated_relations(
    training_captions, paraphrase_captions
):
    for prompt in training_captions + paraphrase_captions:
        text, scene = prompt.text, prompt.scene
        for entity in scene.entities:
            noun = prompt.surface(entity.shape)
            assert mentions(text, prompt.surface(entity.colour)) and mentions(text, prompt.surface(entity.size)), text
            if entity.count == 1:
                assert mentions(text, noun) and not mentions(text, plural_of(noun)), text
            else:
                assert mentions(text, COUNT_WORDS[entity.count]) and mentions(text, plural_of(noun)), text
                assert not mentions(text, noun), text
        assert mentions(text, prompt.surface(scene.background)) and mentions(text, prompt.surface(scene.style)), text
        assert set(prompt.relations) <= set(scene.relations) and len(set(prompt.relations)) == len(prompt.relations)
        assert bool(prompt.relations) == bool(scene.relations)
        for predicate in RELATIONS:
            stated = sum(relation.predicate == predicate for relation in prompt.relations)
            assert len(re.findall(rf"\b{RELATION_PHRASES[predicate]}\b", text)) == stated, text
        for relation in prompt.relations:
            subject, obj = (
                prompt.surface(scene.entities[index].shape) for index in (relation.subject, relation.object)
            )
            assert re.search(rf"\b{subject}\b.*\b{RELATION_PHRASES[relation.predicate]}\b.*\b{obj}\b", text), text


def test_captions_state_varied_subsets_of_relations(training_captions):
    with_several = [prompt for prompt in training_captions if len(prompt.scene.relations) >= 2]
    assert any(len(prompt.relations) == 1 for prompt in with_several)
    assert any(len(prompt.relations) == len(prompt.scene.relations) for prompt in with_several)


def test_training_vocabulary_is_exactly_the_words_of_training_captions(training_captions):
    vocabulary = training_vocabulary()
    used = set()
    for prompt in training_captions:
        words = set(words_of(prompt.text))
        assert words <= vocabulary, (words - vocabulary, prompt.text)
        used |= words
    assert used == vocabulary
    assert {*COLOURS, *SHAPES, *SIZES, *STYLES, *BACKGROUNDS, "two", "three", "crosses"} <= vocabulary
    assert not PARAPHRASE_WORDS & vocabulary
    assert {
        "crimson",
        "cube",
        "hollow",
        "big",
        "tiny",
        "little",
        "solid",
        "dark",
        "box",
        "plus",
        "signs",
    } <= PARAPHRASE_WORDS


def test_paraphrase_captions_use_only_paraphrases_of_visual_words(paraphrase_captions):
    seen_paraphrases = set()
    for prompt in paraphrase_captions:
        words = set(words_of(prompt.text))
        assert prompt.paraphrased
        assert not words & PARAPHRASED_TRAINING_WORDS, prompt.text
        for training_word, surface in prompt.wording:
            assert surface in PARAPHRASES[training_word]
            assert mentions(prompt.text, surface) or mentions(prompt.text, plural_of(surface)), prompt.text
            seen_paraphrases.add(surface)
        assert words - training_vocabulary() <= PARAPHRASE_WORDS
    assert seen_paraphrases == {option for options in PARAPHRASES.values() for option in options}


def test_captions_use_many_templates_and_noun_phrase_forms(training_captions):
    sample = training_captions[:200]
    assert len({prompt.template for prompt in sample}) >= 5
    openings = {" ".join(words_of(prompt.text)[:2]) for prompt in sample}
    assert len(openings) >= 5, openings
    colours = "|".join(COLOURS)
    assert any(re.search(rf"\bin ({colours})\b", prompt.text) for prompt in sample)
    assert any(re.search(rf"\b(small|large) ({colours})\b", prompt.text) for prompt in sample)
    assert any(re.search(r"\b(filled|outlined) (small|large)\b", prompt.text) for prompt in sample)
    assert any(
        re.search(rf"\b({colours}) (filled |outlined )?\w+ of (small|large) size\b", prompt.text) for prompt in sample
    )
    assert len({prompt.text for prompt in sample}) > 190
    assert {template.name for template in TEMPLATES} >= {prompt.template for prompt in training_captions}


def test_articles_agree_with_the_next_word(training_captions, paraphrase_captions):
    pairs = set()
    for prompt in training_captions + paraphrase_captions:
        for article, word in re.findall(r"\b(an?) (\w+)", prompt.text, flags=re.IGNORECASE):
            assert (article.lower() == "an") == (word[0] in "aeiou"), prompt.text
            pairs.add(f"{article.lower()} {word}")
    assert {"an orange", "an outlined", "an amber", "an emerald", "a hollow", "a huge"} <= pairs


def test_prompt_sets_are_deterministic_per_seed_and_apart_from_training():
    sizes = {"seen": 20, "unseen_combinations": 20, "paraphrase": 20}
    first, again, other = prompt_sets(5, sizes), prompt_sets(5, sizes), prompt_sets(6, sizes)
    assert list(first) == list(PROMPT_SETS) and all(len(first[name]) == 20 for name in PROMPT_SETS)
    assert first == again
    for name in PROMPT_SETS:
        assert [prompt.text for prompt in first[name]] != [prompt.text for prompt in other[name]]
    rng = training_rng(5)
    training = [training_example(rng) for _ in range(20)]
    assert [prompt.scene for prompt in training] != [prompt.scene for prompt in first["seen"]]
    assert list(prompt_sets(5, {"paraphrase": 3})) == ["paraphrase"]
    with pytest.raises(ValueError, match="unknown prompt set"):
        prompt_sets(5, {"seen": 2, "typos": 1})


def held_out_pairs_of(scene: Scene) -> set[tuple[str, str]]:
    return {(entity.colour, entity.shape) for entity in scene.entities} & set(HELD_OUT_PAIRS)


def test_only_the_unseen_combinations_set_holds_held_out_pairs(training_captions):
    sets = prompt_sets(2, {"seen": 100, "unseen_combinations": 100, "paraphrase": 100})
    assert all(held_out_pairs_of(prompt.scene) for prompt in sets["unseen_combinations"])
    for prompt in training_captions + sets["seen"] + sets["paraphrase"]:
        assert not held_out_pairs_of(prompt.scene)
    vocabulary = training_vocabulary()
    for prompt in sets["seen"] + sets["unseen_combinations"]:
        assert not prompt.paraphrased and set(words_of(prompt.text)) <= vocabulary
    assert all(prompt.paraphrased for prompt in sets["paraphrase"])


def test_a_shape_negative_differs_from_its_caption_in_shape_words_only():
    rng = training_rng(3)
    shape_words = set(SHAPES) | {plural_of(shape) for shape in SHAPES}
    traded = 0
    for _ in range(300):
        caption, negative = training_example_with_shape_negative(rng)
        ours, theirs = words_of(caption.text), words_of(negative.text)
        assert len(ours) == len(theirs)
        changed = [(mine, other) for mine, other in zip(ours, theirs, strict=True) if mine != other]
        assert changed and all(mine in shape_words and other in shape_words for mine, other in changed)
        assert not held_out_pairs_of(caption.scene) and not held_out_pairs_of(negative.scene)
        before, after = caption.scene.entities, negative.scene.entities
        assert [(e.colour, e.size, e.centres) for e in before] == [(e.colour, e.size, e.centres) for e in after]
        moved = sum(old.shape != new.shape for old, new in zip(before, after, strict=True))
        assert moved in (1, 2)
        traded += moved == 2
    assert 30 < traded < 270  # both kinds of change occur: a new shape, and two entities trading shapes


def test_no_shape_negative_where_every_change_would_make_a_held_out_pair_or_change_nothing():
    colour, free_shape = HELD_OUT_PAIRS[0]
    others = [shape for shape in SHAPES if shape != free_shape]  # three shapes: the held-out one is the only free one

    def shapes_after_swaps(sizes: list[str], seeds: int = 20) -> set[tuple[str, ...]] | None:
        centres = [((10 + 20 * i, 10),) for i in range(3)]
        scene = Scene("white", "filled", tuple(map(Entity, others, [colour] * 3, sizes, centres)), ())
        swaps = [shape_swapped(scene, np.random.default_rng(seed)) for seed in range(seeds)]
        return None if None in swaps else {tuple(entity.shape for entity in swap.entities) for swap in swaps}

    assert shapes_after_swaps(["small"] * 3) is None
    # the middle entity larger: trading shapes with it changes the scene; the two small ones still may not trade
    assert shapes_after_swaps(["small", "large", "small"]) == {
        (others[1], others[0], others[2]),
        (others[0], others[2], others[1]),
    }


def expected_question_count(prompt: PocketPrompt) -> int:
    return 2 + sum(3 + (entity.count > 1) for entity in prompt.scene.entities) + len(prompt.relations)


CATEGORIES = {
    "entity": ("entity", "whole"),
    "colour": ("attribute", "color"),
    "size": ("attribute", "size"),
    "count": ("other", "count"),
    "relation": ("relation", "spatial"),
    "background": ("global", "global"),
    "style": ("global", "global"),
}


def test_question_graph_structure_and_texts():
    prompts = [prompt for group in prompt_sets(9, dict.fromkeys(PROMPT_SETS, 30)).values() for prompt in group]
    kinds = set()
    for prompt in prompts:
        graph = question_graph(prompt)
        assert [question.proposition_id for question in graph] == list(range(1, expected_question_count(prompt) + 1))
        by_id = {question.proposition_id: question for question in graph}
        for question in graph:
            kinds.add(question.query.kind)
            assert parse_question(question.question) == question.query
            assert (question.category_broad, question.category_detailed) == CATEGORIES[question.query.kind]
            assert question.tuple_text.startswith(f"{question.category_broad} - ")
            assert mentions(prompt.text, question.keywords), (question.keywords, prompt.text)
            parents = [by_id[parent] for parent in question.dependencies]
            expected_parents = {
                "relation": [question.query.shape, question.query.other],
                "entity": [],
                "background": [],
                "style": [],
            }.get(question.query.kind, [question.query.shape])
            assert [(parent.query.kind, parent.query.shape) for parent in parents] == [
                ("entity", shape) for shape in expected_parents
            ]
        shapes = [question.query.shape for question in graph if question.query.kind == "entity"]
        assert shapes == [entity.shape for entity in prompt.scene.entities]
    assert kinds == set(CATEGORIES)


def test_question_rows_of_a_paraphrased_group():
    scene = Scene("black", "outlined", (Entity("cross", "orange", "large", ((12, 12), (40, 40))),), ())
    prompt = describe(scene, np.random.default_rng(0), paraphrase=True)
    rows = question_rows("paraphrase_000", prompt)
    assert [row["question_natural_language"] for row in rows] == [
        "Is the background black?",
        "Are the shapes outlined?",
        "Is there a cross?",
        "Are the crosses orange?",
        "Are the crosses large?",
        "Are there two crosses?",
    ]
    assert [row["keywords"] for row in rows] == [
        "dark",
        "hollow",
        "plus signs",
        "amber",
        prompt.surface("large"),
        "two",
    ]
    assert [row["dependency"] for row in rows] == ["0", "0", "0", "3", "3", "3"]
    assert rows[5]["tuple"] == "other - count (cross; ==2)" and rows[0]["tuple"] == "global - (background black)"
    assert all(row["text"] == prompt.text and row["item_id"] == "paraphrase_000" for row in rows)


def test_written_folder_loads_in_both_modes(tmp_path):
    sets = prompt_sets(4, dict.fromkeys(PROMPT_SETS, 8))
    prompts = {f"{name}_{index:03d}": prompt for name, group in sets.items() for index, prompt in enumerate(group)}
    folder = write_dpg_folder(tmp_path / "pocket", prompts)
    bench = load_bench(folder)
    assert bench.warnings == []
    assert bench.prompts == {item: prompt.text for item, prompt in prompts.items()}
    for item, prompt in prompts.items():
        questions = bench.questions[item]
        assert [question.text for question in questions] == [question.question for question in question_graph(prompt)]
        assert len(questions) == expected_question_count(prompt)
        entity_ids = {question.proposition_id for question in questions if question.category_broad == "entity"}
        assert all(set(question.dependencies) <= entity_ids for question in questions)
    official = load_bench(folder, official_quirks=True)
    first = next(iter(prompts))
    assert len(official.warnings) == 1 and "dropped the first data row" in official.warnings[0]
    assert list(official.lost) == [first] and list(official.lost[first]) == [1]
    assert official.questions[first] == bench.questions[first][1:]
    assert {item: official.questions[item] for item in prompts if item != first} == {
        item: bench.questions[item] for item in prompts if item != first
    }


def test_folder_without_relations_keeps_the_dependency_column_text(tmp_path):
    rng = np.random.default_rng(3)
    scenes = [
        Scene("gray", "filled", (Entity(shape, "red", "small", ((30, 30),)),), ()) for shape in ("circle", "cross")
    ]
    prompts = {f"single_{index}": describe(scene, rng) for index, scene in enumerate(scenes)}
    folder = write_dpg_folder(tmp_path, prompts)
    assert "0,0" in (folder / "dpg_bench.csv").read_text()
    assert load_bench(folder).warnings == []
    official = load_bench(folder, official_quirks=True)
    assert [question.dependencies for question in official.questions["single_1"]] == [(), (), (), (3,), (3,)]
    with pytest.raises(ValueError, match="item ids"):
        write_dpg_folder(tmp_path, {"007": prompts["single_0"]})


def all_queries() -> list[Query]:
    queries = [Query("entity", shape) for shape in SHAPES]
    for shape in SHAPES:
        for plural in (False, True):
            queries += [Query("colour", shape, colour, plural=plural) for colour in COLOURS]
            queries += [Query("size", shape, size, plural=plural) for size in SIZES]
        queries += [Query("count", shape, count=count) for count in COUNT_WORDS]
    for (shape, other), predicate in ((pair, predicate) for pair in permutations(SHAPES, 2) for predicate in RELATIONS):
        queries.append(Query("relation", shape, predicate, other=other))
    queries += [Query("background", value=background) for background in BACKGROUNDS]
    return queries + [Query("style", value=style) for style in STYLES]


def test_question_texts_parse_back_to_their_queries():
    queries = all_queries()
    texts = [question_text(query) for query in queries]
    assert len(set(texts)) == len(queries)
    assert [parse_question(text) for text in texts] == queries
    assert question_text(Query("colour", "cross", "red", plural=True)) == "Are the crosses red?"
    assert question_text(Query("relation", "circle", "left of", other="square")) == (
        "Is the circle to the left of the square?"
    )
    assert parse_question("  Are there three triangles? ") == Query("count", "triangle", count=3)
    assert plural_of("plus sign") == "plus signs" and plural_of("box") == "boxes"


@pytest.mark.parametrize(
    "text",
    [
        "Is the kite red?",
        "Is there a cube?",
        "Is the circle crimson?",
        "Is the circle red",
        "Are there four circles?",
        "",
    ],
)
def test_foreign_questions_are_refused(text):
    with pytest.raises(QueryError):
        parse_question(text)
