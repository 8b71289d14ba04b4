"""`pocket eval`: the held-out sets scored through the DPG scorer by the detector, attention pointing, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ella_demo.cli import main
from ella_demo.dpg.browse import item_view, list_items
from ella_demo.dpg.data import load_bench
from ella_demo.dpg.generation import make_grid
from ella_demo.loading.models import load_models
from ella_demo.pocket.attention_check import cell_hits_mask, measure_pointing, pointing_prompts
from ella_demo.pocket.captions import prompt_sets
from ella_demo.pocket.evaluation import EvaluationSettings, _score_set, evaluate
from ella_demo.pocket.questions import write_dpg_folder
from ella_demo.pocket.render import render


@pytest.fixture(scope="module")
def pocket_models(pocket_world):
    return load_models("pocket", sd15=str(pocket_world))


def test_ground_truth_pictures_score_full_marks_through_the_dpg_scorer(tmp_path):
    """The whole chain (question graphs, detector answerer, DPG scorer) scores renders of the prompts' own scenes."""
    prompts = prompt_sets(3, {"seen": 6, "paraphrase": 6})
    items = {f"{name}_{index}": prompt for name, group in prompts.items() for index, prompt in enumerate(group)}
    bench = load_bench(write_dpg_folder(tmp_path / "dpg", items))
    for side in ("clip", "ella"):
        (tmp_path / side).mkdir()
        for item, prompt in items.items():
            # The ella side draws the right scenes; the clip side draws every prompt's scene on the wrong tile set.
            scene = prompt.scene if side == "ella" else items[sorted(items)[sorted(items).index(item) - 1]].scene
            make_grid([render(scene)] * 4).save(tmp_path / side / f"{item}.png")
    scores = _score_set(bench, tmp_path)
    assert scores["ella"]["overall"] == pytest.approx(100.0)
    assert scores["ella"]["broad"].keys() >= {"entity", "attribute", "global"}
    assert scores["clip"]["overall"] < 80  # other scenes' pictures fail many questions
    assert json.loads((tmp_path / "ella" / "report.json").read_text())["overall"] == pytest.approx(100.0)


def test_evaluate_writes_every_set_for_both_sides(pocket_models, tmp_path):
    summary = evaluate(pocket_models, tmp_path, EvaluationSettings(prompts=2, num_inference_steps=2))
    assert list(summary["sets"]) == ["seen", "unseen_combinations", "paraphrase"]
    for name, result in summary["sets"].items():
        assert result["prompts"] == 2 and result["questions"] >= 2 * 5 and result["wall_s"] > 0
        for side in ("clip", "ella"):
            assert 0.0 <= result[side]["overall"] <= 100.0 and not result[side]["warnings"]
            grids = sorted((tmp_path / name / side).glob("*.png"))
            assert len(grids) == 2 and Image.open(grids[0]).size == (128, 128)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    ceiling = summary["vae_round_trip"]  # a barely trained toy VAE: far below the detector's 100% on renders
    assert ceiling["scenes"] == 300 and 0.0 <= ceiling["overall"]["all"] < 0.98
    assert Image.open(tmp_path / "scores.png").size[0] > 1000
    # Each set's folder is a DPG results folder: the app's DPG-Bench tab browses it (--dpg-results).
    view = item_view(tmp_path / "seen", list_items(tmp_path / "seen")[0])
    assert view["grids"].keys() == {"clip", "ella"} and view["prompt"] == prompt_sets(0, {"seen": 2})["seen"][0].text
    assert "✓" in view["table"] or "✗" in view["table"]


def test_a_map_peak_hits_a_mask_only_on_the_mask_and_chance_is_the_masked_share():
    mask = np.zeros((64, 64), bool)
    mask[8:16, 40:48] = True  # cells (2..3, 10..11) of a 16x16 map
    word_map = np.zeros((16, 16))
    word_map[3, 11] = 1.0
    assert cell_hits_mask(word_map, mask) == (True, pytest.approx(4 / 256))
    word_map[3, 11], word_map[12, 2] = 0.0, 1.0
    assert cell_hits_mask(word_map, mask)[0] is False


def test_pointing_counts_trials_per_side_and_window(pocket_models):
    prompts = pointing_prompts(3, seed=0)
    assert all(len(prompt.scene.entities) <= 2 and prompt.scene.entities[0].count == 1 for prompt in prompts)
    pointing = measure_pointing(pocket_models, prompts, steps=2)
    assert pointing["prompts"] == 3 and set(pointing["windows"]) == {"clip", "ella"}
    for side, windows in pointing["windows"].items():
        assert set(windows) == {"all", "early", "middle", "late"}
        found = pointing["objects"] - pointing["not_found_once"][side]
        assert all(row["trials"] <= found for row in windows.values())


def test_the_eval_command_prints_the_tables_and_refuses_bad_counts(pocket_world, tmp_path, capsys):
    code = main(["pocket", "eval", "--world", str(pocket_world), "--out", str(tmp_path), "--prompts", "1",
                 "--pointing-prompts", "1", "--steps", "2"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "| seen | 1 |" in out and "| paraphrase | 1 |" in out and "all steps" in out and "VAE round trips" in out
    assert {"report.json", "pointing.png", "token_time.png", "scores.png"} <= {p.name for p in tmp_path.iterdir()}
    code = main(["pocket", "eval", "--world", str(pocket_world), "--out", str(tmp_path), "--prompts", "0"])
    assert code == 2 and "--prompts must be at least 1" in capsys.readouterr().err
