"""`pocket diagnose`: loss ratios, padding shifts and attention shares on a toy-trained world."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ella_demo.cli import main
from ella_demo.loading.models import load_models
from ella_demo.pocket.captions import words_of
from ella_demo.pocket.diagnosis import attention_shares, loss_ratios, padding_shifts, single_object_variants
from ella_demo.pocket.vocabulary import COLOURS, SHAPES


@pytest.fixture(scope="module")
def toy(pocket_world):
    return load_models("pocket", sd15=str(pocket_world))


def differing_words(first: str, second: str) -> set[tuple[str, str]]:
    return {(a, b) for a, b in zip(words_of(first), words_of(second), strict=True) if a != b}


def test_the_variants_change_only_the_single_objects_shape_or_colour():
    variants = single_object_variants(12, seed=3)
    for index, prompt in enumerate(variants.prompts):
        entity = prompt.scene.entities
        assert len(entity) == 1 and entity[0].count == 1
        shape_changes = differing_words(variants.texts["true"][index], variants.texts["shape"][index])
        assert shape_changes and all(a in SHAPES and b in SHAPES for a, b in shape_changes)
        colour_changes = differing_words(variants.texts["true"][index], variants.texts["colour"][index])
        assert len(colour_changes) == 1 and all(a in COLOURS and b in COLOURS for a, b in colour_changes)


def test_an_unchanged_caption_scores_exactly_the_true_one_and_shares_are_parts_of_the_attention(toy):
    variants = single_object_variants(3, seed=0)
    same = replace(variants, texts={name: variants.texts["true"] for name in ("true", "shape", "colour")})
    ratios = loss_ratios(toy, same, timesteps=(500,))
    assert ratios[500]["shape"] == ratios[500]["colour"] == 1.0 and ratios[500]["empty"] != 1.0
    assert padding_shifts(toy, same)["shape"] == 0.0 and padding_shifts(toy, variants)["shape"] > 0.0
    shares = attention_shares(toy, variants, timesteps=(500, 900))
    assert all(0.0 < share < 1.0 for share in shares.values()) and sum(shares.values()) <= 1.0


def test_the_diagnose_command_prints_its_tables(pocket_world, capsys):
    assert main(["pocket", "diagnose", "--world", str(pocket_world), "--captions", "2"]) == 0
    out = capsys.readouterr().out
    assert "| 500 |" in out and "attention shares: shape" in out and "2 captions, seed 0" in out
    assert main(["pocket", "diagnose", "--captions", "0"]) == 2
    assert "--captions must be at least 1, got 0." in capsys.readouterr().err
