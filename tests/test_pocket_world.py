"""The shipped pocket world: complete, checksummed, loaded by the pocket preset, and drawing what a prompt asks."""

from __future__ import annotations

import shutil

import pytest

from ella_demo.core.engine import generate
from ella_demo.core.settings import default_guidance
from ella_demo.loading.hub import ModelSourceError
from ella_demo.loading.models import load_models
from ella_demo.loading.pocket import CHECKSUMS, shipped_world, verify_checksums
from ella_demo.pocket.detector import detect
from ella_demo.pocket.shipping import MAX_SHIPPED_BYTES, world_files

# One large object each, in the training captions' templates; every colour and shape, no held-out pair.
SINGLE_OBJECT_PROMPTS = (
    ("There is a large red circle on a white background, drawn filled.", "red", "circle"),
    ("On a black background, a large blue square, filled.", "blue", "square"),
    ("A gray picture with a large filled green triangle.", "green", "triangle"),
    ("A large yellow filled cross is shown on a black background.", "yellow", "cross"),
    ("A filled drawing on a white background: a large purple circle.", "purple", "circle"),
    ("There is an orange square of large size on a gray background, drawn filled.", "orange", "square"),
    ("The background is black and the shape is filled: a large triangle in red.", "red", "triangle"),
    ("A large cross in blue, filled, on a white background.", "blue", "cross"),
    ("On a gray background, a large green circle, outlined.", "green", "circle"),
    ("A white picture with a large outlined orange triangle.", "orange", "triangle"),
)


@pytest.fixture(scope="module")
def pocket():
    return load_models("pocket")


def test_the_shipped_world_lists_every_file_in_its_checksums_and_fits_the_budget():
    world = shipped_world()
    listed = sorted(line.split("  ", 1)[1] for line in (world / CHECKSUMS).read_text().splitlines())
    assert listed == [name.as_posix() for name in world_files(world)]
    assert {"ella.safetensors", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "text_encoder/model.safetensors"} <= set(listed)  # fmt: skip
    weights = sum((world / name).stat().st_size for name in listed if name.endswith(".safetensors"))
    assert 0 < weights <= MAX_SHIPPED_BYTES
    verify_checksums(world)


def test_a_damaged_copy_of_the_world_is_refused_by_name(tmp_path):
    copy = shutil.copytree(shipped_world(), tmp_path / "world")
    weights = copy / "ella.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelSourceError, match=r"ella\.safetensors is missing or damaged"):
        load_models("pocket", sd15=str(copy))


def test_the_pocket_preset_loads_the_trained_world(pocket):
    assert pocket.sources["sd15"] == str(shipped_world()) and not pocket.random_weights
    assert pocket.native_size == 64


def test_both_sides_draw_the_requested_colour_of_single_object_prompts(pocket):
    """With fixed seeds, the detector must find an object of the asked colour in at least 9 of the 10 pictures of
    each side (measured: 10 of 10 on both sides, for seeds 0-9 and 100-109), at the preset's default guidance.

    The issue asks for the asked colour *and shape* in 8 of 10; the shipped UNet reaches 4-6 of 10 (README, "The
    pocket world"), so that bar is not tested here: it is not met yet."""
    found = {"clip": 0, "ella": 0}
    for seed, (prompt, colour, _) in enumerate(SINGLE_OBJECT_PROMPTS):
        result = generate(pocket, prompt, seed=seed, num_inference_steps=25, guidance_scale=default_guidance("pocket"))
        for side, images in (("clip", result.clip_images), ("ella", result.ella_images)):
            found[side] += any(item.colour == colour for item in detect(images[0]).objects)
    assert found["clip"] >= 9 and found["ella"] >= 9, found
