"""LoRAs on the tiny preset, from files these tests write in A1111/kohya and diffusers layouts.

Each test loads its own tiny models (under a second): LoRAs change the shared UNet and CLIP, and the
session's `tiny` fixture must stay as it was.
"""

from __future__ import annotations

import argparse
import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tests_support import RANK, clip_layers, random_factors, unet_layers, unet_lora_file, write_diffusers, write_kohya

from ella_demo import generate, load_models
from ella_demo.cli.arguments import parse_lora_argument
from ella_demo.core.adapters import AdapterSwitch, LoraInfo
from ella_demo.core.settings import SettingsError
from ella_demo.loading.addition_files import AdapterFileError
from ella_demo.loading.additions import Additions
from ella_demo.loading.lora import LoraSpec, load_loras, unload_loras

RUN = {"prompt": "a red cube left of a blue ball", "seed": 3, "num_inference_steps": 3, "output_type": "latent"}


WRITERS = {"kohya": (write_kohya, 2.0 / RANK), "diffusers": (write_diffusers, 1.0)}


def merged_by_hand(factors: dict, model, scale: float) -> None:
    """W += scale * up @ down for each layer: what the LoRA should make of `model`, computed without diffusers."""
    with torch.no_grad():
        for name, (down, up) in factors.items():
            model.get_submodule(name).weight += scale * up @ down


def latents(result) -> dict[str, torch.Tensor]:
    return {side: tensor.clone() for side, tensor in result.latents.items()}


def assert_same(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for side in first:
        assert torch.equal(first[side], second[side]), side


def assert_differ(first: dict, second: dict, sides=("clip", "ella")) -> None:
    for side in sides:
        assert (first[side] - second[side]).abs().max() > 1e-3, side


@pytest.fixture
def fresh():
    return load_models("tiny", device="cpu")


@pytest.mark.parametrize("layout", WRITERS)
def test_a_unet_lora_changes_both_sides_as_the_same_hand_merged_unet_does(fresh, tmp_path, layout):
    write, scale = WRITERS[layout]
    factors = random_factors(fresh.pipe.unet, unet_layers(fresh), seed=1)
    reference = load_models("tiny", device="cpu")
    merged_by_hand(factors, reference.pipe.unet, 0.8 * scale)
    before = latents(generate(fresh, **RUN))
    load_loras(fresh, [LoraSpec(write(tmp_path / f"{layout}.safetensors", factors, {}), 0.8)])
    with_lora = latents(generate(fresh, **RUN))
    by_hand = latents(generate(reference, **RUN))
    assert_differ(with_lora, before)
    for side in ("clip", "ella"):  # both sides get the same LoRA: each matches the same hand-merged UNet
        torch.testing.assert_close(with_lora[side], by_hand[side], atol=1e-3, rtol=1e-3)
    assert fresh.loras[0].parts == ("unet",) and fresh.loras[0].file == f"{layout}.safetensors"
    recorded = generate(fresh, **RUN, loras={layout: 0.5})
    assert recorded.settings.loras == ((layout, 0.5),)  # what meta.json and the PNG's settings keep
    assert recorded.provenance.to_dict()["additions"] == [
        f"LoRA {layout}: {layout}.safetensors (UNet; weight chosen per run)"
    ]


@pytest.mark.parametrize("layout", WRITERS)
def test_a_clip_lora_changes_the_clip_side_and_ella_clip_but_never_t5_alone(fresh, tmp_path, layout):
    write, scale = WRITERS[layout]
    factors = random_factors(fresh.pipe.text_encoder, clip_layers(fresh), seed=2, scale=0.2)
    reference = load_models("tiny", device="cpu")
    merged_by_hand(factors, reference.pipe.text_encoder, scale)
    runs = {mode: latents(generate(fresh, **RUN, mode=mode)) for mode in ("ella", "ella+clip")}
    load_loras(fresh, [LoraSpec(write(tmp_path / "clip.safetensors", {}, factors))])
    assert fresh.loras[0].parts == ("text_encoder",)
    plain = latents(generate(fresh, **RUN, mode="ella"))
    assert torch.equal(plain["ella"], runs["ella"]["ella"])  # T5 -> connector: no CLIP anywhere
    assert_differ(plain, runs["ella"], sides=("clip",))
    mixed = latents(generate(fresh, **RUN, mode="ella+clip"))
    assert_differ(mixed, runs["ella+clip"], sides=("ella",))
    by_hand = latents(generate(reference, **RUN, mode="ella+clip"))
    for side in ("clip", "ella"):
        torch.testing.assert_close(mixed[side], by_hand[side], atol=1e-3, rtol=1e-3)


def test_zero_weight_leaves_images_unchanged_and_removal_restores_them_exactly(fresh, tmp_path):
    unet = random_factors(fresh.pipe.unet, unet_layers(fresh), seed=3)
    clip = random_factors(fresh.pipe.text_encoder, clip_layers(fresh), seed=4)
    before = latents(generate(fresh, **RUN, mode="ella+clip"))
    load_loras(fresh, [LoraSpec(write_kohya(tmp_path / "both.safetensors", unet, clip), 0.0)])
    assert_same(latents(generate(fresh, **RUN, mode="ella+clip")), before)  # start-up weight 0
    on = latents(generate(fresh, **RUN, mode="ella+clip", loras={"both": 1.0}))
    assert_differ(on, before)
    assert_same(latents(generate(fresh, **RUN, mode="ella+clip", loras={"both": 0.0})), before)  # back off per run
    assert_same(latents(generate(fresh, **RUN, mode="ella+clip", loras={"both": 1.0})), on)  # and on again
    unload_loras(fresh)
    assert fresh.loras == ()
    assert_same(latents(generate(fresh, **RUN, mode="ella+clip")), before)


def test_two_sessions_running_at_once_never_see_each_others_lora_weight(fresh, tmp_path):
    load_loras(fresh, [LoraSpec(unet_lora_file(fresh, tmp_path / "style.safetensors", seed=5))])
    expected = {weight: latents(generate(fresh, **RUN, loras={"style": weight})) for weight in (0.0, 1.0)}
    assert_differ(expected[0.0], expected[1.0])
    seen, errors = [], []

    def session(weight: float) -> None:
        try:
            for _ in range(3):
                seen.append((weight, latents(generate(fresh, **RUN, loras={"style": weight}))))
        except Exception as error:  # noqa: BLE001 - a thread's exception would be lost; asserted below
            errors.append(error)

    threads = [threading.Thread(target=session, args=(weight,)) for weight in (0.0, 1.0, 0.0, 1.0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(seen) == 12
    for weight, result in seen:
        assert_same(result, expected[weight])


def test_a_fused_lora_is_in_every_run_and_has_no_per_run_weight(fresh, tmp_path):
    factors = random_factors(fresh.pipe.unet, unet_layers(fresh), seed=6)
    path = write_diffusers(tmp_path / "fused.safetensors", factors, {})
    switchable = load_models("tiny", device="cpu", additions=Additions((LoraSpec(path, 0.5),)))
    per_run = latents(generate(switchable, **RUN))
    load_loras(fresh, [LoraSpec(path, 0.5)], fuse=True)
    torch.testing.assert_close(latents(generate(fresh, **RUN)), per_run, atol=1e-4, rtol=1e-4)
    assert fresh.loras[0].fused and "fused at start-up at weight 0.5" in fresh.loras[0].describe()
    with pytest.raises(SettingsError, match="fused at start-up; its weight is fixed"):
        generate(fresh, **RUN, loras={"fused": 1.0})


@pytest.mark.parametrize(
    ("loras", "message"),
    [
        ({"nope": 1.0}, "'nope', which was not loaded at start-up. LoRAs with a per-run weight: style"),
        ({"style": 3.0}, "from -2 to 2, got 3.0"),
        ({"style": float("nan")}, "must be from -2 to 2, got nan"),
        ({"style": True}, "must be a number"),
    ],
)
def test_bad_lora_weights_are_refused_before_any_work(fresh, tmp_path, loras, message):
    load_loras(fresh, [LoraSpec(unet_lora_file(fresh, tmp_path / "style.safetensors", seed=7, layers=2))])
    with pytest.raises(SettingsError, match=message):
        generate(fresh, **RUN, loras=loras)


def write_pickle_bomb(path: Path, marker: Path) -> Path:
    """A pickle that creates `marker` when loaded: what a malicious .ckpt or .pt could do."""

    class Bomb:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path.write_bytes(pickle.dumps(Bomb()))
    return path


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".safetensors"])
def test_pickle_files_are_refused_without_being_unpickled(fresh, tmp_path, suffix):
    marker = tmp_path / "code-ran"
    path = write_pickle_bomb(tmp_path / f"lora{suffix}", marker)
    expected = "not a valid safetensors file" if suffix == ".safetensors" else "only .safetensors files are read"
    with pytest.raises(AdapterFileError, match=expected):
        load_loras(fresh, [LoraSpec(path)])
    assert not marker.exists() and fresh.loras == ()


def test_files_that_are_not_sd15_loras_are_refused_by_name(fresh, tmp_path):
    save_file({"some.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(AdapterFileError, match=r"other\.safetensors could not be loaded as an SD1\.5 LoRA"):
        load_loras(fresh, [LoraSpec(tmp_path / "other.safetensors")])
    with pytest.raises(AdapterFileError, match="no such file"):
        load_loras(fresh, [LoraSpec(tmp_path / "missing.safetensors")])
    assert fresh.loras == () and not any(fresh.pipe.get_list_adapters().values())


def test_lora_arguments_take_an_optional_weight_after_the_last_colon():
    assert parse_lora_argument("style.safetensors") == LoraSpec(Path("style.safetensors"), 1.0)
    assert parse_lora_argument("a/style.safetensors:0.6") == LoraSpec(Path("a/style.safetensors"), 0.6)
    assert parse_lora_argument("C:\\loras\\style.safetensors") == LoraSpec(Path("C:\\loras\\style.safetensors"))
    assert parse_lora_argument("C:\\style.safetensors:-1") == LoraSpec(Path("C:\\style.safetensors"), -1.0)
    with pytest.raises(argparse.ArgumentTypeError, match="from -2 to 2"):
        parse_lora_argument("style.safetensors:5")


def test_names_come_from_file_names_and_stay_unique(fresh, tmp_path):
    factors = random_factors(fresh.pipe.unet, unet_layers(fresh)[:2], seed=8)
    first = write_kohya(tmp_path / "my style v2.safetensors", factors, {})
    (tmp_path / "other").mkdir()
    second = write_kohya(tmp_path / "other" / "my style v2.safetensors", factors, {})
    load_loras(fresh, [LoraSpec(first), LoraSpec(second, 0.3)])
    assert [(lora.name, lora.weight) for lora in fresh.loras] == [("my_style_v2", 1.0), ("my_style_v2_2", 0.3)]
    assert all("/" not in lora.file for lora in fresh.loras)  # the UI never shows a server folder


class FakeEncoder:
    def __init__(self):
        self.variant = ()
        self.cache = type("Cache", (), {"clear": lambda self: None})()


STYLE = (LoraInfo("style", "style.safetensors", 1.0, ("unet",)),)


class NoAdapters:
    """A pipeline without adapters: the switch's ordering alone is under test."""

    def get_list_adapters(self):
        return {}


def test_a_run_with_other_weights_is_never_overtaken_by_later_runs_with_the_weights_in_force():
    switch = AdapterSwitch(NoAdapters(), FakeEncoder(), lambda: STYLE)
    started, release = [], threading.Event()

    def run(label: str, weight: float, hold: threading.Event | None = None) -> None:
        with switch.active((("style", weight),)):
            started.append(label)
            if hold is not None:
                hold.wait(10)

    first = threading.Thread(target=run, args=("A1", 1.0, release))
    first.start()
    deadline = time.monotonic() + 10
    while started != ["A1"] and time.monotonic() < deadline:
        time.sleep(0.01)
    others = [threading.Thread(target=run, args=("B", 0.5)), threading.Thread(target=run, args=("A2", 1.0))]
    for thread in others:  # B asks first, then A2, whose weights are the ones in force
        thread.start()
        time.sleep(0.2)
    assert started == ["A1"]  # A2 waits behind B instead of joining A1
    release.set()
    for thread in (first, *others):
        thread.join(10)
    assert started == ["A1", "B", "A2"]


def test_runs_with_the_weights_in_force_share_the_models_when_nobody_waits():
    switch = AdapterSwitch(NoAdapters(), FakeEncoder(), lambda: STYLE)
    inside, release = [], threading.Event()

    def run() -> None:
        with switch.active((("style", 1.0),)):
            inside.append(1)
            release.wait(10)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(inside) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(inside) == 3  # all three at once
    release.set()
    for thread in threads:
        thread.join(10)


def test_clip_features_follow_loras_fused_or_removed_while_the_models_serve(fresh, tmp_path):
    factors = random_factors(fresh.pipe.text_encoder, clip_layers(fresh), seed=10, scale=0.2)
    path = write_kohya(tmp_path / "clip.safetensors", {}, factors)
    before = latents(generate(fresh, **RUN, mode="ella+clip"))  # CLIP features now cached
    load_loras(fresh, [LoraSpec(path)], fuse=True)
    reference = load_models("tiny", device="cpu", additions=Additions((LoraSpec(path),), fuse_loras=True))
    fused = latents(generate(fresh, **RUN, mode="ella+clip"))
    assert_same(fused, latents(generate(reference, **RUN, mode="ella+clip")))
    assert_differ(fused, before)
    switchable = load_models("tiny", device="cpu")
    generate(switchable, **RUN, mode="ella+clip")
    load_loras(switchable, [LoraSpec(path)])
    with_lora = latents(generate(switchable, **RUN, mode="ella+clip"))
    unload_loras(switchable)
    assert_same(latents(generate(switchable, **RUN, mode="ella+clip")), before)
    assert_differ(with_lora, before)


def test_unet_only_loras_at_many_weights_keep_one_clip_entry_per_prompt(fresh, tmp_path):
    load_loras(fresh, [LoraSpec(unet_lora_file(fresh, tmp_path / "style.safetensors", seed=11, layers=2))])
    for weight in (0.1, 0.2, 0.3, 0.4, 0.5):
        generate(fresh, **{**RUN, "num_inference_steps": 1}, loras={"style": weight})
    assert len(fresh.clip_encoder.cache) == 2  # the prompt and the empty negative prompt, whatever the UNet's weight


def test_lora_weights_of_any_numeric_type_are_checked_and_huge_ones_refused(fresh, tmp_path):
    load_loras(fresh, [LoraSpec(unet_lora_file(fresh, tmp_path / "style.safetensors", seed=12, layers=2))])
    assert generate(fresh, **RUN, loras={"style": np.float32(0.5)}).settings.loras == (("style", 0.5),)
    with pytest.raises(SettingsError, match="must be from -2 to 2"):
        generate(fresh, **RUN, loras={"style": 10**400})


def test_start_up_weights_out_of_range_and_fusing_after_switchable_loras_are_refused(fresh, tmp_path):
    path = unet_lora_file(fresh, tmp_path / "style.safetensors", seed=13, layers=2)
    with pytest.raises(AdapterFileError, match="must be from -2 to 2, got 5"):
        load_loras(fresh, [LoraSpec(path, 5.0)])
    load_loras(fresh, [LoraSpec(path)])
    with pytest.raises(AdapterFileError, match="fused only before any LoRA with a per-run weight"):
        load_loras(fresh, [LoraSpec(path)], fuse=True)


def test_a_failed_load_leaves_none_of_its_files_loaded(fresh, tmp_path):
    good = unet_lora_file(fresh, tmp_path / "good.safetensors", seed=14, layers=2)
    save_file({"some.weight": torch.zeros(2, 2)}, tmp_path / "bad.safetensors")
    with pytest.raises(AdapterFileError, match=r"bad\.safetensors"):
        load_loras(fresh, [LoraSpec(good), LoraSpec(tmp_path / "bad.safetensors")])
    assert fresh.loras == () and not any(fresh.pipe.get_list_adapters().values())


def test_file_names_that_clash_with_torch_attributes_still_load(fresh, tmp_path):
    load_loras(fresh, [LoraSpec(unet_lora_file(fresh, tmp_path / "keys.safetensors", seed=15, layers=2))])
    assert [lora.name for lora in fresh.loras] == ["lora_keys"]
    generate(fresh, **{**RUN, "num_inference_steps": 1}, loras={"lora_keys": 1.0})
