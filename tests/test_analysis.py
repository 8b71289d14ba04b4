"""Analysis on synthetic arrays: normalisations, grouping, rollout, maps and the pixel probe."""

from __future__ import annotations

import numpy as np
import pytest

from ella_demo.core.text_encoding import PromptTruncatedWarning, Word
from ella_demo.inspect import connector_attention, spatial_maps, word_matching

# Key axis of a toy connector: Q=3 latents, then T5 tokens ▁red ▁gi raffe </s> <pad> <pad>
Q = 3
WORDS = (
    Word("red", (0,)),
    Word("giraffe", (1, 2)),
    Word("</s>", (3,), is_special=True),
    Word("<pad>", (4,), is_special=True),
    Word("<pad>", (5,), is_special=True),
)
L = 6


def random_attention(steps=5, blocks=2, heads=2, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(steps, blocks, heads, Q, Q + L))
    weights = np.exp(logits)
    return weights / weights.sum(-1, keepdims=True)


def test_paper_normalisation_puts_each_word_column_max_at_one():
    time_map = connector_attention.token_time_map(random_attention(), np.arange(5), WORDS, "paper")
    assert time_map.columns.labels == ("red", "giraffe")
    assert np.allclose(time_map.values.max(axis=0), 1.0)


def test_share_rows_sum_to_one_and_change_rows_and_columns_sum_to_zero():
    attention = random_attention()
    share = connector_attention.token_time_map(attention, np.arange(5), WORDS, "share").values
    change = connector_attention.token_time_map(attention, np.arange(5), WORDS, "change").values
    assert np.allclose(share.sum(axis=1), 1.0)
    assert np.allclose(change.sum(axis=1), 0.0, atol=1e-6)
    assert np.allclose(change.mean(axis=0), 0.0, atol=1e-6)


def test_raw_shows_every_sink_and_rows_sum_to_one():
    time_map = connector_attention.token_time_map(random_attention(), np.arange(5), WORDS, "raw")
    assert time_map.columns.labels == ("latents (3)", "red", "giraffe", "</s>", "padding (2)")
    assert time_map.columns.kinds == ("latents", "word", "word", "end", "padding")
    assert np.allclose(time_map.values.sum(axis=1), 1.0, atol=1e-6)


def test_words_sum_their_pieces_for_shares():
    attention = random_attention()
    received = connector_attention.received_attention(attention)
    raw = connector_attention.token_time_map(attention, np.arange(5), WORDS, "raw").values
    assert np.allclose(raw[:, 2], received[:, Q + 1] + received[:, Q + 2])  # "giraffe" = gi + raffe
    pieces = connector_attention.token_time_map(attention, np.arange(5), WORDS, "raw", pieces=True,
                                     tokens=("▁red", "▁gi", "raffe", "</s>", "<pad>", "<pad>"))  # fmt: skip
    assert pieces.columns.labels[1:4] == ("▁red", "▁gi", "raffe")


def test_words_average_their_pieces_for_maps():
    maps = np.zeros((2, 1, 1, L))
    maps[..., 1], maps[..., 2] = 0.2, 0.4
    columns = word_matching.text_columns(WORDS, 0)
    word_maps = spatial_maps.clip_word_maps(maps, columns, np.arange(2))
    assert word_maps.shape == (2, 1, 1)
    assert word_maps[1, 0, 0] == pytest.approx(0.3)


def test_aggregation_selects_blocks_and_heads():
    attention = random_attention()
    assert np.allclose(connector_attention.Aggregation(1, 0).apply(attention), attention[:, 1, 0])
    assert np.allclose(connector_attention.Aggregation(block=0).apply(attention), attention[:, 0].mean(axis=1))
    assert connector_attention.Aggregation().label() == "mean over all blocks, all heads"
    with pytest.raises(ValueError, match="block must be from 0 to 1, got 2"):
        connector_attention.Aggregation(block=2).apply(attention)


def test_rollout_matches_a_hand_computed_two_block_case():
    # Q=2 latents, L=2 text tokens, one head per block.
    first = np.array([[0.5, 0.25, 0.25, 0.0], [0.0, 0.5, 0.25, 0.25]])
    second = np.array([[0.2, 0.2, 0.2, 0.4], [0.4, 0.4, 0.1, 0.1]])
    flow = connector_attention.rollout(np.stack([first, second])[:, None])
    # By hand: F1 = [[.125, 0], [.125, .125]]; F2 = mix2 @ F1 + A_qt2 / 2 = [[.1875, .2125], [.1625, .1375]]
    assert np.allclose(flow.text_fraction, [0.4, 0.3])
    assert np.allclose(flow.text, [[0.46875, 0.53125], [0.1625 / 0.3, 0.1375 / 0.3]])
    assert np.allclose(flow.text.sum(axis=1), 1.0)


def test_rollout_rows_sum_to_one_on_random_attention():
    flow = connector_attention.rollout(random_attention(steps=1, blocks=6, heads=4)[0])
    assert np.allclose(flow.text.sum(axis=1), 1.0)
    assert ((flow.text_fraction > 0) & (flow.text_fraction < 1)).all()


def test_query_word_matrix_groups_queries_by_favourite_word():
    step = np.zeros((1, 1, Q, Q + L))
    step[0, 0, :, Q + 0] = [0.9, 0.1, 0.6]  # red
    step[0, 0, :, Q + 1] = [0.1, 0.9, 0.4]  # giraffe (first piece)
    matrix, order, columns = connector_attention.query_word_matrix(step, WORDS)
    assert columns.labels == ("red", "giraffe")
    assert order.tolist() == [0, 2, 1]  # both "red" queries first, strongest first
    assert np.allclose(matrix[0], [0.9, 0.1])


def test_ella_word_maps_chain_unet_attention_with_the_connector_flow():
    steps, blocks, heads = 2, 2, 1
    tsc = random_attention(steps, blocks, heads)
    maps = np.zeros((steps, 1, 2, Q))
    maps[:, 0, 0] = [1.0, 0.0, 0.0]  # left pixel reads query 0 only
    maps[:, 0, 1] = [0.0, 0.0, 1.0]  # right pixel reads query 2 only
    columns = word_matching.text_columns(WORDS, 0)
    word_maps = spatial_maps.ella_word_maps(maps, tsc, columns, np.arange(steps))
    expected_left = np.mean([connector_attention.rollout(tsc[s]).text[0] for s in range(steps)], axis=0)
    assert word_maps.shape == (2, 1, 2)
    assert word_maps[0, 0, 0] == pytest.approx(expected_left[0], rel=1e-5)
    assert word_maps[1, 0, 0] == pytest.approx(expected_left[1:3].mean(), rel=1e-5)


def test_ella_plus_clip_maps_drop_the_clip_keys_and_renormalise():
    tsc = random_attention(1, 1, 1)
    maps = np.concatenate([np.full((1, 1, 1, 4), 0.1), np.array([[[[0.6, 0.0, 0.0]]]])], axis=-1)
    columns = word_matching.text_columns(WORDS, 0)
    with_clip = spatial_maps.ella_word_maps(maps, tsc, columns, np.arange(1), num_clip_keys=4)
    only_queries = spatial_maps.ella_word_maps(maps[..., 4:] / 0.6, tsc, columns, np.arange(1))
    assert np.allclose(with_clip, only_queries)


@pytest.mark.parametrize(("window", "expected"), [("all", [0, 1, 2, 3, 4, 5]), ("early", [0, 1]),
                                                  ("middle", [2, 3]), ("late", [4, 5]), (3, [3])])  # fmt: skip
def test_step_windows(window, expected):
    assert spatial_maps.window_steps(6, window).tolist() == expected


def test_bad_window_is_rejected():
    with pytest.raises(ValueError, match="step must be from 0 to 5, got 6"):
        spatial_maps.window_steps(6, 6)
    with pytest.raises(ValueError, match="window must be one of all, early, middle, late"):
        spatial_maps.window_steps(6, "noon")


def test_combine_resolutions_upsamples_to_the_largest():
    maps = {"4x4": np.ones((2, 4, 4, 3)), "2x2": np.full((2, 2, 2, 3), 3.0)}
    combined = spatial_maps.combine_resolutions(maps)
    assert combined.shape == (2, 4, 4, 3)
    assert np.allclose(combined, 2.0)
    assert np.allclose(spatial_maps.combine_resolutions(maps, ["2x2"]), 3.0)
    with pytest.raises(ValueError, match="unknown resolutions"):
        spatial_maps.combine_resolutions(maps, ["8x8"])


def test_difference_map_compares_spatial_distributions():
    ella = np.array([[3.0, 1.0], [0.0, 0.0]])
    clip = np.array([[10.0, 10.0], [10.0, 10.0]])
    difference = spatial_maps.difference_map(ella, clip)
    assert difference.sum() == pytest.approx(0.0)
    assert difference[0, 0] == pytest.approx(0.75 - 0.25)
    assert spatial_maps.shared_scale(ella, clip) == (0.0, 10.0)


def test_pixel_probe_finds_the_word_drawn_at_that_spot():
    word_maps = np.zeros((3, 4, 4))
    word_maps[0, :2, :2] = 1.0  # "red" top-left
    word_maps[1, 2:, 2:] = 1.0  # "cat" bottom-right
    word_maps[2] = 0.1
    row, col = spatial_maps.map_position(x=500, y=480, image_size=(512, 512), map_size=(4, 4))
    assert (row, col) == (3, 3)
    ranked = spatial_maps.rank_at(word_maps, ("red", "cat", "sky"), row, col)
    assert [word for word, _ in ranked] == ["cat", "sky", "red"]
    queries = np.zeros((4, 4, 5))
    queries[3, 3] = [0.1, 0.5, 0.0, 0.3, 0.1]
    assert [index for index, _ in spatial_maps.top_queries_at(queries, 3, 3, count=2)] == [1, 3]
    with pytest.raises(ValueError, match="outside the 512x512 image"):
        spatial_maps.map_position(512, 0, (512, 512), (4, 4))


def test_highlight_scales_the_top_word_to_one():
    pairs = connector_attention.highlight(
        np.array([0.2, 0.5, 0.3]), word_matching.text_columns((*WORDS[:2], Word("x", (5,))), 0)
    )
    assert pairs == [("red", 0.4), ("giraffe", 1.0), ("x", 0.6)]


def test_text_share_per_block():
    attention = np.zeros((1, 2, 1, Q, Q + L))
    attention[0, 0, 0, :, 0] = 1.0  # block 0 looks only at a latent
    attention[0, 1, 0, :, Q] = 1.0  # block 1 looks only at text
    assert connector_attention.text_share_per_block(attention).tolist() == [[0.0, 1.0]]


def test_spatial_word_maps_and_pixel_probe_on_a_traced_run(tiny):
    from ella_demo import generate

    result = generate(tiny, "a red cat on a blue chair", num_inference_steps=6, height=64, width=64, trace=True)
    maps = spatial_maps.spatial_word_maps(result.trace, "late")
    assert {"red", "blue", "chair"} <= set(maps.labels)
    assert maps.clip.shape == maps.ella.shape == (len(maps.labels), 4, 4)
    assert maps.window == "late steps"
    clip_side = result.trace.sides["clip"]
    columns = word_matching.text_columns(result.trace.clip_words, 0)
    combined = spatial_maps.combine_resolutions(clip_side.cross_attention)
    expected = spatial_maps.clip_word_maps(combined, columns, np.array([4, 5]))[columns.labels.index("red")]
    assert np.allclose(maps.clip[maps.labels.index("red")], expected)
    probe = spatial_maps.pixel_probe(maps, x=10, y=60, image_size=(64, 64), count=3)
    for side in ("clip", "ella"):
        values = [value for _, value in probe[side]]
        assert len(values) == 3 and values == sorted(values, reverse=True)
    assert len(probe["ella_queries"]) == 3


def test_spatial_word_maps_need_both_traced_sides(tiny):
    from ella_demo import generate

    one_side = generate(tiny, "a red cat", num_inference_steps=2, height=32, width=32, trace=True, sides="ella")
    with pytest.raises(ValueError, match="need a traced run of both sides"):
        spatial_maps.spatial_word_maps(one_side.trace)


def test_repeated_words_get_distinct_labels():
    columns = word_matching.text_columns((Word("a", (0,)), Word("cat", (1,)), Word("a", (2,))), 0)
    assert columns.distinct_labels() == ("a (1)", "cat", "a (3)")


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("a red cat, on a blue chair.", ["a", "red", "cat", "on", "a", "blue", "chair"]),
        ("a well-lit room; rock'n'roll, don't!", ["a", "well-lit", "room", "rock'n'roll", "don't"]),
        ("3 cats, 12.5% off, 1,000 birds, 3D", ["3", "cats", "12.5", "off", "1,000", "birds", "3D"]),
        ("$x$ _y_ ^z {w} \\v -dash- 'quoted'", ["x", "y", "z", "w", "v", "dash", "quoted"]),
        ("", []),
        (" ,.!? ", []),
    ],
)
def test_prompt_words_come_from_the_text(prompt, words):
    found = word_matching.prompt_words(prompt)
    assert [word.text for word in found] == words
    assert all(prompt[word.start : word.end] == word.text for word in found)


def test_tokens_are_matched_to_words_by_character_span():
    words = word_matching.prompt_words("a cat, well-lit")  # spans: a 0-1, cat 2-5, well-lit 7-15
    # CLIP-like: start token, a, c+at, ",", well, -, lit, end, padding
    offsets = ((0, 0), (0, 1), (2, 3), (3, 5), (5, 6), (7, 11), (11, 12), (12, 15), (0, 0), (0, 0))
    assert word_matching.tokens_of_words(words, offsets) == ((1,), (2, 3), (5, 6, 7))
    assert word_matching.tokens_of_words(words, offsets[:3]) == ((1,), (2,), ())  # truncated: "well-lit" is lost


def trace_of(tiny, prompt: str, steps: int = 2):
    from ella_demo import generate

    return generate(tiny, prompt, trace=True, num_inference_steps=steps, height=32, width=32).trace


def test_every_content_word_of_a_punctuated_prompt_gets_maps(tiny):
    maps = spatial_maps.spatial_word_maps(trace_of(tiny, "a red cat, on a blue chair."))
    assert maps.labels == ("a (1)", "red", "cat", "on", "a (5)", "blue", "chair")
    assert maps.t5_only == maps.clip_only == ()


def test_repeated_words_each_get_their_own_map(tiny):
    trace = trace_of(tiny, "a cat on a mat")
    maps = spatial_maps.spatial_word_maps(trace)
    first, second = maps.labels.index("a (1)"), maps.labels.index("a (4)")
    assert not np.allclose(maps.clip[first], maps.clip[second])
    assert not np.allclose(maps.ella[first], maps.ella[second])
    # Each "a" is its own CLIP token, and each map is that token's attention.
    tokens = [index for index, token in enumerate(trace.clip_tokens) if token == "a</w>"]
    combined = spatial_maps.combine_resolutions(trace.sides["clip"].cross_attention)
    assert np.allclose(maps.clip[first], combined[..., tokens[0]].mean(axis=0))
    assert np.allclose(maps.clip[second], combined[..., tokens[1]].mean(axis=0))


def test_hyphenated_numeric_and_capitalised_words_are_matched(tiny):
    maps = spatial_maps.spatial_word_maps(trace_of(tiny, "A well-lit room with 3 cats and 12.5 birds"))
    assert maps.labels == ("A", "well-lit", "room", "with", "3", "cats", "and", "12.5", "birds")
    assert maps.t5_only == ()


def test_words_cut_off_by_clips_77_tokens_are_t5_only(tiny):
    prompt = " ".join(["red cat"] * 40) + " under a tall green lamp"
    with pytest.warns(PromptTruncatedWarning, match="CLIP"):
        trace = trace_of(tiny, prompt)
    maps = spatial_maps.spatial_word_maps(trace)
    assert len(maps.labels) == 85
    assert {"under", "a", "tall", "green", "lamp"} <= set(maps.t5_only)
    assert maps.clip_only == ()
    lamp = maps.labels.index("lamp")
    assert maps.presence(lamp) == "T5 only" and maps.presence(0) == "both"
    assert maps.choices()[lamp] == "lamp (T5 only)" and maps.choices()[0] == maps.labels[0]
    probe = spatial_maps.pixel_probe(maps, x=1, y=1, image_size=(32, 32), count=100)
    assert "lamp (T5 only)" in [word for word, _ in probe["ella"]]
    assert "lamp" not in [word for word, _ in probe["clip"]]
    assert len(probe["clip"]) == len(maps.labels) - len(maps.t5_only) < len(probe["ella"]) == 85


@pytest.mark.parametrize("module", [connector_attention, spatial_maps, word_matching])
def test_analysis_imports_no_torch(module):
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(module))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "torch" for name in imported), imported


@pytest.mark.parametrize(("source", "target"), [((3, 5), (7, 9)), ((2, 2), (4, 4)), ((1, 1), (3, 2)), ((4, 6), (5, 6))])
def test_bilinear_upsampling_matches_torch(source, target):
    import torch
    from torch.nn import functional

    maps = np.random.default_rng(0).random((2, *source, 3)).astype(np.float32)
    expected = functional.interpolate(
        torch.from_numpy(maps).permute(0, 3, 1, 2), size=target, mode="bilinear", align_corners=False
    )
    resized = spatial_maps.resize_bilinear(maps, target)
    assert resized.dtype == np.float32
    assert np.allclose(resized, expected.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    combined = spatial_maps.combine_resolutions({"big": np.zeros((2, *target, 3)), "small": maps})
    assert np.allclose(combined, resized / 2, atol=1e-6)
