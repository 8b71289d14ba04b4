"""The benchmark: cold and warm figures that mean what they say, and the trace-size measurement's shapes."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from ella_demo import generate, load_models
from ella_demo.bench import speed, trace_size, training
from ella_demo.cli import main
from ella_demo.loading.shipped import package_config_dir

SMALL = {"steps": 2, "height": 32, "width": 32, "repeats": 1}
SIDES = ("clip", "ella", "side_by_side")


@pytest.fixture(scope="module")
def models():
    """A private tiny preset: the benchmark clears and fills its caches."""
    return load_models("tiny", device="cpu")


@pytest.fixture(scope="module")
def report(models):
    return speed.run_benchmark(models, **SMALL)


def test_report_has_cold_and_warm_figures_and_both_ratios(report):
    for side in SIDES:
        for state in ("cold", "warm"):
            assert report[f"{side}_{state}_s"] > 0, (side, state)
    for key in ("diffusers_clip_s", "sequential_s", "traced_side_by_side_s", "t5_encode_s", "peak_memory_mb"):
        assert report[key] > 0, key
    assert report["t5_cached_s"] >= 0
    ratios = report["ratios"]
    assert ratios["ella_over_clip_cold"] == pytest.approx(report["ella_cold_s"] / report["clip_cold_s"])
    assert ratios["ella_over_clip_warm"] == pytest.approx(report["ella_warm_s"] / report["clip_warm_s"])
    assert ratios["trace_overhead"] == pytest.approx(report["traced_side_by_side_s"] / report["side_by_side_warm_s"])
    assert all(value > 0 for value in ratios.values())


def test_cold_runs_encode_and_warm_runs_do_not(report):
    misses = report["cache_misses"]
    steps = SMALL["steps"]
    # A cold run encodes the prompt and the empty negative prompt with each encoder it uses, and runs
    # the connector on the negative prompt once per step.
    assert misses["clip_cold"] == {"t5": 0, "clip": 2, "connector": 0}
    assert misses["ella_cold"] == {"t5": 2, "clip": 0, "connector": steps}
    assert misses["side_by_side_cold"] == {"t5": 2, "clip": 2, "connector": steps}
    for name in ("clip_warm", "ella_warm", "side_by_side_warm", "sequential", "traced_side_by_side"):
        assert misses[name] == {"t5": 0, "clip": 0, "connector": 0}, name


def test_clear_caches_makes_the_next_run_encode_again(models):
    prompt = "a red cat on a blue chair"
    options = {"num_inference_steps": 2, "height": 32, "width": 32}
    generate(models, prompt, **options)
    speed.clear_caches(models)
    assert speed.cache_misses(models) == {"t5": 0, "clip": 0, "connector": 0}
    generate(models, prompt, **options)
    assert speed.cache_misses(models) == {"t5": 2, "clip": 2, "connector": 2}
    generate(models, prompt, **options)
    assert speed.cache_misses(models) == {"t5": 2, "clip": 2, "connector": 2}


def test_table_shows_cold_and_warm_side_by_side(report):
    table = speed.format_table(report)
    header = next(line for line in table.splitlines() if line.startswith("seconds"))
    assert header.split() == ["seconds", "cold", "warm"]
    for label in (*SIDES, "ella / clip", "diffusers_clip_s", "trace_overhead", "cache misses"):
        assert label in table, label


def attn2_layers(unet: UNet2DConditionModel) -> list[str]:
    return [name for name, _ in unet.named_modules() if name.endswith("attn2")]


def test_trace_geometry_has_sd15_layout():
    models = trace_size.sd15_trace_geometry()
    config = json.loads((package_config_dir("sd15") / "unet" / "config.json").read_text())
    with torch.device("meta"):
        sd15_unet = UNet2DConditionModel.from_config(config)
    assert attn2_layers(models.pipe.unet) == attn2_layers(sd15_unet)
    assert len(attn2_layers(sd15_unet)) == 16
    slim = models.pipe.unet.config
    for key in ("down_block_types", "up_block_types", "layers_per_block", "cross_attention_dim", "sample_size"):
        assert slim[key] == sd15_unet.config[key], key
    ella = models.ella.config
    assert (ella.layers, ella.heads, ella.num_latents) == (6, 8, 64)


def test_trace_size_has_sd15_shapes_at_512(tmp_path):
    report = trace_size.measure_trace_size(steps=(2,))
    (run,) = report["runs"]
    shapes = {name: tuple(info["shape"]) for name, info in run["arrays"].items()}
    length = run["t5_tokens"]
    assert shapes["tsc_attention"] == (2, 6, 8, 64, 64 + length)
    for side, keys in (("clip", 77), ("ella", 64)):
        assert shapes[f"{side}_cross_attention_64x64_pooled"] == (2, 32, 32, keys)
        assert shapes[f"{side}_cross_attention_32x32"] == (2, 32, 32, keys)
        assert shapes[f"{side}_cross_attention_16x16"] == (2, 16, 16, keys)
        assert shapes[f"{side}_cross_attention_8x8"] == (2, 8, 8, keys)
        assert shapes[f"{side}_previews"] == (2, 1, 64, 64, 3)
        assert shapes[f"{side}_keys"] == (keys,)
        assert run["arrays"][f"{side}_cross_attention_32x32"]["dtype"] == "float16"
    assert run["memory_bytes"] == sum(info["bytes"] for info in run["arrays"].values())
    assert run["memory_bytes"] == sum(run["group_bytes"].values())
    assert 0 < run["npz_bytes"] <= run["npz_uncompressed_bytes"]
    assert "tsc" in trace_size.format_trace_sizes(report)


def test_trace_size_command_refuses_model_choices(capsys):
    assert main(["bench", "--trace-size", "--preset", "random-sd15", "--device", "cpu"]) == 2
    assert "--trace-size builds its own models" in capsys.readouterr().err


# --- training ------------------------------------------------------------------------------------------


def test_training_bench_measures_all_four_configurations(tmp_path, capsys):
    """Each configuration trains in its own process; the cache, built once, holds exactly the expected features."""
    path = tmp_path / "training.json"
    code = main(["bench", "--training", "--preset", "tiny", "--device", "cpu", "--resolution", "32",
                 "--batch-size", "2", "--train-steps", "1", "--json", str(path)])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    report = json.loads(path.read_text())
    configs = report["configs"]
    assert list(configs) == ["online", "online_checkpointing", "cached", "cached_checkpointing"]
    tiny = package_config_dir("tiny")
    t5_width = json.loads((tiny / "t5" / "config.json").read_text())["d_model"]
    latent_channels = json.loads((tiny / "vae" / "config.json").read_text())["latent_channels"]
    # fp32 on a CPU: 128 T5 tokens, and the VAE posterior's mean and std at 32 / 8 = 4 latent pixels a side.
    features_per_sample = 4 * (128 * t5_width + 2 * latent_channels * 4 * 4)
    for name, row in configs.items():
        assert name in table
        assert (row["cached"], row["checkpointing"]) == (name.startswith("cached"), name.endswith("checkpointing"))
        assert len(row["step_s"]) == 1 and len(row["losses"]) == 2 and all(0 < loss < 10 for loss in row["losses"])
        assert row["samples_per_s"] == pytest.approx(2 / row["seconds_per_step"]) and row["samples_per_s"] > 0
        assert 0 < row["memory_after_load_mb"] <= row["peak_memory_mb"]
    build = report["cache_build"]
    assert build["cache_samples"] == 4  # (1 warm-up + 1 timed step) x batch 2
    assert build["cache_bytes_per_sample"] == pytest.approx(features_per_sample, rel=0.01)
    assert build["seconds"] > 0 and "feature cache (own process): 4 samples" in table
    # FLOPs counted in the warm-up step: encoding online, and recomputing under checkpointing, add work.
    flops = {name: row["flops_per_sample"] for name, row in configs.items()}
    assert flops["online"] > flops["cached"] > 0
    assert flops["online_checkpointing"] > flops["online"] and flops["cached_checkpointing"] > flops["cached"]
    ratio = report["ratios"]["online_over_cached_seconds_per_step"]
    assert ratio == pytest.approx(configs["online"]["seconds_per_step"] / configs["cached"]["seconds_per_step"])
    # Memory ratios only where both peaks come from the steps: a tiny step may add less than loading's own peak.
    known = {name for name, row in configs.items() if row["step_memory_mb"] is not None}
    assert all((row["step_memory_mb"] is None) == row["peak_set_before_steps"] for row in configs.values())
    expected = {f"{a}_over_{b}_seconds_per_step" for a, b in training.RATIO_PAIRS}
    expected |= {f"{a}_over_{b}_step_memory_mb" for a, b in training.RATIO_PAIRS if {a, b} <= known}
    assert set(report["ratios"]) == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train-steps", "0"], "--train-steps must be at least 1"),
        (["--resolution", "36"], "--resolution must be a multiple of 8"),
        (["--configs", "online", "offline"], "--configs must be some of online, online_checkpointing"),
        (["--t5", "some/t5"], "--training trains a new connector on the preset's models; drop --t5"),
    ],
)
def test_training_bench_names_bad_flags_before_starting(flags, message, capsys):
    assert main(["bench", "--training", "--preset", "tiny", "--device", "cpu", *flags]) == 2
    assert message in capsys.readouterr().err


def test_the_t5_memory_bench_counts_each_models_weights_and_what_each_option_leaves_on_the_gpu(tiny):
    from ella_demo.bench.t5_memory import MemoryBench, run_memory_bench

    report = run_memory_bench(MemoryBench("tiny", "fp32", 64, 2))
    loaded = {"unet": tiny.pipe.unet, "vae": tiny.pipe.vae, "text_encoder": tiny.pipe.text_encoder,
              "ella": tiny.ella, "t5": tiny.t5}  # fmt: skip
    counted = {
        name: sum(t.numel() for t in (*module.parameters(), *module.buffers())) for name, module in loaded.items()
    }
    assert report["parameters"] == counted  # the meta-device count is the loaded models' own
    rows = {row["option"]: row for row in report["options"]}
    everything, t5 = sum(counted.values()) * 4 / 2**20, counted["t5"] * 4 / 2**20
    assert rows["together"]["at_rest_mb"] == rows["together"]["while_encoding_mb"] == round(everything, 1)
    assert rows["offload"]["at_rest_mb"] == round(everything - t5, 1) and rows["offload"]["while_encoding_mb"] == round(
        everything, 1
    )
    assert rows["t5-on-cpu"]["at_rest_mb"] == rows["t5-on-cpu"]["while_encoding_mb"] == round(everything - t5, 1)
    # released: T5 encodes the job's prompts on the GPU, then leaves it
    assert (rows["released"]["at_rest_mb"], rows["released"]["while_encoding_mb"]) == (
        round(everything - t5, 1),
        round(everything, 1),
    )
    if not torch.cuda.is_available():
        assert all(row["peak_mb"] is None for row in rows.values()) and "not measured" in report["device"]
