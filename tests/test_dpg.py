"""DPG-Bench: loading, the scoring protocol on hand-computed cases, quirks, generation and resumption."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tests_support import free_port

from ella_demo import dpg
from ella_demo.dpg_generate import generate_grids, grid_is_valid, make_grid, shard
from ella_demo.vqa import answer_with_model, read_answers, split_grid

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "data" / "dpg"


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
    report = dpg.score(dpg.load_bench(FIXTURE), read_answers(FIXTURE / "answers.csv"))
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


def test_official_quirks_drop_the_first_row_and_use_the_last_tile_for_categories():
    bench = dpg.load_bench(FIXTURE, official_quirks=True)
    assert "dropped the first data row (item item_a)" in bench.warnings[0]
    report = dpg.score(bench, read_answers(FIXTURE / "answers.csv"), official_quirks=True)
    # item_a without q1: tiles 1, 1, 0, 2/3
    assert report.per_prompt["item_a"]["score"] == pytest.approx(100 * (1 + 1 + 0 + 2 / 3) / 4)
    # entity from tile 3 only: item_b q1 and item_c q1 both 0 there
    assert report.categories_broad["entity"] == 0
    default = dpg.score(dpg.load_bench(FIXTURE), read_answers(FIXTURE / "answers.csv"))
    assert default.overall != pytest.approx(report.overall)


def test_dependency_chains_zero_in_any_order():
    questions = [
        dpg.Question("i", 3, (2,), "c", "c", "child"),
        dpg.Question("i", 2, (1,), "b", "b", "parent"),
        dpg.Question("i", 1, (), "a", "a", "root"),
    ]
    assert dpg.tile_scores(questions, {1: "no", 2: "yes", 3: "yes"}) == {3: 0, 2: 0, 1: 0}
    assert dpg.tile_scores(questions, {1: " YES ", 2: "yes", 3: "yes"}) == {3: 1, 2: 1, 1: 1}


def test_report_files(tmp_path):
    report = dpg.score(dpg.load_bench(FIXTURE), read_answers(FIXTURE / "answers.csv"))
    json_path, csv_path = dpg.write_report(report, tmp_path / "report.json")
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
    settings = {"resolution": 32, "steps": 2}
    first = generate_grids(tiny, {k: prompts[k] for k in ("item_a", "item_b")}, tmp_path, **settings)
    assert first == {"generated": 2, "skipped": 0}
    for model in ("clip", "ella"):
        assert grid_is_valid(tmp_path / model / "item_a.png", 32)
        meta = json.loads((tmp_path / model / "meta.json").read_text())
        assert meta["random_weights"] is True and "seed_policy" in meta
    # A killed run: one grid half-written, one missing. The rerun redoes only those.
    (tmp_path / "ella" / "item_b.png").write_bytes(b"\x89PNG truncated")
    before = (tmp_path / "clip" / "item_a.png").stat().st_mtime_ns
    second = generate_grids(tiny, prompts, tmp_path, **settings)
    assert second == {"generated": 3, "skipped": 1}  # item_b (ella only), item_c, item_d
    assert (tmp_path / "clip" / "item_a.png").stat().st_mtime_ns == before
    assert all(grid_is_valid(tmp_path / "ella" / f"{item}.png", 32) for item in prompts)


def test_scoring_with_a_model_answers_every_tile(tiny, tmp_path):
    prompts = dpg.load_prompts(FIXTURE)
    generate_grids(tiny, prompts, tmp_path, model_names=("ella",), resolution=16, steps=1)
    asked = []

    def answerer(image, questions):
        asked.append((image.size, len(questions)))
        return ["yes"] * len(questions)

    bench = dpg.load_bench(FIXTURE)
    answers, notes = answer_with_model(bench, tmp_path / "ella", answerer)
    assert notes == []
    assert len(asked) == 3 * 4 and all(size == (16, 16) for size, _ in asked)
    assert dpg.score(bench, answers).overall == pytest.approx(100)


def test_cli_round_trip_with_an_answers_file_and_a_chart(tmp_path):
    def cli(*arguments):
        result = subprocess.run([sys.executable, "-m", "ella_demo", "dpg", *arguments], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result

    scored = cli("score", "--dpg-dir", str(FIXTURE), "--vqa", f"answers:{FIXTURE / 'answers.csv'}",
                 "--out", str(tmp_path / "ella" / "report.json"))  # fmt: skip
    assert "overall 52.08" in scored.stdout
    cli("score", "--dpg-dir", str(FIXTURE), "--vqa", f"answers:{FIXTURE / 'answers.csv'}", "--official-quirks",
        "--out", str(tmp_path / "clip" / "report.json"))  # fmt: skip
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
    from ella_demo.vqa import make_answerer

    save_tiny_blip(tmp_path / "blip")
    answerer = make_answerer(f"blip:{tmp_path / 'blip'}")
    replies = answerer(Image.new("RGB", (40, 40), "red"), ["is there a kite?", "is there a boat?", "is there a?"])
    assert len(replies) == 3 and all(isinstance(reply, str) for reply in replies)
    assert not answerer.model.training


def test_blip_backend_refuses_pickle_only_weights(tmp_path):
    import torch
    from transformers import BlipForQuestionAnswering

    from ella_demo.vqa import make_answerer

    save_tiny_blip(tmp_path / "blip")
    model = BlipForQuestionAnswering.from_pretrained(tmp_path / "blip")
    (tmp_path / "blip" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "blip" / "pytorch_model.bin")
    with pytest.raises(OSError):
        make_answerer(f"blip:{tmp_path / 'blip'}")


def test_unknown_vqa_backend_is_a_clear_error():
    from ella_demo.vqa import make_answerer

    with pytest.raises(dpg.DpgDataError, match="unknown VQA backend 'mplug'"):
        make_answerer("mplug")


def test_app_tab_browses_grids_and_answers(tiny, tmp_path):
    from gradio_client import Client

    from ella_demo import ui
    from ella_demo.dpg_browse import item_view, list_items

    prompts = dpg.load_prompts(FIXTURE)
    generate_grids(tiny, {k: prompts[k] for k in ("item_a", "item_b")}, tmp_path, resolution=16, steps=1)
    report = dpg.score(dpg.load_bench(FIXTURE), read_answers(FIXTURE / "answers.csv"))
    dpg.write_report(report, tmp_path / "ella" / "report.json")
    assert list_items(tmp_path) == ["item_a", "item_b"]
    with pytest.raises(ValueError, match="is not an item of this results folder"):
        item_view(tmp_path, "../../etc/passwd")

    app = ui.build_app(tiny, dpg_results=tmp_path)
    port = free_port()
    ui.launch_app(app, port=port, prevent_thread_lock=True, quiet=True, allowed_paths=[str(tmp_path)])
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
    assert reports == [
        "process 0: generated 2, skipped 0 (already done)",
        "process 1: generated 2, skipped 0 (already done)",
    ]
    assert sorted(path.name for path in (tmp_path / "ella").glob("*.png")) == [f"item_{k}.png" for k in "abcd"]
