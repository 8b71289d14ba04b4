"""Loading for connector training and its results: a new connector ("scratch"), a connector file with the
weightless presets, any transformers text encoder in place of T5, and the one safetensors reader.

Everything is built here, offline: a tiny BERT encoder with an in-process WordPiece tokenizer stands
for "another text encoder", and the session's tiny models (never modified) for the rest.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from test_loading import make_hub_cache, same_weights
from tests_support import write_tiny_bert
from transformers import BartConfig, BartModel, BertModel, T5EncoderModel

import ella_demo
from ella_demo import load_models
from ella_demo.cli.arguments import FLAGS, add_model_arguments, describe_error, load_from_args
from ella_demo.core.connector import EllaConfig
from ella_demo.core.errors import InputError
from ella_demo.loading.checkpoint import (
    CheckpointMismatchError,
    read_safetensors,
    save_ella_checkpoint,
)
from ella_demo.loading.hub import ModelSourceError
from ella_demo.loading.models import new_connector
from ella_demo.loading.shipped import package_config_dir, read_json
from ella_demo.loading.sources import ELLA_CONFIG_METADATA_KEY, ELLA_SCRATCH

BERT_WIDTH = 48
TINY_ELLA = read_json(package_config_dir("tiny") / "ella.json")
PROMPT = "a red cube"


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), PROMPT.split(), BERT_WIDTH)


def adaln_linears(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in model.state_dict().items() if ".ln_" in name and ".linear." in name}


# --- a new connector ------------------------------------------------------------------------------


def test_scratch_connector_fits_the_tiny_preset_and_is_labelled_untrained():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models = load_models("tiny", ella=ELLA_SCRATCH, device="cpu", seed=0)
    assert torch.equal(torch.rand(3), expected), "loading a scratch connector changed the global RNG"
    assert models.random_weights
    assert models.sources["ella"] == "new connector (untrained, seed 0)"
    assert models.ella.config == EllaConfig(**TINY_ELLA)
    assert all(not tensor.any() for tensor in adaln_linears(models.ella).values())


def test_scratch_connectors_follow_the_seed():
    first, again, other = (load_models("tiny", ella="scratch", device="cpu", seed=s).ella for s in (0, 0, 1))
    assert same_weights(first, again)
    assert not torch.equal(first.connector.latents, other.connector.latents)


def test_scratch_connector_at_sd15_width_is_the_release_before_training(manifest):
    """Only the connector is built: the sd15 widths come from stand-ins for the UNet and FLAN-T5-XL."""
    unet = SimpleNamespace(config=SimpleNamespace(cross_attention_dim=768))
    t5_xl = SimpleNamespace(config=SimpleNamespace(d_model=2048))
    state = torch.get_rng_state()
    connector = new_connector({}, unet, t5_xl, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert connector.config == EllaConfig()
    assert {name: tuple(tensor.shape) for name, tensor in connector.state_dict().items()} == manifest
    assert len(adaln_linears(connector)) == 36 and all(not t.any() for t in adaln_linears(connector).values())
    assert connector.connector.latents.std().item() == pytest.approx(768**-0.5, rel=0.02)
    assert same_weights(connector, new_connector({}, unet, t5_xl, seed=0))


def test_sd15_preset_with_a_scratch_connector_downloads_no_connector(tiny, hub_layout, tmp_path):
    """The empty cache and the offline hub would fail any attempt to fetch the released connector."""
    models = load_models(
        "sd15",
        sd15=str(hub_layout["sd15"]),
        t5=str(hub_layout["t5"]),
        ella="scratch",
        device="cpu",
        cache_dir=tmp_path / "empty_cache",
        seed=3,
    )
    assert models.random_weights
    assert models.sources["ella"] == "new connector (untrained, seed 3)"
    # Sized to the parts, the rest EllaConfig's defaults (the release's).
    assert models.ella.config == EllaConfig(width=32, input_dim=64)
    assert same_weights(models.pipe.unet, tiny.pipe.unet)


# --- a connector file with the weightless presets -------------------------------------------------


def test_weightless_preset_loads_a_connector_file(tiny, tmp_path):
    trained = copy.deepcopy(tiny.ella)  # the shared tiny models stay as they are
    with torch.no_grad():
        trained.connector.latents[0, 0] = 0.5
    path = tmp_path / "trained.safetensors"
    save_ella_checkpoint(trained, path, dtype=torch.float32)
    models = load_models("tiny", ella=str(path), device="cpu")
    assert models.ella.connector.latents[0, 0].item() == 0.5
    assert same_weights(models.ella, trained)
    assert models.random_weights  # the UNet is still random
    assert models.sources["ella"] == str(path)


def test_weightless_preset_loads_connector_files_strictly(tiny, tmp_path):
    tensors = {name: tensor.contiguous() for name, tensor in tiny.ella.state_dict().items()}
    del tensors["connector.latents"]
    path = tmp_path / "incomplete.safetensors"
    metadata = {ELLA_CONFIG_METADATA_KEY: json.dumps(tiny.ella.config.to_dict())}
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): connector.latents"):
        load_models("tiny", ella=str(path), device="cpu")


def test_connector_for_another_text_encoder_is_refused_with_the_widths(tmp_path):
    path = tmp_path / "for_bert.safetensors"
    save_ella_checkpoint(new_connector(TINY_ELLA, *_fake_widths(32, BERT_WIDTH), seed=0), path)
    with pytest.raises(ModelSourceError) as raised:
        load_models("tiny", ella=str(path), device="cpu")
    message = str(raised.value)
    assert "the text encoder makes 64-wide features, the connector reads 48" in message
    assert "--text-encoder" in message


def _fake_widths(cross: int, text: int) -> tuple[SimpleNamespace, SimpleNamespace]:
    """Stand-ins with just the config widths `new_connector` reads."""
    return SimpleNamespace(config=SimpleNamespace(cross_attention_dim=cross)), SimpleNamespace(
        config=SimpleNamespace(hidden_size=text)
    )


@pytest.mark.parametrize("override", ["sd15", "t5"])
def test_sd15_and_t5_stay_refused_with_weightless_presets(override, hub_layout):
    with pytest.raises(InputError, match=f"{override} is for preset sd15 only"):
        load_models("tiny", **{override: str(hub_layout[override])}, device="cpu")


# --- any text encoder -----------------------------------------------------------------------------


def test_a_bert_encoder_with_a_scratch_connector_generates_end_to_end(bert_folder):
    models = load_models("tiny", text_encoder=str(bert_folder), ella="scratch", device="cpu")
    assert isinstance(models.t5, BertModel)
    assert models.ella.config.input_dim == BERT_WIDTH == models.t5.config.hidden_size
    assert models.sources["t5"] == str(bert_folder)
    assert same_weights(models.t5, BertModel.from_pretrained(bert_folder))
    encoding = models.t5_encoder.encode(PROMPT)
    assert encoding.tokens == ("[CLS]", "a", "red", "cube", "[SEP]")
    assert encoding.features.shape == (1, 5, BERT_WIDTH)
    result = ella_demo.generate(models, PROMPT, num_inference_steps=2, height=32, width=32)
    assert result.ella_images[0].size == (32, 32)


def test_a_t5_folder_as_text_encoder_loads_the_encoder_only(tiny, hub_layout):
    models = load_models("tiny", text_encoder=str(hub_layout["t5"]), device="cpu")
    assert type(models.t5) is T5EncoderModel
    assert same_weights(models.t5, tiny.t5)
    assert models.t5_encoder.encode("a red cat").tokens == tiny.t5_encoder.encode("a red cat").tokens


def test_sd15_preset_takes_a_text_encoder_from_the_hub_cache(bert_folder, hub_layout, tmp_path):
    make_hub_cache(tmp_path / "cache", "someone/tiny-bert", bert_folder)
    models = load_models(
        "sd15",
        sd15=str(hub_layout["sd15"]),
        text_encoder="someone/tiny-bert",
        ella="scratch",
        device="cpu",
        cache_dir=tmp_path / "cache",
    )
    assert isinstance(models.t5, BertModel)
    assert models.sources["t5"] == "someone/tiny-bert"


def test_text_encoder_and_t5_together_are_refused(bert_folder, hub_layout):
    with pytest.raises(InputError, match="text_encoder cannot be used together with t5") as raised:
        load_models("sd15", t5=str(hub_layout["t5"]), text_encoder=str(bert_folder), device="cpu")
    assert describe_error(raised.value).startswith("--text-encoder cannot be used together with t5 (--t5")


@pytest.mark.parametrize(
    ("removed", "named"),
    [("model.safetensors", r"model\.safetensors \(or its shards\)"), ("tokenizer.json", r"tokenizer\.json or")],
)
def test_a_text_encoder_folder_lacking_files_names_them(bert_folder, tmp_path, removed, named):
    broken = tmp_path / "broken"
    shutil.copytree(bert_folder, broken)
    (broken / removed).unlink()
    with pytest.raises(ModelSourceError, match=rf"The text encoder folder .*broken lacks {named}"):
        load_models("tiny", text_encoder=str(broken), ella="scratch", device="cpu")


def test_an_encoder_decoder_without_an_encoder_only_class_is_refused(bert_folder, tmp_path):
    folder = tmp_path / "bart"
    config = BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=16,
                        decoder_ffn_dim=16, encoder_attention_heads=2, decoder_attention_heads=2)  # fmt: skip
    BartModel(config).save_pretrained(folder)
    shutil.copy(bert_folder / "tokenizer.json", folder)
    with pytest.raises(ModelSourceError, match="encoder-decoder model \\(bart\\)"):
        load_models("tiny", text_encoder=str(folder), ella="scratch", device="cpu")


def test_the_cli_flags_choose_the_text_encoder_and_a_scratch_connector(bert_folder):
    parser = argparse.ArgumentParser()
    add_model_arguments(parser, default_preset="tiny")
    args = parser.parse_args(["--text-encoder", str(bert_folder), "--ella", "scratch", "--device", "cpu"])
    models = load_from_args(args)
    assert isinstance(models.t5, BertModel) and models.random_weights
    assert FLAGS["text_encoder"] == "--text-encoder"
    assert "scratch" in parser.format_help()


# --- the safetensors reader -----------------------------------------------------------------------


def test_read_safetensors_returns_the_tensors_and_metadata(tmp_path):
    path = tmp_path / "state.safetensors"
    tensors = {"step": torch.tensor([7]), "moment": torch.arange(6.0).reshape(2, 3)}
    safetensors.torch.save_file(tensors, str(path), metadata={"kind": "optimizer"})
    read, metadata = read_safetensors(path)
    assert read.keys() == tensors.keys() and all(torch.equal(read[k], tensors[k]) for k in tensors)
    assert metadata == {"kind": "optimizer"}


def test_read_safetensors_refuses_other_files(tmp_path):
    pickle_file = tmp_path / "state.pt"
    pickle_file.write_bytes(b"never unpickled")
    with pytest.raises(ModelSourceError, match="safetensors files only"):
        read_safetensors(pickle_file)
    corrupt = tmp_path / "state.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelSourceError, match="not a readable safetensors file"):
        read_safetensors(corrupt)
