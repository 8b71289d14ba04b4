"""Presets, devices and every way of pointing at real weights, on models saved in the hub layout."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PNDMScheduler, UNet2DConditionModel
from ldm_layout import to_ldm_state_dict
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from ella_demo import ELLA, load_models
from ella_demo.core.devices import DeviceError, Placement, choose_placement
from ella_demo.core.errors import InputError
from ella_demo.core.schedulers import SCHEDULERS, make_scheduler, scheduler_from_config
from ella_demo.loading import hub
from ella_demo.loading.checkpoint import save_ella_checkpoint
from ella_demo.loading.hub import ModelSourceError, parse_source
from ella_demo.loading.sd15 import resolve_sd_folder
from ella_demo.loading.shipped import package_config_dir, read_weightless_configs
from ella_demo.loading.sources import DEFAULT_SOURCES, ELLA_FILENAME, SD15_REPO, T5_SUBFOLDER

REPO_ROOT = Path(__file__).resolve().parents[1]


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].reshape(a[k].shape)) for k in a)


def assert_same_models(loaded, reference) -> None:
    """`loaded` holds `reference`'s weights (its connector as saved: fp16). Module.half() converts in
    place, so the rounding is done on a copy: `reference` is the session's shared models."""
    for name in ("unet", "vae", "text_encoder"):
        assert same_weights(getattr(loaded.pipe, name), getattr(reference.pipe, name)), name
    assert same_weights(loaded.t5, reference.t5)
    assert same_weights(loaded.ella, copy.deepcopy(reference.ella).half().float())
    prompt = "a red cat on a blue chair"
    assert loaded.t5_encoder.encode(prompt).tokens == reference.t5_encoder.encode(prompt).tokens
    assert loaded.clip_encoder.encode(prompt).tokens == reference.clip_encoder.encode(prompt).tokens


# --- presets -----------------------------------------------------------------------------------


def test_tiny_preset_is_deterministic_and_labelled_as_random(tiny):
    again = load_models("tiny", device="cpu")
    assert same_weights(again.pipe.unet, tiny.pipe.unet)
    assert same_weights(again.ella, tiny.ella)
    assert tiny.random_weights and tiny.preset == "tiny"
    other_seed = load_models("tiny", device="cpu", seed=1)
    assert not same_weights(other_seed.ella, tiny.ella)


FRESH_PROCESS_RUN = """
import hashlib, json
import numpy as np
import ella_demo
models = ella_demo.load_models("tiny", device="cpu")
result = ella_demo.generate(models, "a red cat", seed=1, num_inference_steps=2, height=32, width=32)
pixels = np.concatenate([result.clip_pixels, result.ella_pixels]).tobytes()
vocab = json.dumps([models.pipe.tokenizer.get_vocab(), models.t5_tokenizer.get_vocab()], sort_keys=True)
print(hashlib.sha256(pixels).hexdigest(), hashlib.sha256(vocab.encode()).hexdigest())
"""


def test_tiny_preset_gives_the_same_images_in_every_process():
    """Same seed, same images in a fresh process, whatever the process's hash seeds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    outputs = []
    for hash_seed in ("0", "1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", FRESH_PROCESS_RUN],
            cwd=REPO_ROOT,
            env={**env, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout.split())
    pixels, vocabularies = zip(*outputs, strict=True)
    assert len(set(vocabularies)) == 1, "the toy tokenizers' vocabularies differ between processes"
    assert len(set(pixels)) == 1, "the same seed gave different images in different processes"


def test_tiny_preset_parts_fit_together(tiny):
    encoding = tiny.t5_encoder.encode("a red cat")
    with torch.no_grad():
        tokens = tiny.ella(encoding.features, 500)
        latents = torch.zeros(1, 4, 8, 8)
        noise = tiny.pipe.unet(latents, 500, encoder_hidden_states=tokens).sample
    assert tokens.shape == (1, tiny.ella.config.num_latents, tiny.pipe.unet.config.cross_attention_dim)
    assert noise.shape == latents.shape
    assert not any(parameter.requires_grad for parameter in tiny.pipe.unet.parameters())


def test_loading_does_not_disturb_the_global_random_state():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_models("tiny", device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_random_sd15_configs_are_the_published_architectures():
    configs = read_weightless_configs("random-sd15")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(configs.unet)
        vae = AutoencoderKL.from_config(configs.vae)
        clip = CLIPTextModel(CLIPTextConfig(**configs.text_encoder))
        t5 = T5EncoderModel(T5Config(**configs.t5))
        ella = ELLA()

    def count(module: torch.nn.Module) -> int:
        return sum(parameter.numel() for parameter in module.parameters())

    # Published sizes: SD1.5 UNet 859.52M, VAE 83.65M, CLIP ViT-L/14 text 123.06M, ELLA 66.82M.
    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(clip) == 123_060_480
    assert count(ella) == 66_820_608
    # FLAN-T5-XL encoder from its hyperparameters: d_model 2048, 24 layers, 32 heads of 64,
    # gated-GELU FFN 5120, 32 relative-position buckets, vocabulary 32128.
    d, ff, layers, vocab = 2048, 5120, 24, 32128
    per_layer = 4 * d * d + 3 * d * ff + 2 * d
    assert count(t5) == vocab * d + layers * per_layer + 32 * 32 + d
    assert (unet.config.cross_attention_dim, clip.config.hidden_size, t5.config.d_model) == (768, 768, 2048)
    assert list(unet.config.block_out_channels) == [320, 640, 1280, 1280]
    assert unet.config.attention_head_dim == 8 and unet.config.layers_per_block == 2
    assert (clip.config.num_hidden_layers, clip.config.num_attention_heads) == (12, 12)
    assert (t5.config.num_layers, t5.config.num_heads, t5.config.feed_forward_proj) == (24, 32, "gated-gelu")


@pytest.mark.slow
def test_random_sd15_preset_builds_and_runs_one_tsc_step():
    models = load_models("random-sd15", device="cpu")
    assert models.random_weights
    encoding = models.t5_encoder.encode("a red cat", 128)
    with torch.no_grad():
        tokens = models.ella(encoding.features, 999)
    assert encoding.features.shape == (1, 128, 2048)
    assert tokens.shape == (1, 64, 768)
    assert torch.isfinite(tokens).all()


def test_unknown_preset_and_overrides_on_weightless_presets_are_rejected():
    with pytest.raises(InputError, match="preset must be one of sd15, pocket, tiny, random-sd15, got 'sd21'"):
        load_models("sd21")
    with pytest.raises(InputError, match="t5 does not fit preset pocket"):
        load_models("pocket", t5="google/flan-t5-xl")
    with pytest.raises(InputError, match="t5 is for preset sd15 only: preset tiny builds its own weights"):
        load_models("tiny", t5="google/flan-t5-xl")


# --- devices -----------------------------------------------------------------------------------


def test_cpu_defaults_to_fp32_everywhere():
    placement = choose_placement("cpu")
    assert (placement.dtype, placement.t5_dtype) == (torch.float32, torch.float32)


@pytest.mark.parametrize(
    ("device", "dtype", "message"),
    [
        ("cpu", "fp16", "dtype fp16 is not supported on cpu: choose one of fp32, bf16"),
        ("cpu", "fp8", "Unknown dtype 'fp8'"),
        ("tpu", None, "Unknown device 'tpu'"),
        ("cuda:0" if not torch.cuda.is_available() else "cuda:99", None, "cuda"),
    ],
)
def test_unsupported_device_and_dtype_choices_are_clear_errors(device, dtype, message):
    with pytest.raises(DeviceError, match=message):
        choose_placement(device, dtype)


def test_t5_dtype_error_names_the_t5_setting():
    with pytest.raises(DeviceError, match="T5 dtype fp16 is not supported on cpu"):
        choose_placement("cpu", "fp32", "fp16")


# --- local folders in the hub layout -----------------------------------------------------------


def load_hub_layout(hub_layout, **options):
    """The sd15 preset pointed at the tiny models saved in the hub layout."""
    return load_models(
        "sd15",
        sd15=str(hub_layout["sd15"]),
        ella=str(hub_layout["ella_file"]),
        t5=str(hub_layout["t5"]),
        device="cpu",
        **options,
    )


def test_load_models_from_local_folders_in_the_hub_layout(tiny, hub_layout):
    loaded = load_hub_layout(hub_layout)
    assert not loaded.random_weights
    assert loaded.sources["t5_tokenizer"] == str(hub_layout["t5"])
    assert_same_models(loaded, tiny)


def test_ella_source_may_be_the_folder_holding_the_release_file(tiny, hub_layout):
    loaded = load_models(
        "sd15", sd15=str(hub_layout["sd15"]), ella=str(hub_layout["ella_repo"]), t5=str(hub_layout["t5"]), device="cpu"
    )
    assert same_weights(loaded.ella, copy.deepcopy(tiny.ella).half().float())


def make_hub_cache(cache: Path, repo_id: str, source: Path) -> None:
    """Lay `source` out as the hub cache does: models--org--name/snapshots/<commit>, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)


def test_default_hub_ids_resolve_through_the_local_hub_cache(tiny, hub_layout, tmp_path):
    make_hub_cache(tmp_path, SD15_REPO, hub_layout["sd15"])
    make_hub_cache(tmp_path, "QQGYLab/ELLA", hub_layout["ella_repo"])
    loaded = load_models("sd15", device="cpu", cache_dir=tmp_path)
    assert loaded.sources["sd15"] == SD15_REPO
    assert loaded.sources["ella"] == f"QQGYLab/ELLA/{ELLA_FILENAME}"
    assert loaded.sources["t5"] == f"QQGYLab/ELLA/{T5_SUBFOLDER}"
    assert_same_models(loaded, tiny)


class FakeHub:
    """Stands in for `snapshot_download` in loading/hub.py: the real call for the local cache, and for
    the online attempt a record of the call and a complete folder, as a finished download gives."""

    def __init__(self, monkeypatch, online_folders: dict[str, Path]):
        self.online_folders = online_folders
        self.online_calls: list[tuple[str, list[str]]] = []
        self.real = hub.snapshot_download
        monkeypatch.setattr(hub, "snapshot_download", self)

    def __call__(self, repo_id, *, allow_patterns, local_files_only, **options):
        if local_files_only:
            return self.real(repo_id, allow_patterns=allow_patterns, local_files_only=True, **options)
        self.online_calls.append((repo_id, list(allow_patterns)))
        return str(self.online_folders[repo_id])

    def online_repos(self) -> set[str]:
        return {repo_id for repo_id, _ in self.online_calls}


def test_a_partly_cached_download_is_completed_from_the_hub(tiny, hub_layout, tmp_path, monkeypatch):
    """A cache with the configs but no weights (an interrupted download) is not enough: go online."""
    partial_sd15, partial_ella = tmp_path / "partial_sd15", tmp_path / "partial_ella"
    shutil.copytree(hub_layout["sd15"], partial_sd15, ignore=shutil.ignore_patterns("*.safetensors"))
    shutil.copytree(hub_layout["ella_repo"], partial_ella, ignore=shutil.ignore_patterns("model.safetensors"))
    make_hub_cache(tmp_path / "cache", SD15_REPO, partial_sd15)
    make_hub_cache(tmp_path / "cache", "QQGYLab/ELLA", partial_ella)
    hub = FakeHub(monkeypatch, {SD15_REPO: hub_layout["sd15"], "QQGYLab/ELLA": hub_layout["ella_repo"]})
    loaded = load_models("sd15", device="cpu", cache_dir=tmp_path / "cache")
    assert hub.online_repos() == {SD15_REPO, "QQGYLab/ELLA"}
    # Only the T5 encoder went online from the ELLA repo: the connector file was in the cache.
    assert [patterns for repo, patterns in hub.online_calls if repo == "QQGYLab/ELLA"] == [
        [f"{T5_SUBFOLDER}/{pattern}" for pattern in ("*.json", "*.safetensors", "spiece.model")]
    ]
    assert_same_models(loaded, tiny)


def test_a_complete_cache_needs_no_hub(tiny, hub_layout, tmp_path, monkeypatch):
    make_hub_cache(tmp_path, SD15_REPO, hub_layout["sd15"])
    make_hub_cache(tmp_path, "QQGYLab/ELLA", hub_layout["ella_repo"])
    hub = FakeHub(monkeypatch, {})
    load_models("sd15", device="cpu", cache_dir=tmp_path)
    assert hub.online_calls == []


def test_fp16_placement_wants_the_fp16_weight_files(hub_layout, tmp_path, monkeypatch):
    """A cache of fp32 weights does not serve an fp16 run, which downloads the fp16 variant files."""
    make_hub_cache(tmp_path / "cache", SD15_REPO, hub_layout["sd15"])
    fp16_copy = tmp_path / "fp16"
    shutil.copytree(hub_layout["sd15"], fp16_copy)
    for weights in list(fp16_copy.glob("*/*.safetensors")):
        weights.rename(weights.with_suffix(".fp16.safetensors"))
    hub = FakeHub(monkeypatch, {SD15_REPO: fp16_copy})
    fp16 = Placement(torch.device("cpu"), torch.float16, torch.float16)
    folder = resolve_sd_folder(DEFAULT_SOURCES["sd15"], fp16, False, tmp_path / "cache")
    assert folder == fp16_copy
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in hub.online_calls[0][1]
    # fp32 runs are served by the cache as it is.
    fp32 = Placement(torch.device("cpu"), torch.float32, torch.float32)
    folder = resolve_sd_folder(DEFAULT_SOURCES["sd15"], fp32, False, tmp_path / "cache")
    assert folder.parent.name == "snapshots" and len(hub.online_calls) == 1


def test_a_partial_cache_offline_names_the_missing_weights(hub_layout, tmp_path):
    partial_sd15 = tmp_path / "partial_sd15"
    shutil.copytree(hub_layout["sd15"], partial_sd15, ignore=shutil.ignore_patterns("diffusion_pytorch_model*"))
    make_hub_cache(tmp_path / "cache", SD15_REPO, partial_sd15)
    with pytest.raises(ModelSourceError) as raised:
        resolve_sd_folder(DEFAULT_SOURCES["sd15"], choose_placement("cpu"), False, tmp_path / "cache")
    message = str(raised.value)
    assert "lacks unet/diffusion_pytorch_model.safetensors, vae/diffusion_pytorch_model.safetensors" in message
    assert "has no unet weights" not in message


def test_hub_id_overrides_resolve_through_the_cache(tiny, hub_layout, tmp_path):
    make_hub_cache(tmp_path, "someone/my-sd15-finetune", hub_layout["sd15"])
    make_hub_cache(tmp_path, "QQGYLab/ELLA", hub_layout["ella_repo"])
    loaded = load_models("sd15", sd15="someone/my-sd15-finetune", device="cpu", cache_dir=tmp_path)
    assert same_weights(loaded.pipe.unet, tiny.pipe.unet)


def test_t5_folder_without_tokenizer_uses_flan_t5_xl_tokenizer_from_the_cache(tiny, hub_layout, tmp_path):
    bare_t5 = tmp_path / "t5_weights_only"
    shutil.copytree(hub_layout["t5"], bare_t5, ignore=shutil.ignore_patterns("tokenizer*"))
    tokenizer_repo = tmp_path / "tokenizer_repo"
    tiny.t5_tokenizer.save_pretrained(tokenizer_repo)
    make_hub_cache(tmp_path / "cache", "google/flan-t5-xl", tokenizer_repo)
    loaded = load_models(
        "sd15",
        sd15=str(hub_layout["sd15"]),
        ella=str(hub_layout["ella_file"]),
        t5=str(bare_t5),
        device="cpu",
        cache_dir=tmp_path / "cache",
    )
    assert loaded.sources["t5_tokenizer"] == "google/flan-t5-xl"
    assert loaded.t5_encoder.encode("a red cat").tokens == ("▁a", "▁red", "▁cat", "</s>")


def load_single_file(tiny, tmp_path):
    """The tiny models written as one LDM-layout checkpoint and loaded back with a copy of the tiny configs."""
    checkpoint = tmp_path / "community-model.safetensors"
    safetensors.torch.save_file(to_ldm_state_dict(tiny.pipe), str(checkpoint))
    config_dir = tmp_path / "configs"
    shutil.copytree(package_config_dir("tiny"), config_dir)
    tiny.pipe.tokenizer.save_pretrained(config_dir / "tokenizer")
    ella_file, t5_folder = tmp_path / "ella.safetensors", tmp_path / "t5"
    save_ella_checkpoint(tiny.ella, ella_file)
    tiny.t5.save_pretrained(t5_folder)
    tiny.t5_tokenizer.save_pretrained(t5_folder)
    return load_models(
        "sd15", sd15=str(checkpoint), sd15_config=config_dir, ella=str(ella_file), t5=str(t5_folder), device="cpu"
    )


def test_single_file_checkpoint_loads_offline_with_shipped_style_configs(tiny, tmp_path):
    assert_same_models(load_single_file(tiny, tmp_path), tiny)


# SD1.5's scheduler/scheduler_config.json as published on the hub (stable-diffusion-v1-5), less the version.
PUBLISHED_SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def scheduler_timesteps(base_config) -> dict[str, list[float]]:
    """25-step timesteps of every scheduler built from a model's scheduler config."""
    timesteps = {}
    for name in SCHEDULERS:
        scheduler = make_scheduler(name, base_config)
        scheduler.set_timesteps(25)
        timesteps[name] = scheduler.timesteps.tolist()
    return timesteps


@pytest.mark.parametrize("preset", ["sd15", "tiny"])
def test_shipped_scheduler_configs_are_sd15s_file_unchanged(preset):
    shipped = json.loads((package_config_dir(preset) / "scheduler" / "scheduler_config.json").read_text())
    shipped.pop("_diffusers_version")
    assert shipped == PUBLISHED_SD15_SCHEDULER


def test_every_load_path_gives_the_official_demos_timesteps(tiny, hub_layout, tmp_path):
    """The official demo: DPMSolverMultistepScheduler.from_config(pipe.scheduler.config) on SD1.5's folder."""
    official = DPMSolverMultistepScheduler.from_config(
        PNDMScheduler.from_pretrained(hub_layout["sd15"], subfolder="scheduler").config
    )
    official.set_timesteps(25)
    assert official.timesteps[:3].tolist() == [999, 959, 919]
    hub_folder = load_hub_layout(hub_layout)
    single_file = load_single_file(tiny, tmp_path)
    expected = scheduler_timesteps(hub_folder.pipe.scheduler.config)
    assert expected["dpm++"] == official.timesteps.tolist()
    assert scheduler_timesteps(single_file.pipe.scheduler.config) == expected
    assert scheduler_timesteps(tiny.pipe.scheduler.config) == expected
    random_sd15 = scheduler_from_config(read_weightless_configs("random-sd15").scheduler)
    assert scheduler_timesteps(random_sd15.config) == expected


def test_shipped_sd15_single_file_configs_are_complete():
    folder = package_config_dir("sd15")
    for name in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json"):
        assert (folder / name).is_file(), name
    assert (folder / "scheduler" / "scheduler_config.json").is_file()


def test_pickle_checkpoints_are_refused_unless_allowed(hub_layout, tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"pickle bytes are never unpickled here")
    with pytest.raises(ModelSourceError, match="--allow-pickle"):
        load_models(
            "sd15", sd15=str(checkpoint), ella=str(hub_layout["ella_file"]), t5=str(hub_layout["t5"]), device="cpu"
        )


def test_allow_pickle_still_reads_safetensors_folders(tiny, hub_layout):
    """--allow-pickle adds .bin files to what may be read; it must not stop safetensors being read."""
    loaded = load_hub_layout(hub_layout, allow_pickle=True)
    assert same_weights(loaded.pipe.unet, tiny.pipe.unet) and same_weights(loaded.t5, tiny.t5)


def test_local_t5_folder_with_a_missing_shard_is_named(hub_layout, tmp_path):
    sharded = tmp_path / "t5"
    shutil.copytree(hub_layout["t5"], sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    weight_map = {"shared.weight": "model-00001-of-00002.safetensors", "final": "model-00002-of-00002.safetensors"}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelSourceError, match=r"t5 lacks model-00002-of-00002\.safetensors"):
        load_models(
            "sd15", sd15=str(hub_layout["sd15"]), ella=str(hub_layout["ella_file"]), t5=str(sharded), device="cpu"
        )


def test_local_sd_folder_missing_files_are_named(hub_layout, tmp_path):
    broken = tmp_path / "sd15"
    shutil.copytree(hub_layout["sd15"], broken)
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ModelSourceError, match=r"lacks scheduler/scheduler_config\.json"):
        load_models("sd15", sd15=str(broken), ella=str(hub_layout["ella_file"]), t5=str(hub_layout["t5"]), device="cpu")
    shutil.copytree(hub_layout["sd15"] / "scheduler", broken / "scheduler", dirs_exist_ok=True)
    with pytest.raises(ModelSourceError, match=r"has no vae weights: expected vae/diffusion_pytorch_model.safetensors"):
        load_models("sd15", sd15=str(broken), ella=str(hub_layout["ella_file"]), t5=str(hub_layout["t5"]), device="cpu")


def test_mismatched_parts_are_a_clear_error(hub_layout, tmp_path):
    release_like = tmp_path / ELLA_FILENAME
    save_ella_checkpoint(ELLA(layers=1), release_like)
    with pytest.raises(ModelSourceError, match="do not fit together: the UNet reads 32-wide tokens"):
        load_models(
            "sd15", sd15=str(hub_layout["sd15"]), ella=str(release_like), t5=str(hub_layout["t5"]), device="cpu"
        )


@pytest.mark.parametrize("spec", ["not a path or id", "/does/not/exist", "./missing-folder"])
def test_sources_that_are_neither_paths_nor_hub_ids_are_rejected(spec):
    with pytest.raises(ModelSourceError, match="neither an existing local path nor a hub id"):
        parse_source(spec)


def test_hub_ids_with_a_path_inside_the_repo_are_parsed():
    location = parse_source("QQGYLab/ELLA/models--google--flan-t5-xl--text_encoder")
    assert (location.repo_id, location.path) == ("QQGYLab/ELLA", T5_SUBFOLDER)


# --- no hub ------------------------------------------------------------------------------------


def test_offline_with_an_empty_cache_names_every_missing_file(tmp_path):
    started = time.monotonic()
    with pytest.raises(ModelSourceError) as raised:
        load_models("sd15", device="cpu", cache_dir=tmp_path)
    assert time.monotonic() - started < 10
    message = str(raised.value)
    for expected in (ELLA_FILENAME, f"{T5_SUBFOLDER}/*.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        assert expected in message
    assert "--preset pocket" in message and "--sd15 / --ella / --t5 PATH" in message


def test_unreachable_hub_fails_within_seconds_and_names_the_files(tmp_path):
    """Online mode against a hub address where nothing listens: no stall, a useful message."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "PYTHONPATH": str(REPO_ROOT),
    }
    script = "from ella_demo import load_models\nload_models('sd15', device='cpu')\n"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "ModelSourceError" in result.stderr
    assert "Connection refused" in result.stderr
    assert ELLA_FILENAME in result.stderr and "model_index.json" in result.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s to report an unreachable hub"
