"""The command line: generate writes what it promises, bench reports every number, errors are clear."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ella_demo import cli, generate
from ella_demo.cli import arguments, main, prompt
from ella_demo.core.devices import DeviceError
from ella_demo.core.errors import ExplorerError
from ella_demo.loading.hub import ModelSourceError

REPO_ROOT = Path(__file__).resolve().parents[1]
GENERATE = ["generate", "--preset", "tiny", "--device", "cpu", "--prompt", "a red cat on a blue chair", "--seed", "0"]
SMALL = ["--steps", "4", "--height", "64", "--width", "64", "--scheduler", "ddim"]


def test_generate_writes_images_meta_and_trace(tmp_path, tiny):
    assert main([*GENERATE, *SMALL, "--out", str(tmp_path), "--trace"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.png", "ella.png", "meta.json", "trace.npz"]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["settings"]["scheduler"] == "ddim" and meta["settings"]["num_inference_steps"] == 4
    assert meta["random_weights"] is True
    assert meta["timesteps"] == [751, 501, 251, 1]
    assert meta["tokens"]["t5"][:3] == ["▁a", "▁red", "▁cat"]
    assert set(meta["timings_s"]) == {"t5", "clip", "tsc", "unet", "vae", "total"}
    # The files hold what the Python API returns for the same settings.
    expected = generate(
        tiny, "a red cat on a blue chair", num_inference_steps=4, height=64, width=64, scheduler="ddim", trace=True
    )
    ella_png = np.asarray(Image.open(tmp_path / "ella.png").convert("RGB"))
    assert np.array_equal(ella_png, np.asarray(expected.ella_images[0]))
    trace = np.load(tmp_path / "trace.npz")
    assert trace["tsc_attention"].shape[:1] == (4,)
    assert trace["ella_previews"].shape == (4, 1, 8, 8, 3)
    assert "clip_cross_attention_8x8_pooled" in trace.files


def test_png_embeds_the_settings_as_a_parameters_chunk(tmp_path):
    assert main([*GENERATE, *SMALL, "--negative-prompt", "blurry", "--out", str(tmp_path)]) == 0
    parameters = Image.open(tmp_path / "ella.png").text["parameters"]
    assert parameters.startswith("a red cat on a blue chair\nNegative prompt: blurry\n")
    assert "Steps: 4, Sampler: DDIM, CFG scale: 10.0, Seed: 0, Size: 64x64" in parameters
    assert "RANDOM WEIGHTS" in parameters


def test_several_images_are_written_as_one_row(tmp_path):
    assert main([*GENERATE, *SMALL, "--num-images", "3", "--out", str(tmp_path)]) == 0
    assert Image.open(tmp_path / "clip.png").size == (192, 64)


def test_one_side_only(tmp_path):
    assert main([*GENERATE, *SMALL, "--sides", "ella", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "clip.png").exists() and (tmp_path / "ella.png").exists()


def test_bad_argument_is_an_error_message_not_a_traceback(tmp_path, capsys):
    assert main([*GENERATE, "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "error: --steps must be a whole number from 1 to 150, got 0" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_bench_reports_every_number(tmp_path):
    report_path = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "ella_demo", "bench", "--preset", "tiny", "--device", "cpu", "--steps", "2",
         "--height", "32", "--width", "32", "--repeats", "1", "--json", str(report_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    timed = [f"{side}_{cache}_s" for side in ("clip", "ella", "side_by_side") for cache in ("cold", "warm")]
    for key in ("diffusers_clip_s", *timed, "sequential_s", "t5_encode_s", "t5_cached_s", "peak_memory_mb"):
        assert report[key] > 0, key
    for key in ("diffusers_clip_s", "sequential_s", "t5_encode_s", "t5_cached_s", "peak_memory_mb"):
        assert key in result.stdout
    assert "cold" in result.stdout and "warm" in result.stdout
    assert report["preset"] == "tiny" and "torch" in report["versions"]
    ratios = report["ratios"]
    assert ratios["ella_over_clip_warm"] == pytest.approx(report["ella_warm_s"] / report["clip_warm_s"])
    assert ratios["ella_over_clip_cold"] == pytest.approx(report["ella_cold_s"] / report["clip_cold_s"])


# --- arguments are checked before any model loads ----------------------------------------------

DPG_DIR = REPO_ROOT / "tests" / "data" / "dpg"


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if the command gets as far as loading a model."""

    def refuse(args):
        pytest.fail("a model was loaded although the arguments were unusable")

    monkeypatch.setattr(arguments, "load_from_args", refuse)


def refused(argv: list[str], capsys) -> str:
    """The error line of a command that must exit with status 2 (a usage error)."""
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "0"], "error: --steps must be a whole number from 1 to 150, got 0"),
        (["--guidance", "31"], "error: --guidance must be a number from 0 to 30, got 31.0"),
        (["--num-images", "5"], "error: --num-images must be a whole number from 1 to 4, got 5"),
        (["--height", "60"], "error: --height must be a multiple of 8 from 8 to 1024, got 60"),
        (["--t5-length", "600"], "error: --t5-length must be 'flexible' or a token count from 1 to 512"),
        (["--negative-prompt", "bad \ud800"], "error: --negative-prompt contains a character that is not valid"),
        (["--seed", "-1"], "error: --seed must be a whole number from 0 to 4294967295, got -1"),
        (["--figures"], "error: --figures needs --trace"),
        (["--sides", "clip", "--trace", "--figures"], "error: --figures draws nothing with --sides clip"),
    ],
)
def test_generate_checks_its_settings_before_loading_models(flags, message, tmp_path, capsys, no_loading):
    err = refused([*GENERATE, *SMALL, *flags, "--out", str(tmp_path / "out")], capsys)
    assert message in err
    assert not (tmp_path / "out").exists()


def test_sides_ella_with_figures_says_which_figures_are_skipped(tmp_path, capsys):
    assert main([*GENERATE, *SMALL, "--sides", "ella", "--trace", "--figures", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "word maps" in err and "previews" in err and "need both sides" in err
    figures = {path.name for path in (tmp_path / "figures").iterdir()}
    assert "word_shares.png" in figures and "previews.png" not in figures


def test_an_output_path_that_is_a_file_is_refused_before_loading(tmp_path, capsys, no_loading):
    existing = tmp_path / "taken"
    existing.write_text("not a folder")
    assert "error: --out" in refused([*GENERATE, *SMALL, "--out", str(existing)], capsys)
    err = refused([*GENERATE, *SMALL, "--out", str(existing / "run")], capsys)
    assert "error: --out cannot make the folder" in err and "is a file" in err
    probe = ["probe", "--preset", "tiny", "--device", "cpu", "--prompt", "a cat"]
    assert "error: --out" in refused([*probe, "--out", str(existing)], capsys)


def test_probe_checks_timesteps_and_prompt_before_loading(tmp_path, capsys, no_loading):
    probe = ["probe", "--preset", "tiny", "--device", "cpu", "--out", str(tmp_path)]
    err = refused([*probe, "--prompt", "a cat", "--timesteps", "1"], capsys)
    assert "error: --timesteps must be a whole number from 2 to 1000, got 1" in err
    assert "error: --prompt is empty" in refused([*probe, "--prompt", "  "], capsys)
    assert "error: --t5-length must be" in refused([*probe, "--prompt", "a cat", "--t5-length", "0"], capsys)


def test_dpg_generate_checks_its_flags_before_loading(tmp_path, capsys, no_loading):
    dpg = ["dpg", "generate", "--preset", "tiny", "--device", "cpu", "--dpg-dir", str(DPG_DIR), "--out", str(tmp_path)]
    assert "error: --items names unknown item ids: nope" in refused([*dpg, "--items", "item_a,nope"], capsys)
    assert "error: --models must list clip and/or ella" in refused([*dpg, "--models", "clip,t5"], capsys)
    assert "error: --steps must be a whole number" in refused([*dpg, "--steps", "0"], capsys)
    assert "error: --resolution must be a multiple of 8" in refused([*dpg, "--resolution", "100"], capsys)


def test_dpg_chart_entries_and_files_are_checked(tmp_path, capsys):
    out = ["--out", str(tmp_path / "chart.png")]
    assert "error: reports are NAME=report.json, got 'report.json'" in refused(
        ["dpg", "chart", "report.json", *out], capsys
    )
    missing = tmp_path / "missing.json"
    err = refused(["dpg", "chart", f"A={missing}", *out], capsys)
    assert f"error: reports entry 'A={missing}': {missing} does not exist" in err
    not_a_report = tmp_path / "other.json"
    not_a_report.write_text("{}")
    err = refused(["dpg", "chart", f"A={not_a_report}", *out], capsys)
    assert f"error: reports entry 'A={not_a_report}': {not_a_report} is not a DPG-Bench report" in err


def test_bench_checks_its_settings_before_loading(tmp_path, capsys, no_loading):
    bench = ["bench", "--preset", "tiny", "--device", "cpu"]
    assert "error: --steps must be a whole number" in refused([*bench, "--steps", "0"], capsys)
    assert "error: --height must be a multiple of 8" in refused([*bench, "--height", "30"], capsys)


@pytest.mark.parametrize(
    ("preset", "flags", "message"),
    [
        ("pocket", ["--height", "512"], "error: --height must be a whole number from 32 to 256, got 512"),
        ("pocket", ["--width", "16"], "error: --width must be a whole number from 32 to 256, got 16"),
        ("sd15", ["--height", "128"], "error: --height must be a whole number from 256 to 1024, got 128"),
    ],
)
def test_given_sizes_are_checked_against_the_presets_range_before_loading(preset, flags, message, tmp_path, capsys,
                                                                          no_loading):  # fmt: skip
    argv = ["generate", "--preset", preset, "--prompt", "a cat", *flags, "--out", str(tmp_path / "out")]
    assert message in refused(argv, capsys)
    dpg = ["dpg", "generate", "--preset", preset, "--dpg-dir", str(DPG_DIR), "--out", str(tmp_path / "dpg")]
    assert message.replace(flags[0], "--resolution") in refused([*dpg, "--resolution", flags[1]], capsys)


@pytest.mark.parametrize("command", ["generate", "dpg"])
def test_no_size_passes_the_early_checks_on_every_preset(command, tmp_path, capsys, monkeypatch):
    """Without --height/--width (--resolution) the size is the loaded model's, so pocket is not held to 512."""
    loaded = []

    def stop_at_loading(args):
        loaded.append(args.preset)
        raise ExplorerError("stopped where the models would load")

    monkeypatch.setattr(arguments, "load_from_args", stop_at_loading)
    for preset in ("pocket", "sd15", "tiny"):
        out = ["--out", str(tmp_path / preset)]
        if command == "generate":
            argv = ["generate", "--preset", preset, "--prompt", "a cat", *out]
        else:
            argv = ["dpg", "generate", "--preset", preset, "--device", "cpu", "--dpg-dir", str(DPG_DIR), *out]
        assert "error: stopped where the models would load" in refused(argv, capsys)
    assert loaded == ["pocket", "sd15", "tiny"]


def test_generate_without_a_size_makes_the_models_native_size(tmp_path):
    assert main([*GENERATE, "--steps", "2", "--scheduler", "ddim", "--out", str(tmp_path), "--trace"]) == 0
    assert Image.open(tmp_path / "clip.png").size == Image.open(tmp_path / "ella.png").size == (64, 64)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (meta["settings"]["height"], meta["settings"]["width"]) == (64, 64)
    assert "Size: 64x64" in Image.open(tmp_path / "ella.png").text["parameters"]
    assert np.load(tmp_path / "trace.npz")["ella_previews"].shape[2:4] == (8, 8)


def test_size_flags_say_their_default_is_the_native_size(capsys):
    for argv in (["generate", "--help"], ["dpg", "generate", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        help_text = " ".join(capsys.readouterr().out.split())
        assert "default: the model's native size, 512 for SD1.5, 64 for pocket" in help_text


def test_model_choices_on_a_weightless_preset_name_the_flag(capsys, tmp_path):
    err = refused([*GENERATE, *SMALL, "--t5", "google/flan-t5-xl", "--out", str(tmp_path)], capsys)
    assert "error: --t5 is for preset sd15" in err


# --- errors: the user's are messages, the program's are tracebacks ------------------------------


def test_project_errors_are_explorer_errors():
    assert issubclass(ModelSourceError, ExplorerError) and issubclass(ModelSourceError, RuntimeError)
    assert issubclass(DeviceError, ExplorerError) and issubclass(DeviceError, ValueError)
    assert set(cli.USER_ERRORS) == {ExplorerError}


def test_an_internal_error_keeps_its_traceback(monkeypatch, tmp_path):
    def broken(args):
        raise ValueError("an internal bug")

    monkeypatch.setattr(arguments, "load_from_args", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main([*GENERATE, *SMALL, "--out", str(tmp_path)])


def test_a_device_the_machine_lacks_is_a_message(capsys, tmp_path):
    assert "error: dtype fp16 is not supported on cpu" in refused(
        [*GENERATE, *SMALL, "--dtype", "fp16", "--out", str(tmp_path)], capsys
    )


# --- flags reach the library ----------------------------------------------------------------------


def test_model_flags_reach_load_models(monkeypatch, tiny, tmp_path):
    calls = []

    def fake_load_models(preset, **options):
        calls.append((preset, options))
        return tiny

    monkeypatch.setattr(arguments, "load_models", fake_load_models)
    cache = tmp_path / "hub-cache"
    argv = [*GENERATE, *SMALL, "--t5-dtype", "fp32", "--cache-dir", str(cache), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    [(preset, options)] = calls
    assert preset == "tiny" and options["t5_dtype"] == "fp32" and Path(options["cache_dir"]) == cache
    assert options["device"] == "cpu"


def test_seeding_flag_reaches_generate(tiny, tmp_path):
    argv = [*GENERATE, *SMALL, "--num-images", "2", "--seeding", "official", "--out", str(tmp_path)]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["settings"]["seeding"] == "official"
    expected = generate(
        tiny, "a red cat on a blue chair", num_inference_steps=4, height=64, width=64, scheduler="ddim",
        num_images=2, seeding="official",
    )  # fmt: skip
    ella_png = np.asarray(Image.open(tmp_path / "ella.png").convert("RGB"))
    assert np.array_equal(ella_png, np.concatenate([np.asarray(image) for image in expected.ella_images], axis=1))


class RecordingBar:
    """Stands in for tqdm: records the total the bar ends with and how far it got."""

    def __init__(self, total=None, **options):
        self.total, self.n = total, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, count=1):
        self.n += count

    def refresh(self):
        pass


def test_progress_bar_total_is_the_steps_the_scheduler_runs(monkeypatch, tmp_path):
    """PNDM runs one step more than asked: the bar must count to what generate reports."""
    bars = []
    monkeypatch.setattr(prompt, "tqdm", lambda *args, **options: bars.append(RecordingBar(**options)) or bars[-1])
    argv = [*GENERATE, "--steps", "3", "--height", "32", "--width", "32", "--scheduler", "pndm", "--out", str(tmp_path)]
    assert main(argv) == 0
    [bar] = bars
    assert (bar.n, bar.total) == (4, 4)


def test_generate_with_a_lora_an_embedding_and_a_t5_cache_records_them(tmp_path, capsys):
    from safetensors.torch import save_file
    from tests_support import unet_lora_file

    from ella_demo import load_models

    lora = unet_lora_file(load_models("tiny", device="cpu"), tmp_path / "ink-wash.safetensors", seed=3)
    save_file({"emb_params": torch.zeros(1, 32)}, tmp_path / "glow.safetensors")
    flags = [
        "--lora",
        f"{lora}:0.5",
        "--embedding",
        str(tmp_path / "glow.safetensors"),
        "--t5-cache",
        str(tmp_path / "t5"),
    ]
    assert main([*GENERATE, *SMALL, *flags, "--out", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["settings"]["loras"] == [["ink_wash", 0.5]]
    assert meta["additions"] == ["LoRA ink_wash: ink-wash.safetensors (UNet; weight chosen per run)",
                                 "embedding glow: glow.safetensors, 1 vector"]  # fmt: skip
    assert len(list((tmp_path / "t5").glob("*.safetensors"))) == 2  # the prompt and the empty negative prompt


def test_pickle_loras_are_refused_with_what_to_do(tmp_path, capsys):
    (tmp_path / "style.ckpt").write_bytes(b"not read")
    assert main([*GENERATE, *SMALL, "--lora", str(tmp_path / "style.ckpt"), "--out", str(tmp_path / "run")]) == 2
    assert "only .safetensors files are read (.ckpt is a pickle format" in capsys.readouterr().err
