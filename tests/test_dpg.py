"""DPG-Bench: loading, the scoring protocol on hand-computed cases, quirks, generation and resumption."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tests_support import free_port

from ella_demo.core.errors import InputError
from ella_demo.core.settings import GenerationSettings
from ella_demo.dpg import data as dpg
from ella_demo.dpg import scoring
from ella_demo.dpg.generation import generate_grids, grid_is_valid, make_grid, shard
from ella_demo.dpg.vqa import answer_with_model, read_answers, split_grid

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "data" / "dpg"


def grid_settings(resolution: int | None, steps: int) -> GenerationSettings:
    """What `dpg generate --resolution R --steps S` asks of every grid (None: no --resolution)."""
    return GenerationSettings(prompt="", height=resolution, width=resolution, num_inference_steps=steps, num_images=4)


QUIRKS = Path(__file__).parent / "data" / "dpg_quirks"


@pytest.fixture
def fixture_dir(tmp_path) -> Path:
    copy = tmp_path / "dpg"
    shutil.copytree(FIXTURE, copy)
    return copy


def test_loader_reads_questions_and_reports_every_problem():
    bench = dpg.load_bench(FIXTURE)
    assert sorted(bench.prompts) == ["item_a", "item_b", "item_c", "item_d"]
    assert [q.proposition_id for q in bench.questions["item_a"]] == [1, 2, 3, 4]
    assert bench.questions["item_a"][2].dependencies == (2,)
    assert bench.questions["item_a"][0].dependencies == ()  # 0 means none
    warnings = "\n".join(bench.warnings)
    assert "1 question(s) of item item_x skipped: prompts/item_x.txt does not exist" in warnings
    assert "item item_b question 3 depends on unknown proposition(s) [9]" in warnings
    assert "1 prompt(s) have no questions and are not scored: item_d" in warnings


def test_loader_errors_name_what_is_wrong(fixture_dir):
    with pytest.raises(dpg.DpgDataError, match="prompts does not exist"):
        dpg.load_prompts(fixture_dir / "nowhere")
    (fixture_dir / "dpg_bench.csv").rename(fixture_dir / "other.csv")
    with pytest.raises(dpg.DpgDataError, match=r"dpg_bench\.csv is missing"):
        dpg.load_bench(fixture_dir)
    lines = (fixture_dir / "other.csv").read_text().splitlines()
    (fixture_dir / "dpg_bench.csv").write_text("\n".join([lines[0].replace(",tuple", ""), *lines[1:]]))
    with pytest.raises(dpg.DpgDataError, match="lacks the columns tuple"):
        dpg.load_bench(fixture_dir)
    bad = lines[1].replace(",kite,1,0,", ",kite,1,x,")
    (fixture_dir / "dpg_bench.csv").write_text("\n".join([lines[0], bad]))
    with pytest.raises(dpg.DpgDataError, match="row 2: dependency 'x' is not a comma-separated list"):
        dpg.load_bench(fixture_dir)


def test_scoring_matches_hand_computed_values():
    report = scoring.score(dpg.load_bench(FIXTURE), read_answers(FIXTURE / "answers.csv"))
    # item_a tiles: all yes = 1; q1 "no" zeroes q2 and, through it, q3 = 1/4; "Yes." is not "yes" and
    # zeroes q3, q4 "no" = 1/4; q3 "no" = 3/4  ->  56.25
    assert report.per_prompt["item_a"]["tiles"] == pytest.approx([100, 25, 25, 75])
    assert report.per_prompt["item_a"]["score"] == pytest.approx(56.25)
    # item_b: the unknown parent of q3 is ignored -> 1, 2/3, 1/3, 0 -> 50
    assert report.per_prompt["item_b"]["tiles"] == pytest.approx([100, 200 / 3, 100 / 3, 0])
    # item_c: tile 3 has no answers at all -> counts as "no" and is reported
    assert report.per_prompt["item_c"]["score"] == pytest.approx(50)
    assert report.overall == pytest.approx((56.25 + 50 + 50) / 3)
    assert "3 (tile, question) answer(s) were missing" in "\n".join(report.warnings)
    # entity questions over all tiles: item_a q1 [1,0,1,1], item_b q1 [1,1,0,0], item_c q1 [1,1,0,0]
    assert report.categories_broad["entity"] == pytest.approx(700 / 12)
    assert report.categories_detailed["part"] == pytest.approx(50)


def test_official_quirks_refuse_a_file_the_official_scorer_cannot_read():
    # Every dependency in this fixture is a single number, so pandas reads the column as int64 and
    # the official scorer's `.split(",")` fails: it produces no score at all. (The old quirks mode
    # scored this file; it only dropped the first row and used the last tile for categories.)
    with pytest.raises(dpg.DpgDataError, match=r"row 3: dependency is the number 1 \(pandas reads the whole column"):
        dpg.load_bench(FIXTURE, official_quirks=True)


# tests/data/dpg_quirks, row by row (file rows; row 1 is the header):
#   2-4   q_drop 1 (root), 2 (<- 1), 3 (root)       row 2 is the first data row: the official scorer drops it
#   5-6   q_split 1 (root), 2 (<- 1)                 q_split's rows are split by q_guard's...
#   7-9   q_guard 1 (root), 2 (<- "1,9"), 3 (root)   9 does not exist
#   10-11 q_split 3 (root), 4 (<- 3)                 ...so this block replaces questions 1 and 2
#   12-15 q_order 3 (<- 2), 1 (root), 2 (<- 1), 4 (<- 2)   children listed before their parents
#   16-18 q_notuple 1, 2 (<- 1, empty tuple), 3
#   19    q_noimg 1 (no answers)                     20  q_orphan 1 (answers, but no prompt file)
# and prompts/q_none.txt has answers but no questions.


def quirks_report() -> scoring.Report:
    bench = dpg.load_bench(QUIRKS, official_quirks=True)
    return scoring.score(bench, read_answers(QUIRKS / "answers.csv"), official_quirks=True)


def test_official_quirks_read_the_rows_like_the_official_scorer():
    bench = dpg.load_bench(QUIRKS, official_quirks=True)
    questions = {item: [q.proposition_id for q in qs] for item, qs in bench.questions.items()}
    assert questions == {
        "q_drop": [2, 3],  # its question 1 was the dropped first data row
        "q_split": [3, 4],  # the second block replaced questions 1 and 2
        "q_guard": [1, 2, 3],
        "q_order": [3, 1, 2, 4],  # file order, which is the order dependencies are zeroed in
        "q_notuple": [1, 2, 3],
        "q_noimg": [1],
        "q_orphan": [1],  # kept: the official scorer never reads prompt files
    }
    assert bench.questions["q_guard"][1].dependencies == (1, 9)
    assert bench.questions["q_notuple"][1].tuple_text is None
    warnings = "\n".join(bench.warnings)
    assert "dropped the first data row (row 2: item q_drop, proposition 1)" in warnings
    assert (
        "rows of item q_split are not contiguous: the block starting at row 10 replaces the one starting at row 5, "
        "whose question(s) [1, 2] are lost"
    ) in warnings
    assert "1 item(s) have questions but no prompt file (q_orphan)" in warnings
    # The default mode reads all of it: every question of every item that has a prompt file.
    default = dpg.load_bench(QUIRKS)
    assert [q.proposition_id for q in default.questions["q_split"]] == [1, 2, 3, 4]
    assert [q.proposition_id for q in default.questions["q_drop"]] == [1, 2, 3]
    assert "q_orphan" not in default.questions


def test_official_quirks_scores_match_hand_computed_values():
    report = quirks_report()
    assert report.official_quirks
    # q_split, questions 3 and 4 only (4 <- 3). Tiles (answers to 3, 4): yes yes = 1; yes yes = 1;
    # no yes -> 4 zeroed = 0; yes yes = 1  ->  (1 + 1 + 0 + 1) / 4 = 0.75
    assert report.per_prompt["q_split"]["tiles"] == pytest.approx([100, 100, 0, 100])
    # q_guard: question 1 is "no" on every tile, so question 2's check stops at parent 1 and never
    # reaches the unknown 9. Tiles: 1/3, 1/3, 0, 1/3  ->  0.25
    assert report.per_prompt["q_guard"]["tiles"] == pytest.approx([100 / 3, 100 / 3, 0, 100 / 3])
    # q_order, one pass in file order 3, 1, 2, 4 (3 <- 2, 2 <- 1, 4 <- 2):
    #  tile 0: 1 no, 2 yes, 3 yes, 4 yes: 3 sees parent 2 still at 1 and keeps it; 2 is zeroed by 1;
    #          4 comes after 2 and is zeroed  ->  1/4
    #  tile 1: all yes -> 1.  tile 2: 2 no -> 3 and 4 zeroed, 1 scores -> 1/4
    #  tile 3: 1 "Yes" and 4 "yes " are not exactly "yes" -> 0; 3 keeps 1 (2 not zeroed yet); 2 and 4
    #          zeroed -> 1/4.   (1/4 + 1 + 1/4 + 1/4) / 4 = 0.4375
    assert report.per_prompt["q_order"]["tiles"] == pytest.approx([25, 100, 25, 25])
    # q_notuple: 1, 2/3, 1/3 (2 zeroed by 1), 2/3  ->  2/3. Its missing tuple costs categories only.
    assert report.per_prompt["q_notuple"]["score"] == pytest.approx(200 / 3)
    # q_orphan: yes, yes, no, yes -> 0.75
    assert report.per_prompt["q_orphan"]["score"] == pytest.approx(75)
    # Not scored: q_drop (question 2's parent 1 was the dropped row: KeyError on tile 0), q_noimg (no
    # answers, i.e. no image), q_none (answers but no questions).
    assert sorted(report.per_prompt) == ["q_guard", "q_notuple", "q_order", "q_orphan", "q_split"]
    # overall = (0.75 + 0.25 + 0.4375 + 2/3 + 0.75) / 5 x 100 = (137/48) / 5 x 100 = 57.083...
    assert report.overall == pytest.approx(137 / 240 * 100)
    warnings = "\n".join(report.warnings)
    assert (
        "item q_drop not scored (absent from the overall and the categories): on tile 0, question 2 depends "
        "on proposition 1, which is not among the item's questions (it was the CSV's first data row"
    ) in warnings
    assert "answers for item q_none skipped: it has no questions" in warnings
    assert (
        "1 item(s) have no answers at all and are not scored (the official scorer scores only the images it "
        "finds): q_noimg"
    ) in warnings
    assert "item q_notuple question 2 has no tuple" in warnings


def test_official_quirks_categories_come_from_the_tuple_and_the_last_tile_before_zeroing():
    report = quirks_report()
    # Last tile (3), answers BEFORE dependency zeroing, scored prompts only, one value per question:
    #   entity - whole:     q_split 3 yes=1, q_guard 1 no=0, q_order 1 "Yes"=0, q_order 2 yes=1 (zeroed
    #                       in the tile score, counted 1 here), q_notuple 1 yes=1, q_orphan 1 yes=1 -> 4/6
    #   relation - spatial: q_split 4 yes=1, q_order 3 yes=1 -> 2/2
    #   attribute - color:  q_guard 2 yes=1 (zeroed in the tile score), q_order 4 "yes "=0 -> 1/2
    #   global -:           q_guard 3 yes=1 -> 1/1   (q_notuple's 3 is after its missing tuple: lost)
    assert report.categories_detailed == pytest.approx(
        {"entity - whole": 400 / 6, "relation - spatial": 100, "attribute - color": 50, "global -": 100}
    )
    # L1 = the L2 name up to its first "-"
    assert report.categories_broad == pytest.approx(
        {"entity": 400 / 6, "relation": 100, "attribute": 50, "global": 100}
    )


def test_default_mode_differs_from_quirks_on_the_same_files():
    report = scoring.score(dpg.load_bench(QUIRKS), read_answers(QUIRKS / "answers.csv"))
    # q_drop keeps question 1: 1, 1/3 (2 zeroed), 1/3, 2/3  ->  7/12
    assert report.per_prompt["q_drop"]["score"] == pytest.approx(700 / 12)
    # q_split with all 4 questions (2 <- 1, 4 <- 3): 2/4, 3/4, 2/4, 1  ->  0.6875
    assert report.per_prompt["q_split"]["tiles"] == pytest.approx([50, 75, 50, 100])
    # q_order to a fixed point, answers trimmed and lower-cased: 0, 1, 1/4, 1  ->  0.5625
    assert report.per_prompt["q_order"]["tiles"] == pytest.approx([0, 100, 25, 100])
    # q_noimg has no answers: scored 0. q_orphan has no prompt file: not scored.
    assert report.per_prompt["q_noimg"]["score"] == 0 and "q_orphan" not in report.per_prompt
    # (7/12 + 0.6875 + 0.25 + 0.5625 + 2/3 + 0) / 6 = (132/48) / 6
    assert report.overall == pytest.approx(132 / 48 / 6 * 100)


def test_official_quirks_missing_parent_fails_only_when_the_check_reaches_it(tmp_path):
    answers = read_answers(QUIRKS / "answers.csv")
    answers[("q_guard", 2, 1)] = "yes"  # now question 2's check passes parent 1 and reaches 9
    bench = dpg.load_bench(QUIRKS, official_quirks=True)
    report = scoring.score(bench, answers, official_quirks=True)
    assert "q_guard" not in report.per_prompt
    assert (
        "item q_guard not scored (absent from the overall and the categories): on tile 2, question 2 depends "
        "on proposition 9, which is not among the item's questions (the CSV has no such proposition"
    ) in "\n".join(report.warnings)
    # (0.75 + 0.4375 + 2/3 + 0.75) / 4; and q_guard's questions left the categories: global has none
    assert report.overall == pytest.approx((0.75 + 0.4375 + 2 / 3 + 0.75) / 4 * 100)
    assert "global" not in report.categories_broad
    # The default mode ignores the unknown parent whatever the answers: tile 2 is 1 yes, 2 yes, 3 no = 2/3
    default = scoring.score(dpg.load_bench(QUIRKS), answers)
    assert default.per_prompt["q_guard"]["tiles"][2] == pytest.approx(200 / 3)


HEADER = (
    "item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,question_natural_language"
)


def write_bench(folder: Path, rows: list[str], prompts: tuple[str, ...] = ("a",)) -> Path:
    """A bench folder: prompts/<id>.txt for each of `prompts` and dpg_bench.csv of HEADER + `rows`."""
    (folder / "prompts").mkdir(parents=True, exist_ok=True)
    for item in prompts:
        (folder / "prompts" / f"{item}.txt").write_text(f"prompt {item}")
    (folder / "dpg_bench.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return folder


def row(item: str, proposition: str, dependency: str, tuple_text: str = "entity - whole (x)", question: str = "Q?"):
    return f"{item},t,k,{proposition},{dependency},entity,whole,{tuple_text},{question}"


def test_official_quirks_repeated_ids_replace_in_place_and_int_truncates(tmp_path):
    folder = write_bench(tmp_path, [
        row("z", "1", "0"),  # dropped first row
        row("a", "1", "0", question="first?"), row("a", "2", '"1,0"'), row("a", "1", "2", question="again?"),
        row("a", "3.7", "0"),  # the column holds a decimal: pandas reads floats, int() truncates 3.7 to 3
    ])  # fmt: skip
    bench = dpg.load_bench(folder, official_quirks=True)
    (first, second, third) = bench.questions["a"]
    # The later row 1 replaced the earlier one (text and dependency) but kept its place, first
    assert (first.proposition_id, first.text, first.dependencies) == (1, "again?", (2,))
    assert (second.proposition_id, second.dependencies) == (2, (1,))
    assert third.proposition_id == 3
    warnings = "\n".join(bench.warnings)
    assert "item a repeats proposition 1 (row 5): the later row replaces the earlier one" in warnings
    assert "row 6: proposition_id 3.7 is truncated to 3 by int()" in warnings
    # One pass in order: 1 (<- 2) sees 2 still at 1; then 2 (<- 1) sees 1 answered "no"
    answers = {("a", tile, pid): answer for tile in range(4) for pid, answer in ((1, "no"), (2, "yes"), (3, "yes"))}
    report = scoring.score(bench, answers, official_quirks=True)
    assert report.per_prompt["a"]["tiles"] == pytest.approx([100 / 3] * 4)
    # The default mode refuses both the decimal id and, without it, the repeated id
    with pytest.raises(dpg.DpgDataError, match=r"proposition_id '3\.7' is not a comma-separated list of integers"):
        dpg.load_bench(folder)
    (folder / "dpg_bench.csv").write_text("\n".join((folder / "dpg_bench.csv").read_text().splitlines()[:-1]))
    with pytest.raises(dpg.DpgDataError, match=r"item a repeats proposition ids: \[1, 1, 2\]"):
        dpg.load_bench(folder)


@pytest.mark.parametrize(
    ("rows", "message", "default_error"),
    [
        # an empty dependency: the default mode reads it as "none"
        ([row("a", "1", "0"), row("a", "2", "")], r"row 3: dependency is an empty cell, which cannot be split", None),
        # an empty part: the default mode skips it
        ([row("a", "1", "0"), row("a", "2", '"1,,0"')], r"row 3: dependency '1,,0' has a part that is not an", None),
        ([row("a", "1", "0"), row("a", "", '"1,0"')], r"row 3: proposition_id is an empty cell, which int\(\) refuses",
         "row 3: empty proposition_id"),
        # the (dropped) first row makes pandas read the column as text, and int("2.0") fails
        ([row("a", "x", "0"), row("a", "2.0", '"1,0"')], r"row 3: proposition_id is '2\.0', which int\(\) refuses",
         "row 2: proposition_id 'x' is not"),
        ([row("a", "1", "0"), row("a", "2", '"1,0"', question="")], r"row 3: question_natural_language is an empty",
         None),
        # pandas reads "NA" (and "None", "null", ...) as a missing value
        ([row("a", "1", "0"), row("a", "2", '"1,0"', question="NA")], r"row 3: question_natural_language is an empty",
         None),
    ],
)  # fmt: skip
def test_official_quirks_stop_where_the_official_scorer_stops(tmp_path, rows, message, default_error):
    folder = write_bench(tmp_path, rows)
    with pytest.raises(dpg.DpgDataError, match=message) as raised:
        dpg.load_bench(folder, official_quirks=True)
    assert "The official scorer stops with an error on this file" in str(raised.value)
    if default_error is None:
        dpg.load_bench(folder)
    else:
        with pytest.raises(dpg.DpgDataError, match=default_error):
            dpg.load_bench(folder)


def test_official_quirks_numeric_item_ids_and_dotted_ids_match_no_image(tmp_path):
    numeric = write_bench(tmp_path / "numeric", [row("7", "1", "0"), row("7", "1", '"0"'), row("8", "1", '"1,0"')],
                          prompts=("7", "8"))  # fmt: skip
    bench = dpg.load_bench(numeric, official_quirks=True)
    assert bench.questions == {} and "pandas reads item_id as numbers" in "\n".join(bench.warnings)
    answers = {("8", tile, 1): "yes" for tile in range(4)}
    report = scoring.score(bench, answers, official_quirks=True)
    assert math.isnan(report.overall) and report.per_prompt == {}
    assert "no prompt could be scored; the official scorer reports nan" in "\n".join(report.warnings)
    dotted = write_bench(tmp_path / "dotted", [row("z", "1", "0"), row("v1.5", "1", '"0,0"')], prompts=("v1.5",))
    bench = dpg.load_bench(dotted, official_quirks=True)
    report = scoring.score(bench, {("v1.5", tile, 1): "yes" for tile in range(4)}, official_quirks=True)
    assert report.per_prompt == {} and "file name up to the first '.' (v1)" in "\n".join(report.warnings)


def test_bench_and_scoring_modes_must_match_and_errors_are_user_errors():
    from ella_demo.core.errors import ExplorerError

    assert issubclass(dpg.DpgDataError, ExplorerError) and issubclass(dpg.DpgDataError, ValueError)
    with pytest.raises(ValueError, match="same official_quirks setting"):
        scoring.score(dpg.load_bench(QUIRKS), {}, official_quirks=True)


def test_dependency_chains_zero_in_any_order():
    questions = [
        dpg.Question("i", 3, (2,), "c", "c", "child"),
        dpg.Question("i", 2, (1,), "b", "b", "parent"),
        dpg.Question("i", 1, (), "a", "a", "root"),
    ]
    assert scoring.tile_scores(questions, {1: "no", 2: "yes", 3: "yes"}) == {3: 0, 2: 0, 1: 0}
    assert scoring.tile_scores(questions, {1: " YES ", 2: "yes", 3: "yes"}) == {3: 1, 2: 1, 1: 1}


def test_report_files(tmp_path):
    report = scoring.score(dpg.load_bench(FIXTURE), read_answers(FIXTURE / "answers.csv"))
    json_path, csv_path = scoring.write_report(report, tmp_path / "report.json")
    saved = json.loads(json_path.read_text())
    assert saved["overall"] == pytest.approx(report.overall)
    assert set(saved["categories"]) == {"broad", "detailed"}
    assert len(csv_path.read_text().splitlines()) == 1 + 4 * (4 + 3 + 3)


def test_answers_file_errors(tmp_path):
    path = tmp_path / "answers.csv"
    path.write_text("item_id,tile,answer\nitem_a,0,yes\n")
    with pytest.raises(dpg.DpgDataError, match="lacks the columns proposition_id"):
        read_answers(path)
    path.write_text("item_id,tile,proposition_id,answer\nitem_a,4,1,yes\n")
    with pytest.raises(dpg.DpgDataError, match="tile must be 0-3"):
        read_answers(path)


def test_sharding_covers_every_item_exactly_once():
    items = [f"item{index:04d}" for index in range(1065)]
    for world in (1, 2, 3, 8):
        shards = [shard(items, rank, world) for rank in range(world)]
        flat = [item for part in shards for item in part]
        assert sorted(flat) == items and len(flat) == len(set(flat))
    with pytest.raises(ValueError, match="rank must be from 0 to 1"):
        shard(items, 2, 2)


def test_grids_split_back_into_their_tiles_row_major():
    tiles = [Image.new("RGB", (8, 8), color) for color in ("red", "green", "blue", "white")]
    parts = split_grid(make_grid(tiles))
    assert [part.getpixel((3, 3)) for part in parts] == [(255, 0, 0), (0, 128, 0), (0, 0, 255), (255, 255, 255)]


def test_generation_writes_valid_grids_and_resumes_without_redoing_work(tiny, tmp_path):
    prompts = dpg.load_prompts(FIXTURE)
    settings = grid_settings(32, steps=2)
    first = generate_grids(tiny, {k: prompts[k] for k in ("item_a", "item_b")}, tmp_path, settings)
    assert first == {"generated": 2, "skipped": 0}
    for model in ("clip", "ella"):
        assert grid_is_valid(tmp_path / model / "item_a.png", 32)
        meta = json.loads((tmp_path / model / "meta.json").read_text())
        assert meta["random_weights"] is True and "seed_policy" in meta
    # A killed run: one grid half-written, one missing. The rerun redoes only those.
    (tmp_path / "ella" / "item_b.png").write_bytes(b"\x89PNG truncated")
    before = (tmp_path / "clip" / "item_a.png").stat().st_mtime_ns
    second = generate_grids(tiny, prompts, tmp_path, settings)
    assert second == {"generated": 3, "skipped": 1}  # item_b (ella only), item_c, item_d
    assert (tmp_path / "clip" / "item_a.png").stat().st_mtime_ns == before
    assert all(grid_is_valid(tmp_path / "ella" / f"{item}.png", 32) for item in prompts)


def test_grids_without_a_resolution_are_tiles_of_the_models_native_size(tiny, tmp_path):
    prompts = dpg.load_prompts(FIXTURE)
    counts = generate_grids(tiny, {"item_a": prompts["item_a"]}, tmp_path, grid_settings(None, steps=1))
    assert counts == {"generated": 1, "skipped": 0}
    for model in ("clip", "ella"):
        assert Image.open(tmp_path / model / "item_a.png").size == (2 * tiny.native_size,) * 2 == (128, 128)
        assert json.loads((tmp_path / model / "meta.json").read_text())["resolution"] == 64
    # A rerun without a resolution recognises the native-size grids as done.
    assert generate_grids(tiny, prompts, tmp_path, grid_settings(None, steps=1), ("clip",))["skipped"] == 1
    with pytest.raises(ValueError, match="2x2 of square images: got 4 of 32x64"):
        generate_grids(tiny, prompts, tmp_path, GenerationSettings(prompt="", width=32, num_images=4))


def test_cli_generate_without_resolution_makes_native_size_tiles(tmp_path, capsys):
    from ella_demo.cli import main

    argv = ["dpg", "generate", "--preset", "tiny", "--device", "cpu", "--dpg-dir", str(FIXTURE), "--out", str(tmp_path),
            "--items", "item_b", "--steps", "1", "--models", "ella"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert Image.open(tmp_path / "ella" / "item_b.png").size == (128, 128)
    assert json.loads((tmp_path / "ella" / "meta.json").read_text())["resolution"] == 64


def test_scoring_with_a_model_answers_every_tile(tiny, tmp_path):
    prompts = dpg.load_prompts(FIXTURE)
    generate_grids(tiny, prompts, tmp_path, grid_settings(16, steps=1), model_names=("ella",))
    asked = []

    def answerer(image, questions):
        asked.append((image.size, len(questions)))
        return ["yes"] * len(questions)

    bench = dpg.load_bench(FIXTURE)
    answers, notes = answer_with_model(bench, tmp_path / "ella", answerer)
    assert notes == []
    assert len(asked) == 3 * 4 and all(size == (16, 16) for size, _ in asked)
    assert scoring.score(bench, answers).overall == pytest.approx(100)


def test_cli_round_trip_with_an_answers_file_and_a_chart(tmp_path):
    def cli(*arguments):
        result = subprocess.run([sys.executable, "-m", "ella_demo", "dpg", *arguments], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result

    scored = cli("score", "--dpg-dir", str(FIXTURE), "--vqa", f"answers:{FIXTURE / 'answers.csv'}",
                 "--out", str(tmp_path / "ella" / "report.json"))  # fmt: skip
    assert "overall 52.08" in scored.stdout
    quirks = cli("score", "--dpg-dir", str(QUIRKS), "--vqa", f"answers:{QUIRKS / 'answers.csv'}",
                 "--official-quirks", "--out", str(tmp_path / "clip" / "report.json"))  # fmt: skip
    assert "overall 57.08" in quirks.stdout
    cli("chart", f"CLIP={tmp_path / 'clip' / 'report.json'}", f"ELLA={tmp_path / 'ella' / 'report.json'}",
        "--out", str(tmp_path / "chart.png"))  # fmt: skip
    assert Image.open(tmp_path / "chart.png").width <= 1280


def test_cli_generate_limit_and_items(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ella_demo", "dpg", "generate", "--preset", "tiny", "--device", "cpu", "--dpg-dir",
         str(FIXTURE), "--out", str(tmp_path), "--items", "item_c,item_a", "--limit", "1", "--steps", "1",
         "--resolution", "16"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "clip").glob("*.png")) == ["item_a.png"]
    bad = subprocess.run(
        [sys.executable, "-m", "ella_demo", "dpg", "generate", "--preset", "tiny", "--dpg-dir", str(FIXTURE),
         "--out", str(tmp_path), "--items", "nope"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "--items names unknown item ids: nope" in bad.stderr


def save_tiny_blip(folder: Path) -> None:
    """A toy BLIP VQA model and processor saved the way a hub repo holds them."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "is", "there", "a", "kite", "boat", "?"]
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(words)})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    config = BlipConfig(
        text_config={"vocab_size": len(words), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "encoder_hidden_size": 32, "max_position_embeddings": 64,
                     "bos_token_id": 2, "sep_token_id": 3, "pad_token_id": 0},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
    )  # fmt: skip
    torch.manual_seed(0)
    BlipForQuestionAnswering(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def test_blip_backend_loads_from_a_local_folder_and_answers_each_question(tmp_path):
    from ella_demo.dpg.vqa import make_answerer

    save_tiny_blip(tmp_path / "blip")
    answerer = make_answerer(f"blip:{tmp_path / 'blip'}")
    replies = answerer(Image.new("RGB", (40, 40), "red"), ["is there a kite?", "is there a boat?", "is there a?"])
    assert len(replies) == 3 and all(isinstance(reply, str) for reply in replies)
    assert not answerer.model.training


def test_blip_backend_refuses_pickle_only_weights(tmp_path):
    import torch
    from transformers import BlipForQuestionAnswering

    from ella_demo.dpg.vqa import make_answerer

    save_tiny_blip(tmp_path / "blip")
    model = BlipForQuestionAnswering.from_pretrained(tmp_path / "blip")
    (tmp_path / "blip" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "blip" / "pytorch_model.bin")
    with pytest.raises(OSError):
        make_answerer(f"blip:{tmp_path / 'blip'}")


def test_unknown_vqa_backend_is_a_clear_error():
    from ella_demo.dpg.vqa import make_answerer

    with pytest.raises(dpg.DpgDataError, match="unknown VQA backend 'mplug'"):
        make_answerer("mplug")


def test_app_tab_browses_grids_and_answers(tiny, tmp_path):
    from gradio_client import Client

    from ella_demo.app import build_app, launch_app
    from ella_demo.dpg.browse import item_view, list_items

    prompts = dpg.load_prompts(FIXTURE)
    generate_grids(tiny, {k: prompts[k] for k in ("item_a", "item_b")}, tmp_path, grid_settings(16, steps=1))
    report = scoring.score(dpg.load_bench(FIXTURE), read_answers(FIXTURE / "answers.csv"))
    scoring.write_report(report, tmp_path / "ella" / "report.json")
    assert list_items(tmp_path) == ["item_a", "item_b"]
    with pytest.raises(InputError, match=r"must be an item of this results folder, got .*etc/passwd"):
        item_view(tmp_path, "../../etc/passwd")

    app = build_app(tiny, dpg_results=tmp_path)
    port = free_port()
    launch_app(app, port=port, prevent_thread_lock=True, quiet=True, allowed_paths=[str(tmp_path)])
    try:
        prompt, clip_grid, ella_grid, table = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            "item_a", api_name="/dpg_item"
        )
    finally:
        app.close()
    assert "A red kite above a white lighthouse" in prompt
    assert Image.open(clip_grid).size == Image.open(ella_grid).size == (32, 32)
    assert "Is the kite red?" in table
    # ELLA's answers to question 2 over tiles 1-4: tile 2's "yes" scores 0 because its parent failed
    assert "| 2. Is the kite red? | – · – · – · – | ✓ yes · ✗ yes · ✗ Yes. · ✓ yes |" in table


HOSTILE = "<img src=x onerror=alert(1)> | *x*"


def results_folder(folder: Path, prompt: str = "A kite.", question: str = "Is there a kite?") -> Path:
    """A results folder as `dpg generate` + `dpg score` leave it, for one item, written directly."""
    tiles = [Image.new("RGB", (8, 8), color) for color in ("red", "green", "blue", "white")]
    for model in ("clip", "ella"):
        (folder / model).mkdir(parents=True, exist_ok=True)
        make_grid(tiles).save(folder / model / "item_a.png")
    (folder / "prompts.json").write_text(json.dumps({"item_a": prompt}))
    rows = [{"item_id": "item_a", "tile": tile, "proposition_id": 1, "question": question,
             "answer": "yes | <b>no</b>", "score": 1.0} for tile in range(4)]  # fmt: skip
    (folder / "ella" / "report.json").write_text(json.dumps({"per_question": rows}))
    return folder


def test_browse_escapes_text_read_from_the_data_files(tmp_path):
    from ella_demo.dpg.browse import item_view

    view = item_view(results_folder(tmp_path, prompt=HOSTILE, question=HOSTILE), "item_a")
    for key in ("table", "prompt_markdown"):
        markdown = view[key]
        assert "<img" not in markdown and "<b>" not in markdown and "&lt;img src=x onerror=alert(1)&gt;" in markdown
    row = view["table"].splitlines()[2]
    # 3 cells (question, CLIP, ELLA): only the table's own pipes are unescaped
    assert len(re.split(r"(?<!\\)\|", row)) == 3 + 2, row
    assert r"\| \*x\*" in row and r"yes \| &lt;b&gt;no&lt;/b&gt;" in row
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt("commonmark").enable("table").render(view["table"])
    assert "<img" not in html and html.count("<td>") == 3 and "<em>" not in html


def launch_like_app_py(tiny, folder: Path, monkeypatch) -> tuple[str, object]:
    """Run app.py's main with --dpg-results, on the tiny models, on a free port; (root URL, app)."""
    sys.path.insert(0, str(REPO_ROOT))
    import app as app_py

    launched = {}
    real_launch = app_py.launch_app

    def launch(app, **options):
        launched["app"], launched["port"] = app, free_port()
        options.update(port=launched["port"], prevent_thread_lock=True, quiet=True)
        return real_launch(app, **options)

    monkeypatch.setattr(app_py, "load_from_args", lambda args: tiny)
    monkeypatch.setattr(app_py, "launch_app", launch)
    assert app_py.main(["--preset", "tiny", "--dpg-results", str(folder)]) == 0
    return f"http://127.0.0.1:{launched['port']}/", launched["app"]


def test_app_serves_the_grids_it_shows_and_no_other_file_of_the_results_folder(tiny, tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    from gradio_client import Client

    folder = results_folder(tmp_path / "results")
    (folder / "secret.txt").write_text("not for visitors")
    (folder / "ella" / "secret.txt").write_text("not for visitors")
    root, app = launch_like_app_py(tiny, folder, monkeypatch)
    try:
        _, clip_grid, ella_grid, _ = Client(root, verbose=False).predict("item_a", api_name="/dpg_item")
        assert Image.open(clip_grid).size == Image.open(ella_grid).size == (16, 16)
        for path in (folder / "secret.txt", folder / "ella" / "secret.txt", folder / "ella" / "item_a.png"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{root}gradio_api/file={path.resolve()}", timeout=30)
            assert refused.value.code in (403, 404), path
    finally:
        app.close()


def test_app_tab_shows_the_first_item_on_load(tiny, tmp_path):
    from ella_demo.app import build_app

    app = build_app(tiny, dpg_results=results_folder(tmp_path))
    (dependency,) = [entry for entry in app.config["dependencies"] if entry["api_name"] == "dpg_item"]
    assert "load" in [event for _, event in dependency["targets"]]  # the page's load event
    dropdown = next(block for block in app.blocks.values() if getattr(block, "elem_id", None) == "dpg-item")
    assert dropdown.value == "item_a" and dependency["inputs"] == [dropdown._id]
    # what the load event shows: the first item's prompt, both grids (images, not paths) and its answers
    prompt, clip_grid, ella_grid, table = app.fns[dependency["id"]].fn(dropdown.value)
    assert "A kite" in prompt and "Is there a kite?" in table
    assert isinstance(clip_grid, Image.Image) and isinstance(ella_grid, Image.Image)


def test_two_processes_share_the_prompts_without_duplicates_or_gaps(tmp_path):
    """Launched like `accelerate launch`/torchrun would on a machine with two devices (here: CPU)."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         "-m", "ella_demo", "dpg", "generate", "--preset", "tiny", "--device", "cpu", "--dpg-dir", str(FIXTURE),
         "--out", str(tmp_path), "--steps", "1", "--resolution", "16"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reports = sorted(line for line in result.stdout.splitlines() if line.startswith("process "))
    assert [line for line in reports if "generated" in line] == [
        "process 0: generated 2, skipped 0 (already done)",
        "process 1: generated 2, skipped 0 (already done)",
    ]
    # each process needs its two prompts and the shared negative prompt, which the first to get there stores
    encoded = [re.match(r"process \d: T5 encoded (\d) of 3 prompts", line) for line in reports if "T5" in line]
    assert len(encoded) == 2 and all(encoded)
    assert sum(int(match.group(1)) for match in encoded) in (5, 6)  # 6: both encoded "" before either stored it
    assert len(list((tmp_path / "t5-features").glob("*.safetensors"))) == 5
    assert sorted(path.name for path in (tmp_path / "ella").glob("*.png")) == [f"item_{k}.png" for k in "abcd"]
