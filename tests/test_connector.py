"""The connector: checkpoint contract, maths, attention output, and strict checkpoint loading."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from diffusers.models.embeddings import Timesteps

from ella_demo import ELLA, EllaConfig
from ella_demo.core.connector import sinusoidal_timestep_features
from ella_demo.loading.checkpoint import CheckpointMismatchError, load_ella_checkpoint, save_ella_checkpoint
from ella_demo.loading.hub import ModelSourceError
from ella_demo.loading.sources import ELLA_CONFIG_METADATA_KEY

SMALL = EllaConfig(time_channel=16, time_embed_dim=24, width=32, layers=3, heads=4, num_latents=8, input_dim=20)


def small_model(seed: int = 0) -> ELLA:
    torch.manual_seed(seed)
    model = ELLA(SMALL).eval()
    # Random AdaLN projections (the release starts them at zero), so every block sees the timestep.
    for name, parameter in model.named_parameters():
        if ".linear." in name:
            torch.nn.init.normal_(parameter, std=0.1)
    return model


def test_default_architecture_matches_the_released_checkpoint_manifest(manifest):
    state = ELLA().state_dict()
    shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
    assert shapes == manifest
    assert len(state) == 93
    assert sum(tensor.numel() for tensor in state.values()) == 66_820_608


def test_constructor_overrides_change_the_architecture():
    model = ELLA(width=64, heads=4, layers=2, num_latents=16, input_dim=32, time_embed_dim=64, time_channel=32)
    assert model.connector.latents.shape == (16, 64)
    assert model.connector.proj_in.weight.shape == (64, 32)
    assert len(model.connector.perceiver_blocks) == 2


def test_timestep_features_equal_diffusers_timesteps_bit_for_bit():
    timesteps = torch.tensor([0, 1, 250, 999, 999.5])
    expected = Timesteps(320, flip_sin_to_cos=True, downscale_freq_shift=0)(timesteps)
    assert torch.equal(sinusoidal_timestep_features(timesteps, 320), expected)


def test_output_shape_and_attention_rows_sum_to_one():
    model = small_model()
    text = torch.randn(2, 5, SMALL.input_dim)
    hidden, attention = model(text, 10, return_attention=True)
    assert hidden.shape == (2, SMALL.num_latents, SMALL.width)
    assert attention.shape == (2, SMALL.layers, SMALL.heads, SMALL.num_latents, SMALL.num_latents + 5)
    assert torch.allclose(attention.sum(-1), torch.ones(2, SMALL.layers, SMALL.heads, SMALL.num_latents), atol=1e-5)
    assert (attention >= 0).all()


def test_output_depends_on_the_timestep():
    model = small_model()
    text = torch.randn(1, 5, SMALL.input_dim)
    with torch.no_grad():
        early, late = model(text, 999), model(text, 1)
    assert (early - late).abs().max() > 1e-3


def test_released_default_depends_on_the_timestep_even_with_zero_adaln():
    # With AdaLN projections at zero, time still enters through the query shift.
    model = ELLA(EllaConfig(layers=1)).eval()
    text = torch.randn(1, 3, 2048)
    with torch.no_grad():
        assert not torch.allclose(model(text, 999), model(text, 0))


@pytest.mark.parametrize(
    "scalar", [500, 500.0, torch.tensor(500), torch.tensor(500.0)], ids=["int", "float", "tensor-int", "tensor-float"]
)
def test_scalar_timestep_equals_per_sample_timesteps(scalar):
    model = small_model()
    text = torch.randn(3, 4, SMALL.input_dim)
    with torch.no_grad():
        broadcast = model(text, scalar)
        per_sample = model(text, torch.tensor([500, 500, 500]))
    assert torch.allclose(broadcast, per_sample, atol=1e-6)


def test_per_sample_timesteps_match_separate_calls():
    model = small_model()
    text = torch.randn(2, 4, SMALL.input_dim)
    with torch.no_grad():
        batched = model(text, torch.tensor([900, 100]))
        first, second = model(text[:1], 900), model(text[1:], 100)
    assert torch.allclose(batched, torch.cat([first, second]), atol=1e-5)


def test_wrong_timestep_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"timesteps must be a scalar or have shape \(2,\)"):
        small_model()(torch.randn(2, 4, SMALL.input_dim), torch.tensor([1, 2, 3]))


def test_asking_for_attention_does_not_change_the_hidden_states():
    model = small_model()
    text = torch.randn(2, 7, SMALL.input_dim)
    with torch.no_grad():
        fused = model(text, torch.tensor([3, 700]))
        hidden, _ = model(text, torch.tensor([3, 700]), return_attention=True)
    assert torch.equal(fused, hidden)  # bit for bit: tracing must not change images


def test_weights_computed_beside_the_fused_kernel_equal_pytorchs_own():
    block = small_model().connector.perceiver_blocks[0]
    queries, keys = torch.randn(2, 5, SMALL.width), torch.randn(2, 9, SMALL.width)
    with torch.no_grad():
        _, reference = block.attn(queries, keys, keys, need_weights=True, average_attn_weights=False)
        ours = block.attention_weights(queries, keys)
    assert ours.shape == (2, SMALL.heads, 5, 9)
    assert torch.allclose(ours, reference, atol=1e-6)


def test_the_fused_kernel_runs_with_and_without_attention_weights(monkeypatch):
    requested = []
    original = torch.nn.MultiheadAttention.forward

    def recording_forward(self, *args, **kwargs):
        requested.append(kwargs.get("need_weights"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.MultiheadAttention, "forward", recording_forward)
    model = small_model()
    with torch.no_grad():
        model(torch.randn(1, 4, SMALL.input_dim), 5)
        assert requested == [False] * SMALL.layers
        model(torch.randn(1, 4, SMALL.input_dim), 5, return_attention=True)
    assert requested == [False] * 2 * SMALL.layers


def test_first_block_attention_keys_are_latents_then_text():
    """Recompute block 0's attention by hand: queries from the latents, keys [latents, text]."""
    model = small_model()
    text = torch.randn(1, 6, SMALL.input_dim)
    with torch.no_grad():
        _, attention = model(text, 321, return_attention=True)
        features = sinusoidal_timestep_features(torch.tensor([321]), SMALL.time_channel)
        temb = model.time_embedding(features).unsqueeze(1)
        resampler = model.connector
        latents = resampler.latents[None] + resampler.time_aware_linear(torch.nn.functional.silu(temb))
        block = resampler.perceiver_blocks[0]
        normed_latents = block.ln_1(latents, temb)
        normed_text = block.ln_2(resampler.proj_in(text), temb)
        keys = torch.cat([normed_latents, normed_text], dim=1)
        w_q, w_k, _ = block.attn.in_proj_weight.chunk(3)
        b_q, b_k, _ = block.attn.in_proj_bias.chunk(3)
        head_dim = SMALL.width // SMALL.heads
        q = (normed_latents @ w_q.T + b_q).view(1, -1, SMALL.heads, head_dim).transpose(1, 2)
        k = (keys @ w_k.T + b_k).view(1, -1, SMALL.heads, head_dim).transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-1, -2) / head_dim**0.5, dim=-1)
    assert torch.allclose(attention[:, 0], expected, atol=1e-5)


def test_adaln_starts_as_a_plain_layer_norm():
    block = ELLA(SMALL).connector.perceiver_blocks[0]
    x, temb = torch.randn(2, 5, SMALL.width), torch.randn(2, 1, SMALL.time_embed_dim)
    expected = torch.nn.functional.layer_norm(x, (SMALL.width,), eps=1e-6)
    assert torch.allclose(block.ln_1(x, temb), expected, atol=1e-6)


def test_fp16_checkpoint_round_trip_is_strict_and_cast_to_runtime_dtype(tmp_path):
    model = small_model()
    path = tmp_path / "connector.safetensors"
    save_ella_checkpoint(model, path)
    stored = safetensors.torch.load_file(str(path))
    assert {tensor.dtype for tensor in stored.values()} == {torch.float16}
    loaded = load_ella_checkpoint(path, dtype=torch.float32)
    assert loaded.config == SMALL
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, model.state_dict()[name].half().float()), name


def test_checkpoint_without_metadata_loads_as_the_released_architecture(tmp_path):
    torch.manual_seed(1)
    reference = ELLA()
    path = tmp_path / "ella-sd1.5-tsc-t5xl.safetensors"
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in reference.state_dict().items()}, str(path))
    loaded = load_ella_checkpoint(path)
    assert loaded.config == EllaConfig()
    assert torch.equal(loaded.connector.latents, reference.connector.latents.half().float())


def test_tampered_checkpoint_names_every_bad_key(tmp_path):
    state = {name: tensor.half().contiguous() for name, tensor in small_model().state_dict().items()}
    state["connector.latent_queries"] = state.pop("connector.latents")
    del state["connector.perceiver_blocks.1.mlp.c_fc.bias"]
    state["connector.proj_in.weight"] = torch.zeros(SMALL.width, SMALL.input_dim + 1, dtype=torch.float16)
    path = tmp_path / "tampered.safetensors"
    metadata = {ELLA_CONFIG_METADATA_KEY: json.dumps(SMALL.to_dict())}
    safetensors.torch.save_file(state, str(path), metadata=metadata)
    with pytest.raises(CheckpointMismatchError) as raised:
        load_ella_checkpoint(path)
    message = str(raised.value)
    assert "missing (2): connector.latents, connector.perceiver_blocks.1.mlp.c_fc.bias" in message
    assert "unexpected (1): connector.latent_queries" in message
    assert "connector.proj_in.weight (file (32, 21), model (32, 20))" in message


def test_a_small_checkpoint_does_not_load_as_the_release(tmp_path):
    path = tmp_path / "small.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in small_model().state_dict().items()}, str(path))
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        load_ella_checkpoint(path)


@pytest.mark.parametrize("name", ["ella.bin", "ella.pt", "ella.ckpt"])
def test_connector_loads_safetensors_only(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not read")
    with pytest.raises(ModelSourceError, match="safetensors files only"):
        load_ella_checkpoint(path)


def test_corrupt_safetensors_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelSourceError, match="not a readable safetensors file"):
        load_ella_checkpoint(path)
