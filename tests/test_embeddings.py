"""Textual-inversion embeddings for CLIP on the tiny preset, from files these tests write in both layouts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ella_demo import generate, load_models
from ella_demo.cli.arguments import parse_embedding_argument
from ella_demo.core.text_encoding import expand_multi_vector_tokens
from ella_demo.loading.addition_files import AdapterFileError
from ella_demo.loading.additions import Additions
from ella_demo.loading.embeddings import EmbeddingSpec, load_embeddings

RUN = {"seed": 4, "num_inference_steps": 2, "output_type": "latent"}


@pytest.fixture
def fresh():
    return load_models("tiny", device="cpu")


def width(models) -> int:
    return models.pipe.text_encoder.get_input_embeddings().weight.shape[-1]


def a1111_file(path: Path, vectors: torch.Tensor) -> Path:
    save_file({"emb_params": vectors}, path)
    return path


def diffusers_file(path: Path, token: str, vector: torch.Tensor) -> Path:
    save_file({token: vector}, path)
    return path


def test_an_a1111_embedding_is_named_after_its_file_and_changes_only_what_reads_clip(fresh, tmp_path):
    prompt = "a shiny-style cube"
    before = {mode: generate(fresh, prompt, mode=mode, **RUN).latents for mode in ("ella", "ella+clip")}
    vectors = torch.randn(1, width(fresh), generator=torch.Generator().manual_seed(0))
    load_embeddings(fresh, [EmbeddingSpec(a1111_file(tmp_path / "shiny-style.safetensors", vectors))])
    assert [(item.token, item.file, item.vectors) for item in fresh.embeddings] == [
        ("shiny-style", "shiny-style.safetensors", 1)
    ]
    encoding = fresh.clip_encoder.encode(prompt)
    assert "shiny-style" in encoding.tokens  # one token now, the learned vector
    token_id = fresh.pipe.tokenizer.convert_tokens_to_ids("shiny-style")
    assert torch.equal(fresh.pipe.text_encoder.get_input_embeddings().weight[token_id], vectors[0])
    after = {mode: generate(fresh, prompt, mode=mode, **RUN).latents for mode in ("ella", "ella+clip")}
    assert torch.equal(after["ella"]["ella"], before["ella"]["ella"])  # T5 never sees it
    assert not torch.equal(after["ella"]["clip"], before["ella"]["clip"])
    assert not torch.equal(after["ella+clip"]["ella"], before["ella+clip"]["ella"])


def test_a_diffusers_embedding_brings_its_token_and_a_given_token_replaces_it(fresh, tmp_path):
    vector = torch.randn(width(fresh))
    load_embeddings(fresh, [EmbeddingSpec(diffusers_file(tmp_path / "learned.safetensors", "<toy>", vector))])
    load_embeddings(fresh, [EmbeddingSpec(diffusers_file(tmp_path / "other.safetensors", "<x>", vector), "<mine>")])
    assert [item.token for item in fresh.embeddings] == ["<toy>", "<mine>"]
    words = [word.text for word in fresh.clip_encoder.encode("a <toy> and a <mine> cat").words]
    assert words[1:8] == ["a", "<toy>", "and", "a", "<mine>", "cat", "<|endoftext|>"]


def test_a_multi_vector_embedding_is_expanded_and_its_tokens_point_at_the_word_written(fresh, tmp_path):
    vectors = torch.randn(3, width(fresh))
    load_embeddings(fresh, [EmbeddingSpec(a1111_file(tmp_path / "style.safetensors", vectors), "<st>")])
    prompt = "a <st> dog"
    encoding = fresh.clip_encoder.encode(prompt)
    assert encoding.tokens[1:6] == ("a</w>", "<st>", "<st>_1", "<st>_2", "dog</w>")
    assert [prompt[start:end] for start, end in encoding.offsets[1:6]] == ["a", "<st>", "<st>", "<st>", "dog"]
    assert encoding.prompt == prompt
    assert [(word.text, word.token_indices) for word in encoding.words[1:4]] == [("a", (1,)), ("<st>", (2, 3, 4)),
                                                                                 ("dog", (5,))]  # fmt: skip
    table = fresh.pipe.text_encoder.get_input_embeddings().weight
    ids = fresh.pipe.tokenizer.convert_tokens_to_ids(["<st>", "<st>_1", "<st>_2"])
    assert torch.equal(table[ids], vectors)


def test_expansion_keeps_every_other_character_where_it_was():
    expanded, starts, ends = expand_multi_vector_tokens("<a> x <a>", {"<a>": 2})
    assert expanded == "<a> <a>_1 x <a> <a>_1"
    assert len(starts) == len(ends) == len(expanded)
    assert (starts[expanded.index("x")], ends[expanded.index("x")]) == (4, 5)
    assert (starts[5], ends[5]) == (0, 3)  # inside the added "<a>_1": the word the user wrote


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"clip_l": torch.zeros(768), "clip_g": torch.zeros(1280)}, "holds 2 tensors"),
        ({"emb_params": torch.zeros(2, 7)}, "has 7-wide vectors; this CLIP reads"),
        ({"emb_params": torch.zeros(2, 2, 2)}, "expected \\(n, width\\) vectors"),
    ],
)
def test_embeddings_that_do_not_fit_this_clip_are_refused_by_name(fresh, tmp_path, tensors, message):
    save_file(tensors, tmp_path / "odd.safetensors")
    with pytest.raises(AdapterFileError, match=message):
        load_embeddings(fresh, [EmbeddingSpec(tmp_path / "odd.safetensors")])
    assert fresh.embeddings == ()


def test_a_token_clip_already_knows_is_refused(fresh, tmp_path):
    path = a1111_file(tmp_path / "cat.safetensors", torch.zeros(1, width(fresh)))
    with pytest.raises(AdapterFileError, match="CLIP already knows the token 'cat'"):
        load_embeddings(fresh, [EmbeddingSpec(path, "cat")])


def test_pickle_embeddings_are_refused(fresh, tmp_path):
    torch.save({"string_to_param": {"*": torch.zeros(1, width(fresh))}}, tmp_path / "style.pt")
    with pytest.raises(AdapterFileError, match=r"only \.safetensors files are read"):
        load_models("tiny", device="cpu", additions=Additions(embeddings=(EmbeddingSpec(tmp_path / "style.pt"),)))


def test_embedding_arguments_take_an_optional_token_after_the_last_colon():
    assert parse_embedding_argument("e/style.safetensors") == EmbeddingSpec(Path("e/style.safetensors"))
    assert parse_embedding_argument("e/style.safetensors:<s>") == EmbeddingSpec(Path("e/style.safetensors"), "<s>")
    assert parse_embedding_argument("C:\\e\\style.safetensors") == EmbeddingSpec(Path("C:\\e\\style.safetensors"))
    with pytest.raises(argparse.ArgumentTypeError, match="one word"):
        parse_embedding_argument("style.safetensors:two words")
